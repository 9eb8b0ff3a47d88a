"""Linear equations (spec 1.5): a, b in 1..5; the query pre-fills ``a = x, b =`` and only b is scored.

Pattern items: two independent equations (coefficients 1..4) plus the dependent ``alpha*r1 + beta*r2`` (alpha, beta in
1..3). Counter items: four distinct random equations (coefficients 1..4), all consistent with (a, b).
No surface shortcut is known for this task (meta ``shortcut`` is null). Distractor: a (if != b), else another value.
Faithful mode keeps the trailing space after ``b =``.
"""

from __future__ import annotations

import random

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
