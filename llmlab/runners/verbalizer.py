"""Verbalizer prompt learning on MRE data (`method=verbalizer`, MRE spec 4.2).

Two verbalizers score the same prompts: the baseline (the label name only) and the knowledgeable verbalizer (KV)
built from word-level information of the training split: per TL class, the lowercased WL spans and/or WL label
words of its examples, ranked by `count_c(w) * log(C * count_c(w) / count(w))` (`rank=pmi`, the default: words
over-represented in class c), `count_c(w) * log(C / classes containing w)` (`rank=tfidf`, the spec's formula; a
word seen at least once in every class scores 0, which on binary sets with imperfect coupling removes every word)
or raw frequency (`rank=freq`, paper-faithful), top `top_k` with at least `min_count` occurrences in c, plus the
label name (`label_name=false`: WL words only). Prompt: `{text}\\nThe sentiment of this review is` (sentiment)
or `{text}\\nQuestion: What is this text about? Answer:` (topic), after `k`
demonstrations per class (one seeded set per run). Word score = log p(first token of " w" | prompt) (`score=full`:
of the whole word), class score = log-mean-exp over its words, prediction = argmax.
Candidate log-likelihoods come from llmlab's batched `Scorer` (KV-cache reuse of the shared demonstration prefix).
"""

from __future__ import annotations

import math
import time
from collections import Counter

from omegaconf import DictConfig

from llmlab.analysis.mre_metrics import accuracy, macro_f1
from llmlab.config import VerbalizerConfig
from llmlab.data.mre.format import wl_label, wl_spans
from llmlab.data.mre.loader import MreData, load_mre
from llmlab.errors import LlmlabError
from llmlab.io import write_json, write_jsonl
from llmlab.models.loading import load_model
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult
from llmlab.scoring import Request, Scorer
from llmlab.seeding import make_rng

TEMPLATES = {
    "sentiment": "{text}\nThe sentiment of this review is",
    "topic": "{text}\nQuestion: What is this text about? Answer:",
}


def class_words(rows: list[dict], labels: list[str], words: str) -> dict[str, Counter]:
    """Per TL class, counts of the lowercased WL spans / WL label words of its examples."""
    counts = {c: Counter() for c in labels}
    for r in rows:
        if r["tl"] not in counts:
            continue
        for item in r["wl"]:
            found = []
            if words in ("spans", "both"):
                found += wl_spans(tuple(item))
            if words in ("labels", "both"):
                found.append(wl_label(tuple(item)).replace("_", " "))
            counts[r["tl"]].update(w.lower().strip() for w in found if w.strip())
    return counts


def build_verbalizer(
    rows: list[dict],
    labels: list[str],
    top_k: int,
    rank: str = "pmi",
    words: str = "both",
    min_count: int = 2,
    label_name: bool = True,
) -> dict[str, list[str]]:
    """The knowledgeable verbalizer: per class its label name (unless `label_name` is false), then up to `top_k`
    ranked WL words; a class without any WL word keeps its label name."""
    counts = class_words(rows, labels, words)
    df = Counter(w for c in labels for w in counts[c])
    total = Counter()
    for c in labels:
        total.update(counts[c])
    out = {}
    for c in labels:
        scored = []
        for w, n in counts[c].items():
            if rank == "pmi":
                s = n * math.log(len(labels) * n / total[w])
            else:
                s = n * math.log(len(labels) / df[w]) if rank == "tfidf" else float(n)
            if n >= min_count and s > 0 and w != c.lower():
                scored.append((-s, w))
        ranked = [w for _, w in sorted(scored)[:top_k]]
        out[c] = [c] + ranked if label_name or not ranked else ranked
    return out


def dedup_first_tokens(verb: dict[str, list[str]], first_token) -> dict[str, list[str]]:
    """Keep the label name and the words whose first token no other class's word starts with (at least one)."""
    owner: dict[int, set] = {}
    for c, ws in verb.items():
        for w in ws:
            owner.setdefault(first_token(w), set()).add(c)
    return {c: [w for w in ws if w == c or owner[first_token(w)] == {c}] or ws[:1] for c, ws in verb.items()}


def log_mean_exp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs) / len(xs))


