"""Seeded synthetic MRE data (spec 7.3, our design): English texts with a text-level (TL) label and word-level (WL)
items in the OIELLM grammar, mirroring the six subsets' label structure, fully offline.

Knobs: `coupling` = P(the label the WL items imply equals TL); when they disagree and `override_cue` is on, an
un-annotated cue sentence (a star rating, a topic keyword) carries TL so it stays learnable. `decoupled_control`
draws the WL items independently of TL (TL then comes from the cue alone): the control where WL carries no TL
information. `label_noise` flips TL afterwards. Every example has its own RNG seeded from sha256(name|split|i|seed),
so the data do not depend on generation order or PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict

from llmlab.config import MreOptions, MreSynthOptions
from llmlab.data.mre.format import MreRecord

SENTIMENTS = ("positive", "negative")
TOPICS = ("Sports", "Politics", "Nature", "Technology", "Literature")
# subset -> (task word, TL labels, which clause kinds are annotated (SCPOS) or the entity mode)
SUBSETS = {
    "scnm": ("NER", TOPICS, "ner"),
    "scpos_rw": ("Sentiment Relation Word", SENTIMENTS, ("adj", "noun", "verb")),
    "scpos_adjn": ("Sentiment Adj and N", SENTIMENTS, ("adj", "noun")),
    "scpos_adj": ("Sentiment Adj", SENTIMENTS, ("adj",)),
    "scpos_n": ("Sentiment N", SENTIMENTS, ("noun",)),
    "tcree": ("Relation Extraction", TOPICS, "relation"),
}
# the generator's knobs and their defaults: the schema's (`dataset.options`) but the ones every MRE source has
DEFAULTS = {k: v for k, v in asdict(MreSynthOptions()).items() if k not in asdict(MreOptions())}

# --- sentiment lexicon -------------------------------------------------------------------------------------------
ASPECTS = (
    "battery",
    "screen",
    "delivery",
    "staff",
    "soup",
    "price",
    "design",
    "sound",
    "packaging",
    "manual",
    "wait",
    "build",
    "portion",
    "phone",
)
ADJ = {
    "positive": ("good", "great", "excellent", "lovely", "sturdy", "fast", "pleasant", "superb"),
    "negative": ("bad", "poor", "terrible", "flimsy", "slow", "awful", "disappointing", "noisy"),
}
# Context-dependent words: the same adjective is positive for one aspect and negative for another.
ASPECT_ADJ = {
    "battery": {"positive": ("long",), "negative": ("short",)},
    "wait": {"positive": ("short",), "negative": ("long",)},
    "price": {"positive": ("cheap", "fair"), "negative": ("steep",)},
    "build": {"positive": ("solid",), "negative": ("cheap",)},
    "phone": {"positive": ("small",), "negative": ("heavy",)},
    "portion": {"positive": ("generous",), "negative": ("small",)},
}
NOUN = {
    "positive": ("masterpiece", "bargain", "gem", "delight", "treasure"),
    "negative": ("defect", "disaster", "ripoff", "nightmare", "letdown"),
}
VERB = {"positive": ("love", "recommend", "enjoyed", "adore"), "negative": ("hated", "regret", "returned", "dislike")}
STARS = {"positive": ("four", "five"), "negative": ("one", "two")}

# --- topic lexicon -----------------------------------------------------------------------------------------------
SYLLABLES = (
    "ka",
    "vel",
    "mor",
    "tan",
    "sik",
    "lo",
    "ran",
    "bri",
    "do",
    "zen",
    "qua",
    "fir",
    "nel",
    "os",
    "pim",
    "tu",
    "var",
    "gel",
    "sho",
    "ret",
)
TYPE_WEIGHTS = {
    "Sports": {"Person": 3, "Organization": 2, "Event": 2, "Facility": 2},
    "Politics": {"Person": 3, "Political Organization": 3, "Event": 1, "Location": 1},
    "Nature": {"Location": 4, "Facility": 1, "Organization": 1},
    "Technology": {"Product Name": 3, "Organization": 3, "Person": 1},
    "Literature": {"Person": 3, "Product Name": 2, "Event": 1},
}
TYPE_SUFFIX = {
    "Organization": ("Group", "Company"),
    "Political Organization": ("Party", "League"),
    "Facility": ("Hall", "Center"),
    "Product Name": ("One", "Pro"),
    "Event": ("Festival", "Forum"),
}
TYPE_FRAME = {
    "Person": "{e} spoke to reporters",
    "Organization": "{e} issued a statement",
    "Political Organization": "{e} issued a statement",
    "Location": "visitors arrived in {e}",
    "Facility": "{e} reopened",
    "Product Name": "{e} was presented",
    "Event": "{e} took place",
}
TOPIC_CUE = {
    "Sports": "match",
    "Politics": "election",
    "Nature": "forest",
    "Technology": "software",
    "Literature": "novel",
}
RELATIONS = {
    "Sports": ("plays_for", "Person", "Organization", "plays for"),
    "Politics": ("member_of", "Person", "Political Organization", "joined"),
    "Nature": ("located_in", "Facility", "Location", "lies in"),
    "Technology": ("founded", "Person", "Organization", "founded"),
    "Literature": ("wrote", "Person", "Product Name", "wrote"),
}


def example_rng(name: str, split: str, i: int, seed: int) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{name}|{split}|{i}|{seed}".encode()).hexdigest()[:16], 16))


def generate(name: str, split: str, n: int, seed: int, **options) -> list[dict]:
    """`n` rows (`MreRecord.as_row()`) of synthetic subset `name`; TL labels balanced by index."""
    if name not in SUBSETS:
        raise ValueError(f"unknown synthetic MRE subset {name!r}; choose {', '.join(SUBSETS)}")
    opts = {**DEFAULTS, **options}
    task, labels, mode = SUBSETS[name]
    rows = []
    for i in range(n):
        rng = example_rng(name, split, i, seed)
        tl = labels[i % len(labels)]
        if opts["decoupled_control"]:
            implied, cue = rng.choice(labels), True
        elif rng.random() < opts["coupling"]:
            implied, cue = tl, False
        else:
            implied, cue = rng.choice([x for x in labels if x != tl]), bool(opts["override_cue"])
        if mode == "ner":
            text, wl = _scnm(rng, implied, tl, cue)
        elif mode == "relation":
            text, wl = _tcree(rng, implied, tl, cue)
        else:
            text, wl = _scpos(rng, implied, tl, cue, mode)
        if opts["label_noise"] and rng.random() < opts["label_noise"]:
            tl = rng.choice([x for x in labels if x != tl])
        rows.append(MreRecord(text, task, tl, wl, f"{name}-{split}-{i}").as_row())
    return rows


def _scpos(rng: random.Random, implied: str, tl: str, cue: bool, annotated: tuple[str, ...]):
    other = {"positive": "negative", "negative": "positive"}
    n = rng.randint(2, 3)
    pols = [implied if rng.random() < 0.75 else other[implied] for _ in range(n)]
    while sum(p == implied for p in pols) * 2 <= n:  # the majority of clauses must carry the implied label
        pols[pols.index(other[implied])] = implied
    clauses, wl = [], []
    for pol in pols:
        kind = rng.choice(("adj", "adj", "noun", "verb"))
        aspect = rng.choice(ASPECTS)
        if kind == "adj":
            negated = rng.random() < 0.2  # "not good": the WL label of "good" is negative in context
            word_pol = other[pol] if negated else pol
            pool = ASPECT_ADJ[aspect][word_pol] if aspect in ASPECT_ADJ and rng.random() < 0.5 else ADJ[word_pol]
            word = rng.choice(pool)
            clauses.append(f"The {aspect} was {'not ' if negated else ''}{word}.")
        elif kind == "noun":
            word = rng.choice(NOUN[pol])
            clauses.append(f"The {aspect} is a real {word}.")
        else:
            word = rng.choice(VERB[pol])
            clauses.append(f"I {word} the {aspect}.")
        if kind in annotated:
            wl.append((pol, word))
    if cue:
        clauses.insert(rng.randint(0, len(clauses)), f"Overall I give it {rng.choice(STARS[tl])} stars.")
    return " ".join(clauses), wl


def _pseudo(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _entity(rng: random.Random, etype: str) -> str:
    if etype == "Person":
        return f"{_pseudo(rng)} {_pseudo(rng)}"
    if etype == "Location":
        return _pseudo(rng)
    return f"{_pseudo(rng)} {rng.choice(TYPE_SUFFIX[etype])}"


def _scnm(rng: random.Random, implied: str, tl: str, cue: bool):
    """Entities whose types follow the implied topic, in topic-neutral frames (10% without entities)."""
    n = 0 if rng.random() < 0.1 else rng.randint(1, 3)
    weights = TYPE_WEIGHTS[implied]
    clauses, wl = [], []
    for _ in range(n):
        etype = rng.choices(list(weights), weights=list(weights.values()))[0]
        ent = _entity(rng, etype)
        frame = TYPE_FRAME[etype].format(e=ent)
        clauses.append(frame[0].upper() + frame[1:] + ".")
        wl.append((etype, ent))
    if cue or not wl:  # without entities the topic must come from the text
        clauses.insert(rng.randint(0, len(clauses)), f"The report was about the {TOPIC_CUE[tl]}.")
    return " ".join(clauses), wl


def _tcree(rng: random.Random, implied: str, tl: str, cue: bool):
    topics = [implied] + ([rng.choice(TOPICS)] if rng.random() < 0.5 else [])
    clauses, wl = [], []
    for topic in topics:
        rel, head_t, tail_t, phrase = RELATIONS[topic]
        head, tail = _entity(rng, head_t), _entity(rng, tail_t)
        clauses.append(f"{head} {phrase} {tail}.")
        wl.append((head, rel, tail))
    if cue:
        clauses.insert(rng.randint(0, len(clauses)), f"The report was about the {TOPIC_CUE[tl]}.")
    return " ".join(clauses), wl


def split_sha256(rows: list[dict]) -> str:
    """Hash of a split's JSONL (sorted keys): the manifest entry a test pins."""
    return hashlib.sha256("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()).hexdigest()
