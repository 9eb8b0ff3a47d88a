"""Parity (llmlab's own task): a lamp starts off; each ``X`` flips its switch, each ``O`` does nothing.

Question: ``Sequence: X O X ... . Is the lamp on? Answer:`` -> `` True`` iff the number of X is odd. Sequences have
12..20 symbols. Pattern items: the prefix (all but the last symbol) always has an even number of X, so the surface
shortcut "the lamp is on iff the last symbol is X" is always right (and agrees with the parity rule). Counter items: the
last symbol is drawn independently of the answer (shortcut ~50%), the parity rule still decides. Labels are balanced
in both (the balanced ``want`` plan). There is no released version: faithful and clean modes are identical.
"""

from __future__ import annotations

import random

from .common import Ctx, TaskSpec, binary, item

HEADER = (
    "A lamp starts off. Each X flips its switch and each O does nothing. Tell me whether the lamp is on at the "
    "end (Answer True or False). Here are some examples:\n"
)


def spec(faithful: bool) -> TaskSpec:
    return TaskSpec("parity", HEADER, 2, "bool")


def generate(rng: random.Random, ctx: Ctx) -> dict:
    truth = ctx.want
    last_x = rng.random() < 0.5 if ctx.counter else truth
    prefix = [rng.choice("XO") for _ in range(rng.randint(11, 19))]
    if prefix.count("X") % 2 != (truth != last_x):
        i = rng.randrange(len(prefix))
        prefix[i] = "O" if prefix[i] == "X" else "X"
    seq = [*prefix, "X" if last_x else "O"]
    question = f"Sequence: {' '.join(seq)}. Is the lamp on? Answer:"
    answer, target, cands = binary(truth, ("False", "True"), " ")
    meta = {"n_x": seq.count("X"), "length": len(seq), "shortcut": str(last_x), "full": answer}
    return item(question, answer, target, cands, question + target + "\n", question + target, meta)


def space(variant: str, faithful: bool, options: dict) -> int:
    """Distinct questions: any sequence of 12..20 symbols (counter), or one whose prefix has an even number of X
    (pattern: 2 ** (length - 1) per length)."""
    return sum(2 ** (n if variant == "counter" else n - 1) for n in range(12, 21))


def pattern_like(meta: dict) -> bool:
    """A counter item whose last symbol agrees with the answer has the form of a pattern item."""
    return meta["shortcut"] == meta["full"]
