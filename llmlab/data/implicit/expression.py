"""Expression ("reducible term", spec 1.1): ``(S)+(Z)*(C)=``.

Pattern items: Z sums to 0, so the answer is value(S) (the shortcut). Counter items: Z is replaced by NZ (random sum in
[-R, R]); answer = value(S) + value(NZ) * value(C). All four parts are always drawn (Z, NZ, C, S), as released.
Faithful ``train_ft`` rows use the released FT format ``(S)+(Z)*(C)+=`` with the old ranges (Z 1-3 terms R=10, C R=20).
Distractor: pattern -> the value when ``*`` is read as ``+``; counter -> value(S); gold + 1 if it coincides.
"""

from __future__ import annotations

import random

from .common import Ctx, TaskSpec, header, item, shuffled, sum_expr

HEADER = "Now you need to calculate the answer of some mathematic equations. Here are some examples: \n"


def spec(faithful: bool) -> TaskSpec:
    return TaskSpec("expression", header(HEADER, faithful), 3 if faithful else 4, "int")


def generate(rng: random.Random, ctx: Ctx) -> dict:
    old_ft = ctx.faithful and ctx.split == "train_ft"
    if old_ft:
        z, vz = sum_expr(rng, 1, 3, 10, 0)
        c, vc = sum_expr(rng, 4, 4, 20)
        s, vs = sum_expr(rng, 1, 2, 10, allow_neg=False)
    else:
        z, vz = sum_expr(rng, 2, 4, 20, 0)
        nz, vnz = sum_expr(rng, 2, 4, 20)
        c, vc = sum_expr(rng, 4, 4, 10)
        s, vs = sum_expr(rng, 1, 2, 10, allow_neg=False)
        if ctx.counter:
            z, vz = nz, vnz
    value = vs + vz * vc
    question = f"({s})+({z})*({c})" + ("+=" if old_ft else "=")
    distractor = vs if ctx.counter else vs + vz + vc
    if distractor == value:
        distractor = value + 1
    answer = str(value)
    demo = question + answer + (" \n " if ctx.faithful else "\n")
    meta = {
        "S": s,
        "Z": z,
        "C": c,
        "vs": vs,
        "vz": vz,
        "vc": vc,
        "shortcut": str(vs),
        "full": answer,
        "format": "ft_released" if old_ft else "head",
    }
    return item(question, answer, answer, shuffled(rng, answer, str(distractor)), demo, question + answer, meta)


def pattern_like(meta: dict) -> bool:
    """A counter item whose replaced term happens to sum to 0 has the form of a pattern item."""
    return meta["vz"] == 0
