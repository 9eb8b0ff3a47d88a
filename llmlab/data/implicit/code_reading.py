"""Code reading ("irrelevant function", spec 1.2) over the in-house bank (``code_bank``).

The program prints ``function2(input_value, function1(input_value))`` and ``function2(z, a)`` returns ``z <op> k``
without using ``a``, so the answer is ``input <op> k``, computed arithmetically (snippets are never executed).
Counter variant (our choice; the paper has none): same construction, but the last line prints
``function2(function1(input_value), input_value)``, so the answer is ``function1(input) <op> k`` and reading the
program as "input <op> k" is wrong. Counter items use pure-integer ``function1`` templates (hand-written reference
values) and an input with ``function1(v) != v``.
Faithful mode keeps Bug 1 (only k's first digit is used for the label), each snippet's own input line
(``float(input())``, ``int(input())``, bare ``input()``: Bug 2) and the released demo/query texts (stray
``"The input is: "`` before the query). The released FT code lines carry stale labels (Bug 3); that bug is NOT
reproduced: ``ft_text`` has the correct answer. Clean mode: full k, ``int(input())`` everywhere, no stray text.
Distractor: the input under another op (counter items: the shortcut value ``input <op> k``).
"""

from __future__ import annotations

import random
from functools import cache
from operator import add, mul, sub, truediv

from .code_bank import BANK, PURE_BANK, Snippet
from .common import Ctx, TaskSpec, fmt_num, header, item, shuffled

HEADER = "Now you need to give me the printed result after running this python code . Here are some examples: \n"
OPS = {"+": add, "-": sub, "*": mul, "/": truediv}
ALT_OPS = {"+": "-*/", "-": "+*/", "*": "+-/", "/": "*+-"}


def spec(faithful: bool) -> TaskSpec:
    return TaskSpec("code", header(HEADER, faithful), 2 if faithful else 8, "number")


def render(snip: Snippet, c: int, d: int, faithful: bool, counter: bool) -> str:
    """The program text, ending with a newline."""
    imports = "".join(f"import {m}\n" for m in snip.imports) + ("\n" if snip.imports else "")
    args = "function1(input_value), input_value" if counter else "input_value, function1(input_value)"
    return (
        f"{imports}def function1(x):\n{snip.body.format(c=c, d=d)}\n\n"
        f"def function2(z, a):\n    return z {snip.op} {snip.k}\n\n"
        f"input_value = {snip.input_style if faithful else 'int(input())'}\nprint(function2({args}))\n"
    )


def generate(rng: random.Random, ctx: Ctx) -> dict:
    snip = rng.choice(PURE_BANK if ctx.counter else BANK)
    c, d, v = rng.randint(2, 9), rng.randint(1, 9), rng.randint(0, 10)
    k = int(str(snip.k)[0]) if ctx.faithful else snip.k
    z, f1 = v, None
    if ctx.counter:
        f1 = snip.ref(v, c, d)
        for _ in range(50):
            if f1 != v:
                break
            v = rng.randint(0, 10)
            f1 = snip.ref(v, c, d)
        z = f1
    value = OPS[snip.op](z, k)
    answer = fmt_num(value)
    shortcut = OPS[snip.op](v, k)
    alts = ([shortcut] if ctx.counter else []) + [OPS[o](z, k) for o in ALT_OPS[snip.op]] + [value + 1]
    distractor = next(fmt_num(a) for a in alts if a != value and fmt_num(a) != answer)
    body = "The code is: \n" + render(snip, c, d, ctx.faithful, ctx.counter) + f"The input is: {v}, so the output is:"
    meta = {
        "snippet": snip.id,
        "op": snip.op,
        "k": snip.k,
        "k_used": k,
        "input": v,
        "c": c,
        "d": d,
        "function1": f1,
        "shortcut": fmt_num(shortcut),
        "full": answer,
    }
    if ctx.faithful:
        cands = shuffled(rng, answer, distractor)
        demo = body + " " + answer + "\nHere is next example:\n"
        # ft_text carries the correct answer: the released stale FT code labels (Bug 3) are deliberately not reproduced
        return item("The input is: " + body + " ", answer, answer, cands, demo, body + " " + answer, meta)
    question = body.replace("The code is: \n", "The code is:\n", 1)
    target = " " + answer
    cands = shuffled(rng, target, " " + distractor)
    return item(question, answer, target, cands, question + target + "\n\n", question + target, meta)


def space(variant: str, faithful: bool, options: dict) -> int:
    """An upper bound on distinct questions: distinct programs (snippet and constants) times 11 inputs."""
    return 11 * _programs(variant == "counter", faithful)


@cache
def _programs(counter: bool, faithful: bool) -> int:
    bank = PURE_BANK if counter else BANK
    return len({render(s, c, d, faithful, counter) for s in bank for c in range(2, 10) for d in range(1, 10)})


def pattern_like(meta: dict) -> bool:
    """Never: a counter program prints ``function2(function1(input_value), input_value)``."""
    return False
