"""Boolean functions (spec 1.3): three parenthesised and/or groups of True/False, group sizes never increasing.

``bool_variant="shortcut"`` (clean-mode default): pattern items end ``E or True`` (-> True) or ``(E) and False``
(-> False), 50/50, so the last literal gives the answer. ``bool_variant="random"`` (faithful default, the released
``randoms``): pattern items are bare ``E`` (~60% True, no shortcut). Counter items (both variants) are
``(E) or False`` / ``(E) and True`` (no effect, must evaluate E); the suffix is drawn independently of the answer,
so the last-literal shortcut is at chance. Clean mode balances counter labels by resampling E; faithful mode keeps
the natural rate.
Faithful mode: answers ``1``/``0``, trailing space after ``is:`` and the Bug-4 demo (True demos lack the newline, False
demos are a bare ``"0\\n"``).
"""

from __future__ import annotations

import random

from .common import Ctx, TaskSpec, binary, header, item

HEADER = (
    "Here are some boolean expressions, you need to directly tell me the result. If it is true, print True, "
    "else print False. Here are some examples: \n"
)
OPTIONS = {"bool_variant": ("shortcut", "random")}
INSTR = " The result is: "


def defaults(faithful: bool) -> dict:
    return {"bool_variant": "random" if faithful else "shortcut"}


def spec(faithful: bool) -> TaskSpec:
    return TaskSpec("bool", header(HEADER, faithful), 1 if faithful else 2, "bool")


def _chain(vals: list[bool], ops: list[str]) -> bool:
    """Python semantics of ``v0 op v1 ...`` with ``and`` binding tighter than ``or``."""
    result, run = False, vals[0]
    for op, v in zip(ops, vals[1:], strict=True):
        if op == "and":
            run = run and v
        else:
            result, run = result or run, v
    return result or run


def _expr(rng: random.Random) -> tuple[str, bool]:
    groups, values, t = [], [], 4
    for _ in range(3):
        t = rng.randint(2, t)
        vals = [rng.random() < 0.5 for _ in range(t)]
        ops = [rng.choice(("and", "or")) for _ in range(t - 1)]
        groups.append("(" + " ".join([str(vals[0])] + [f"{o} {v}" for o, v in zip(ops, vals[1:], strict=True)]) + ")")
        values.append(_chain(vals, ops))
    joins = [rng.choice(("and", "or")) for _ in range(2)]
    return f"{groups[0]} {joins[0]} {groups[1]} {joins[1]} {groups[2]}", _chain(values, joins)


def generate(rng: random.Random, ctx: Ctx) -> dict:
    text, value = _expr(rng)
    shortcut = None
    if ctx.counter:
        while not ctx.faithful and value != ctx.want:
            text, value = _expr(rng)
        shortcut = rng.random() < 0.5
        text = f"({text}) and True" if shortcut else f"({text}) or False"
    elif ctx.options["bool_variant"] == "shortcut":
        value = shortcut = ctx.want
        text = f"{text} or True" if value else f"({text}) and False"
    labels = ("0", "1") if ctx.faithful else ("False", "True")
    answer, target, cands = binary(value, labels, "" if ctx.faithful else " ")
    meta = {
        "expr": text,
        "shortcut": None if shortcut is None else labels[shortcut],
        "full": answer,
        "bool_variant": ctx.options["bool_variant"],
    }
    if ctx.faithful:
        question = text + "\n" + INSTR
        demo = question + answer if value else answer + "\n"  # Bug 4
        return item(question, answer, target, cands, demo, question + answer, meta)
    question = text + "\n" + INSTR.rstrip()
    return item(question, answer, target, cands, question + target + "\n\n", question + target, meta)


def pattern_like(meta: dict) -> bool:
    """Never: counter expressions end ``and True``/``or False``, pattern ones a group or ``or True``/``and False``."""
    return False
