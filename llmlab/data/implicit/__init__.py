"""Seeded, deterministic generators for the implicit-pattern tasks of Yin et al. (EMNLP Findings 2024).

Spec: ``shared/specs/icl_vs_ft.md`` sections 1 and 2.3. Every row has the fields in ``ROW_FIELDS``; a k-shot prompt is
``spec.header + "".join(demo rows) + query["question"]`` and the gold continuation is ``query["target"]``.
``faithful=True`` reproduces the released formats and quirks; ``faithful=False`` (default) is one clean format.
Randomness: one ``random.Random(stable_seed(seed, task, split, variant))`` per split; no global RNG.
"""

from __future__ import annotations

import json

from datasets import Dataset

from ...errors import LlmlabError
from . import algebra, boolean, code_reading, expression, parity, relation
from .common import FEATURES, ROW_FIELDS, SPLITS, Ctx, TaskSpec, make_rng, stable_seed

__all__ = ["ROW_FIELDS", "SPLITS", "TASKS", "TaskSpec", "build_split", "load_implicit", "stable_seed", "task_spec"]

_MODULES = {"expression": expression, "code": code_reading, "bool": boolean, "relation": relation,
            "algebra": algebra, "parity": parity}
TASKS: tuple[str, ...] = tuple(_MODULES)


def _module(task: str):
    if task not in _MODULES:
        raise LlmlabError(f"unknown implicit task {task!r}; known tasks: {', '.join(TASKS)}")
    return _MODULES[task]


def task_spec(task: str, faithful: bool = False) -> TaskSpec:
    """Header, ``max_new_tokens`` and answer kind of ``task`` in the given mode."""
    return _module(task).spec(faithful)


def _options(task: str, faithful: bool, options: dict) -> dict:
    mod = _module(task)
    allowed: dict = getattr(mod, "OPTIONS", {})
    out = mod.defaults(faithful) if hasattr(mod, "defaults") else {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in allowed:
            valid = ", ".join(allowed) or "none"
            raise LlmlabError(f"unknown option {key!r} for implicit task {task!r}; valid options: {valid}")
        if value not in allowed[key]:
            raise LlmlabError(f"bad {key}={value!r} for task {task!r}; choose one of: {', '.join(allowed[key])}")
        out[key] = value
    return out


def _rows(task: str, split: str, n: int, seed: int, faithful: bool, opts: dict, seen: set[str]) -> list[dict]:
    """``n`` rows with questions not in ``seen`` (which is updated); labels follow a balanced pair-wise plan."""
    if split not in SPLITS:
        raise LlmlabError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    if not isinstance(n, int) or n < 0:
        raise LlmlabError(f"number of rows must be a non-negative integer, got {n!r}")
    mod, spec = _module(task), task_spec(task, faithful)
    variant = "counter" if split == "test_counter" else "pattern"
    rng = make_rng(seed, task, split, variant)
    rows: list[dict] = []
    rejected, planned, first = 0, -1, False
    while len(rows) < n:
        i = len(rows)
        if planned != i:  # labels come in pairs (one True, one False) in random order
            planned = i
            first = rng.random() < 0.5 if i % 2 == 0 else first
        it = mod.generate(rng, Ctx(variant, split, faithful, first if i % 2 == 0 else not first, opts))
        if it["question"] in seen:
            rejected += 1
            if rejected > 100 + 20 * n:
                raise LlmlabError(f"could not draw {n} distinct {task}/{split} questions (question space too small)")
            continue
        seen.add(it["question"])
        rows.append({"id": f"{task}/{split}/{i:05d}", "task": task, "split": split, "variant": variant, **it,
                     "answer_kind": spec.answer_kind, "meta": json.dumps(it["meta"], sort_keys=True)})
    return rows


def _dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({f: [r[f] for r in rows] for f in ROW_FIELDS}, features=FEATURES)


def build_split(task: str, split: str, n: int, seed: int, faithful: bool = False, **options) -> Dataset:
    """``n`` rows of one split (questions unique within the split); same arguments give the same rows."""
    opts = _options(task, faithful, options)
    return _dataset(_rows(task, split, n, seed, faithful, opts, set()))


def load_implicit(task: str, seed: int, faithful: bool = False, n_test: int = 200, n_train_ft: int = 1000,
                  n_icl_pool: int = 1000, **options) -> dict[str, Dataset]:
    """All four splits; questions are unique across splits (exact string), drawn in the order of ``SPLITS``.

    ``train_ft`` equals ``build_split(task, "train_ft", ...)``; later splits skip questions already drawn.
    """
    opts = _options(task, faithful, options)
    sizes = {"train_ft": n_train_ft, "icl_pool": n_icl_pool, "test_pattern": n_test, "test_counter": n_test}
    seen: set[str] = set()
    return {s: _dataset(_rows(task, s, sizes[s], seed, faithful, opts, seen)) for s in SPLITS}
