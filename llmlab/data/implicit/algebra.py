"""Linear equations (spec 1.5): a, b in 1..5; the query pre-fills ``a = x, b =`` and only b is scored.

Pattern items: two independent equations (coefficients 1..4) plus the dependent ``alpha*r1 + beta*r2`` (alpha, beta in
1..3). Counter items: four distinct random equations (coefficients 1..4), all consistent with (a, b).
No surface shortcut is known for this task (meta ``shortcut`` is null). Distractor: a (if != b), else another value.
Faithful mode keeps the trailing space after ``b =``.
"""

from __future__ import annotations

import random
from functools import cache
from itertools import permutations

from .common import Ctx, TaskSpec, header, item, shuffled

HEADER = "Here are some equations, you need to find all solutions of given variables. Here are some examples: \n"


def spec(faithful: bool) -> TaskSpec:
    return TaskSpec("algebra", header(HEADER, faithful), 1 if faithful else 2, "int")


def _coefs(rng: random.Random, counter: bool) -> list[tuple[int, int]]:
    pairs = [(p, q) for p in range(1, 5) for q in range(1, 5)]
    while True:
        if counter:
            eqs = rng.sample(pairs, 4)
        else:
            (p1, q1), (p2, q2) = rng.choice(pairs), rng.choice(pairs)
            al, be = rng.randint(1, 3), rng.randint(1, 3)
            eqs = [(p1, q1), (p2, q2), (al * p1 + be * p2, al * q1 + be * q2)]
        if any(p * q2 != q * p2 for p, q in eqs for p2, q2 in eqs):  # unique solution
            return eqs


def generate(rng: random.Random, ctx: Ctx) -> dict:
    a, b = rng.randint(1, 5), rng.randint(1, 5)
    eqs = _coefs(rng, ctx.counter)
    lines = "\n".join(f"{p}a + {q}b = {p * a + q * b}" for p, q in eqs)
    stem = f"{lines}\n The solutions are: a = {a}, b ="
    answer = str(b)
    distractor = str(a if a != b else b % 5 + 1)
    sp = "" if ctx.faithful else " "
    question = stem + (" " if ctx.faithful else "")
    demo = stem + " " + answer + "\n" + ("" if ctx.faithful else "\n")
    meta = {"a": a, "b": b, "coefs": [list(e) for e in eqs], "shortcut": None, "full": answer}
    cands = shuffled(rng, sp + answer, sp + distractor)
    return item(question, answer, sp + answer, cands, demo, stem + " " + answer, meta)


def space(variant: str, faithful: bool, options: dict) -> int:
    """Distinct questions: 25 solutions times the equation lists with a unique solution (pattern: two independent
    equations and one of 9 combinations of them; counter: 4 distinct equations, not all parallel)."""
    return 25 * _lists(variant == "counter")


@cache
def _lists(counter: bool) -> int:
    pairs = [(p, q) for p in range(1, 5) for q in range(1, 5)]
    if counter:
        lists = sum(any(p * q2 != q * p2 for p, q in e for p2, q2 in e) for e in permutations(pairs, 4))
    else:
        lists = 9 * sum(p1 * q2 != q1 * p2 for p1, q1 in pairs for p2, q2 in pairs)
    return lists


def pattern_like(meta: dict) -> bool:
    """Never: pattern items have three equations, counter items four."""
    return False
