"""Seeded, deterministic generators for the implicit-pattern tasks of Yin et al. (EMNLP Findings 2024).

Spec: ``shared/specs/icl_vs_ft.md`` sections 1 and 2.3. Every row has the fields in ``ROW_FIELDS``; a k-shot prompt is
``spec.header + "".join(demo rows) + query["question"]`` and the gold continuation is ``query["target"]``.
``faithful=True`` reproduces the released formats and quirks; ``faithful=False`` (default) is one clean format.
Randomness: one ``random.Random(stable_seed(seed, task, split, variant))`` per split; no global RNG.
Sizes: at most ``MAX_ROWS`` rows per split, and no more distinct questions than a task has (a module's ``space``);
``load_implicit(..., limit=k)`` draws only the first ``k`` test rows of each variant, the same as a full draw's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice

from datasets import Dataset

from llmlab.seeding import make_rng, stable_seed

from ...errors import LlmlabError
from . import algebra, boolean, code_reading, expression, parity, relation
from .common import FEATURES, ROW_FIELDS, SPLITS, Ctx, TaskSpec

__all__ = ["ROW_FIELDS", "SPLITS", "TASKS", "TaskSpec", "build_split", "load_implicit", "stable_seed", "task_spec"]

_MODULES = {
    "expression": expression,
    "code": code_reading,
    "bool": boolean,
    "relation": relation,
    "algebra": algebra,
    "parity": parity,
}
TASKS: tuple[str, ...] = tuple(_MODULES)
MAX_ROWS = 1_000_000  # per split: more is a typo, not an experiment (rows and their dedup set live in memory)


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


def _variant(split: str) -> str:
    return "counter" if split == "test_counter" else "pattern"


def _check_sizes(task: str, faithful: bool, opts: dict, sizes: dict[str, int]) -> None:
    """Refuse, before drawing anything, sizes that cannot be honoured: not a count, above ``MAX_ROWS``, or more
    distinct questions of a variant than the task has (the dedup would reject draws until it gives up)."""
    for split, n in sizes.items():
        if split not in SPLITS:
            raise LlmlabError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise LlmlabError(f"number of rows must be a non-negative integer, got {n!r}")
        if n > MAX_ROWS:
            raise LlmlabError(f"{task}/{split}: {n} rows asked, more than the maximum of {MAX_ROWS} per split")
    space = getattr(_module(task), "space", None)
    for variant in ("pattern", "counter") if space else ():
        splits = [s for s in sizes if _variant(s) == variant]
        want, have = sum(sizes[s] for s in splits), space(variant, faithful, opts)
        if want > have:
            raise LlmlabError(
                f"implicit task {task!r} has {have} distinct {variant} questions, fewer than the "
                f"{want} asked for ({' + '.join(splits)})"
            )


def _rows(task: str, split: str, n: int, seed: int, faithful: bool, opts: dict, seen: set[str]) -> list[dict]:
    """``n`` rows with questions not in ``seen`` (which is updated); labels follow a balanced pair-wise plan."""
    _check_sizes(task, faithful, opts, {split: n})
    return list(_draw(task, split, n, seed, faithful, opts, seen))


def _draw(task: str, split: str, n: int, seed: int, faithful: bool, opts: dict, seen: set[str]) -> Iterator[dict]:
    """The ``n`` rows of ``_rows`` one at a time, each drawn only when asked for (``seen`` grows as they are)."""
    mod, spec = _module(task), task_spec(task, faithful)
    variant = _variant(split)
    rng = make_rng(seed, task, split, variant)
    rejected, planned, first, i = 0, -1, False, 0
    while i < n:
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
        yield {
            "id": f"{task}/{split}/{i:05d}",
            "task": task,
            "split": split,
            "variant": variant,
            **it,
            "answer_kind": spec.answer_kind,
            "meta": json.dumps(it["meta"], sort_keys=True),
        }
        i += 1


def _pattern_like(task: str, row: dict) -> bool:
    """Whether a counter row's question could also be drawn as a pattern question (modules without
    ``pattern_like`` are assumed to allow it)."""
    check = getattr(_module(task), "pattern_like", None)
    return True if check is None else check(json.loads(row["meta"]))


def _dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({f: [r[f] for r in rows] for f in ROW_FIELDS}, features=FEATURES)


def build_split(task: str, split: str, n: int, seed: int, faithful: bool = False, **options) -> Dataset:
    """``n`` rows of one split (questions unique within the split); same arguments give the same rows."""
    opts = _options(task, faithful, options)
    return _dataset(_rows(task, split, n, seed, faithful, opts, set()))


def load_implicit(
    task: str,
    seed: int,
    faithful: bool = False,
    n_test: int = 200,
    n_train_ft: int = 1000,
    n_icl_pool: int = 1000,
    limit: int | None = None,
    **options,
) -> dict[str, Dataset]:
    """All four splits; questions are unique across splits (exact string), drawn in the order of ``SPLITS``.

    ``train_ft`` equals ``build_split(task, "train_ft", ...)``; later splits skip questions already drawn.
    ``limit`` keeps the first ``limit`` rows of each test split, drawing only those: they are the full draw's rows,
    since the rest of ``test_pattern`` is drawn (to skip its questions) only where a counter row could be one of them.
    """
    opts = _options(task, faithful, options)
    sizes = {"train_ft": n_train_ft, "icl_pool": n_icl_pool, "test_pattern": n_test, "test_counter": n_test}
    _check_sizes(task, faithful, opts, sizes)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise LlmlabError(f"limit must be a non-negative integer, got {limit!r}")
    k = n_test if limit is None else min(limit, n_test)
    seen: set[str] = set()
    out = {s: list(_draw(task, s, sizes[s], seed, faithful, opts, seen)) for s in ("train_ft", "icl_pool")}
    pattern = _draw(task, "test_pattern", n_test, seed, faithful, opts, seen)
    out["test_pattern"] = list(islice(pattern, k))

    def counter(skip: set[str]) -> list[dict]:
        return list(islice(_draw(task, "test_counter", n_test, seed, faithful, opts, set(skip)), k))

    out["test_counter"] = counter(seen)
    if k < n_test and any(_pattern_like(task, r) for r in out["test_counter"]):
        for _ in pattern:  # the rest of test_pattern, whose questions a full draw's counter rows skip
            pass
        if seen & {r["question"] for r in out["test_counter"]}:
            out["test_counter"] = counter(seen)
    return {s: _dataset(out[s]) for s in SPLITS}
