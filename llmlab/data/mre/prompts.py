"""Prompt pieces shared by the MRE runners: how a record's text, word-level items and label are written."""

from __future__ import annotations

from llmlab.data.mre.loader import MreData
from llmlab.errors import LlmlabError

KEYS = {"sentiment": ("Review", "Sentiment"), "topic": ("Text", "Topic")}


def words_line(wl: list) -> str:
    """WL items as prompt text: `span=label; ...` (triples: `head relation tail`); `none` when empty."""
    parts = [f"{w[0]} {w[1]} {w[2]}" if len(w) == 3 else f"{w[1]}={w[0]}" for w in wl]
    return "; ".join(parts) or "none"


def label_first_tokens(tok, context: str, labels: list[str]) -> tuple[list[int], list[int]]:
    """The token prefix every label continuation shares after `context` (the space, for a byte-level tokenizer)
    and each label's first distinguishing token (what the label-restricted loss scores)."""
    ctx = tok(context, add_special_tokens=True).input_ids
    conts = []
    for label in labels:
        whole = tok(context + " " + label, add_special_tokens=True).input_ids
        conts.append(
            whole[len(ctx) :] if whole[: len(ctx)] == ctx else tok(" " + label, add_special_tokens=False).input_ids
        )
    n = 0
    while all(len(c) > n for c in conts) and len({c[n] for c in conts}) == 1:
        n += 1
    firsts = [c[n] if len(c) > n else None for c in conts]
    if None in firsts or len(set(firsts)) != len(firsts):
        raise LlmlabError(f"labels {labels} have no distinct first tokens after their shared prefix")
    return conts[0][:n], firsts  # type: ignore[return-value]


def key_words(data: MreData) -> tuple[str, str]:
    """(text key, label key) of the prompt: Review/Sentiment or Text/Topic."""
    return KEYS[data.kind]
