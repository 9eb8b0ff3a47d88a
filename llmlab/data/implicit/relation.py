"""Relation (A-Z connectivity, spec 1.4): cities B..J shuffled into a chain, plus ``A - a`` for a random city ``a``.

Pattern items: 50/50 ``a - Z`` is added last (True) or not (False), so "True iff Z appears" is always right.
Counter items (all False): the last chain edge is dropped. Faithful mode has no Z at all (as released, so the Z shortcut
still scores 100% there); clean mode adds ``x - Z`` last, with ``x`` outside A's component, so Z appears but is not
reachable (Z shortcut 0%). Faithful mode keeps the trailing space after ``is``.
"""

from __future__ import annotations

import random
from itertools import pairwise

from .common import Ctx, TaskSpec, binary, header, item

HEADER = (
    "Here are some cities expressed as A, B, C, etc. I will show some connection relations, and you need to tell "
    "me if city A and city Z are connected (Answer True or False). Here are some examples: \n"
)
ASK = " So 'the city A and Z is connected' is "


def spec(faithful: bool) -> TaskSpec:
    return TaskSpec("relation", header(HEADER, faithful), 2, "bool")


def _component(edges: list[tuple[str, str]], start: str) -> set[str]:
    seen, grew = {start}, True
    while grew:
        new = {y for e in edges for x, y in (e, e[::-1]) if x in seen} - seen
        seen, grew = seen | new, bool(new)
    return seen


def generate(rng: random.Random, ctx: Ctx) -> dict:
    cities = [chr(c) for c in range(66, 75)]
    rng.shuffle(cities)
    a = rng.choice(cities)
    edges = [("A", a), *pairwise(cities)]
    truth = False if ctx.counter else ctx.want
    if ctx.counter:
        edges.pop()
        if not ctx.faithful:
            edges.append((rng.choice(sorted(set(cities) - _component(edges, "A"))), "Z"))
    elif truth:
        edges.append((a, "Z"))
    text = "".join(f"{x} is connected with {y}\n" for x, y in edges) + "\n"
    has_z = any("Z" in e for e in edges)
    if ctx.faithful:
        answer, target, cands = binary(truth, ("False", "True"), "")
        question = text + ASK
        demo = question + answer + "\n"
    else:
        answer, target, cands = binary(truth, ("False", "True"), " ")
        question = text + ASK.rstrip()
        demo = question + target + "\n\n"
    meta = {"a": a, "chain": cities, "edges": [list(e) for e in edges], "shortcut": str(has_z), "full": answer}
    return item(question, answer, target, cands, demo, question + target, meta)


def pattern_like(meta: dict) -> bool:
    """Never: a counter item lists one edge fewer than a pattern item with the same Z status."""
    return False