def draw_demos(data: MreData, seed: int, shots: int) -> str:
    if shots == 0:
        return ""
    demos = data.demos(make_rng(seed, "mre-verbalizer-demos", shots), shots)
    return "".join(TEMPLATES[data.kind].format(text=d["text"]) + f" {d['tl']}\n\n" for d in demos)


class WordScorer:
    """Label-word log-probs for many prompts: each distinct word is one candidate; with `first_token` a word whose
    first token decodes to a string that re-encodes to that token alone is replaced by that string, so the scorer
    needs no second forward for it."""

    def __init__(self, scorer: Scorer, template_end: str, words: list[str], mode: str):
        self.scorer, self.mode, self.words = scorer, mode, words
        self.cand = {}
        for w in words:
            ids = scorer.encode(Request(template_end, [" " + w]))[1][0]
            self.cand[w] = " " + w
            if mode == "first_token":
                piece = scorer.tok.decode([ids[0]])
                if piece and scorer.encode(Request(template_end, [piece]))[1][0] == [ids[0]]:
                    self.cand[w] = piece
        self.cands = sorted(set(self.cand.values()))

    def first_token(self, w: str) -> int:
        return self.scorer.encode(Request("x", [" " + w]))[1][0][0]

    def score(self, prompts: list[str]) -> list[dict[str, float]]:
        scored = self.scorer.score([Request(p, self.cands) for p in prompts])
        out = []
        for s in scored:
            by_cand = dict(zip(self.cands, s.first_logprob if self.mode == "first_token" else s.loglik))
            out.append({w: by_cand[self.cand[w]] for w in self.words})
        return out


@register_runner("verbalizer", schema=VerbalizerConfig)
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m = cfg.method
    if any(k < 0 for k in m.shots) or not m.shots:
        raise LlmlabError(f"method.shots must be a non-empty list of counts >= 0, got {list(m.shots)}")
    data = load_mre(cfg.dataset, cfg.seed)
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, cfg.hardware.attn_implementation, cfg.seed)
    kv = build_verbalizer(data.train, data.labels, m.top_k, m.rank, m.words, m.min_count, m.label_name)
    base = {c: [c] for c in data.labels}
    template = TEMPLATES[data.kind]
    all_words = sorted({w for ws in kv.values() for w in ws} | set(data.labels))
    scorer = WordScorer(Scorer(model, tok, batch_size=m.batch_size), template.format(text="x"), all_words, m.score)
    if m.dedup_first_token:
        kv = dedup_first_tokens(kv, scorer.first_token)
    tests = data.test[: m.limit]
    gold = [r["tl"] for r in tests]
    t0 = time.perf_counter()
    table, preds = [], []
    for shots in m.shots:
        prefix = draw_demos(data, cfg.seed, shots)
        word_scores = scorer.score([prefix + template.format(text=r["text"]) for r in tests])
        row = {"shots": shots}
        for arm, verb in (("baseline", base), ("kv", kv)):
            pred = [max(data.labels, key=lambda c: log_mean_exp([ws[w] for w in verb[c]])) for ws in word_scores]
            row[arm] = {"macro_f1": macro_f1(gold, pred, data.labels), "accuracy": accuracy(gold, pred)}
            preds += [
                {"id": r["id"], "shots": shots, "arm": arm, "gold": g, "pred": p} for r, g, p in zip(tests, gold, pred)
            ]
        row["delta_macro_f1"] = row["kv"]["macro_f1"] - row["baseline"]["macro_f1"]
        table.append(row)
    results = {
        "runner": "verbalizer",
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "n_test": len(tests),
        "labels": data.labels,
        "score": m.score,
        "rank": m.rank,
        "words": m.words,
        "verbalizer_sizes": {c: len(ws) for c, ws in kv.items()},
        "verbalizer_top10": {c: ws[:10] for c, ws in kv.items()},
        "table": table,
        "skipped_lines": data.skipped,
        "manifest": data.manifest,
        "timing": {"scoring_s": time.perf_counter() - t0, "forward_tokens": scorer.scorer.stats["forward_tokens"]},
    }
    write_json(ctx.run_dir.file("results.json"), results)
    write_jsonl(ctx.run_dir.file("predictions.jsonl"), preds)
    flat = {f"{arm}/k{r['shots']}/macro_f1": r[arm]["macro_f1"] for r in table for arm in ("baseline", "kv")}
    ctx.log_final(flat)
    return results
