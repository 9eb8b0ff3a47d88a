"""Shared pieces of the implicit-pattern generators: ``sum_expr``, task specs and the row schema."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from datasets import Features, List, Value

SPLITS = ("train_ft", "icl_pool", "test_pattern", "test_counter")
ANSWER_KINDS = ("int", "number", "bool")
ROW_FIELDS = (
    "id",
    "task",
    "split",
    "variant",
    "question",
    "answer",
    "target",
    "candidates",
    "label",
    "demo",
    "ft_text",
    "answer_kind",
    "meta",
)
FEATURES = Features(
    {
        f: List(Value("string")) if f == "candidates" else Value("int64") if f == "label" else Value("string")
        for f in ROW_FIELDS
    }
)


@dataclass(frozen=True)
class TaskSpec:
    """What a prompt builder needs to know about a task: header, generation budget and answer type."""

    name: str
    header: str
    max_new_tokens: int
    answer_kind: str


@dataclass(frozen=True)
class Ctx:
    """Per-item generation context; ``want`` is the requested label for tasks that control it (balanced plan)."""

    variant: str
    split: str
    faithful: bool
    want: bool
    options: dict = field(default_factory=dict)

    @property
    def counter(self) -> bool:
        return self.variant == "counter"


def header(text: str, faithful: bool) -> str:
    """Released headers end with ``" \\n"``; the clean mode drops the trailing space."""
    return text if faithful else text.rstrip(" \n") + "\n"


def sum_expr(
    rng: random.Random, n_min: int, n_max: int, r: int, target: int | None = None, allow_neg: bool = True
) -> tuple[str, int]:
    """Signed integer terms summing to ``target`` (spec 1.0): ``(string, target)``."""
    low = -r if allow_neg else 0
    n = rng.randint(n_min, n_max)
    if target is None:
        target = rng.randint(low, r)
    if n == 1:
        return str(target), target
    terms = [rng.randint(low, r) for _ in range(n - 1)]
    terms.append(target - sum(terms))
    text = "".join(("-" if t < 0 else "+" if i else "") + str(abs(t)) for i, t in enumerate(terms))
    return text, target


def fmt_num(x: float) -> str:
    """The number as Python's ``print`` writes it (``5``, ``2.5``, ``5.0``)."""
    return str(x)


def binary(truth: bool, labels: tuple[str, str], space: str) -> tuple[str, str, list[str]]:
    """``(answer, target, candidates)`` for a two-label task; candidates are ``[no, yes]`` so label == int(truth)."""
    answer = labels[1] if truth else labels[0]
    return answer, space + answer, [space + lab for lab in labels]


def shuffled(rng: random.Random, *cands: str) -> list[str]:
    """Candidates in random order (the gold must not always sit at index 0: ties would favour it)."""
    out = list(cands)
    rng.shuffle(out)
    return out


def item(question: str, answer: str, target: str, candidates: list[str], demo: str, ft_text: str, meta: dict) -> dict:
    """One generated item (the row minus bookkeeping fields)."""
    assert target in candidates and len(set(candidates)) == len(candidates), (target, candidates)
    return {
        "question": question,
        "answer": answer,
        "target": target,
        "candidates": candidates,
        "label": candidates.index(target),
        "demo": demo,
        "ft_text": ft_text,
        "meta": meta,
    }
