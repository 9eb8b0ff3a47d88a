"""In-house snippet bank for the code-reading task (written for llmlab; same structure as the released ``code.json``).

Each snippet = a ``function1(x)`` body template (``{c}``/``{d}`` are small integer constants drawn per item, so the
question space is large) + ``function2(z, a)`` returning ``z <op> k`` that never uses ``a``. ``ref`` is a hand-written
reference for ``function1`` on integer inputs (pure templates only; used by counter items) -- snippets are never run.
40 templates x 3 (op, k, input style) = 120 snippets, built deterministically from a fixed seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _digit_sum(n: int) -> int:
    return sum(int(ch) for ch in str(n))


def _halvings(x: int, c: int) -> int:
    steps = 0
    while x != 0 and steps < c:
        x, steps = x // 2, steps + 1
    return steps + x


def _log_count(x: int, c: int) -> int:
    count = 0
    while x > 0:
        x, count = x // c, count + 1
    return count


def _fact(n: int) -> int:
    p = 1
    for i in range(1, n + 1):
        p *= i
    return p


# (body template, imports, reference function1(x, c, d) or None). c is in 2..9, d in 1..9.
PURE: list[tuple[str, tuple[str, ...], Callable[[int, int, int], int]]] = [
    ("    y = x * {c}\n    y = y - {d}\n    return y", (), lambda x, c, d: x * c - d),
    (
        "    total = 0\n    for i in range(x):\n        total += i % {c}\n    return total",
        (),
        lambda x, c, d: sum(i % c for i in range(x)),
    ),
    (
        "    if x > {c}:\n        return x - {c}\n    return {c} - x + {d}",
        (),
        lambda x, c, d: x - c if x > c else c - x + d,
    ),
    ("    s = 0\n    for i in range({c}):\n        s = s + x\n    return s - {d}", (), lambda x, c, d: c * x - d),
    ("    a = x % {c}\n    b = x // {c}\n    return a * {d} + b", (), lambda x, c, d: x % c * d + x // c),
    (
        "    result = 1\n    for _ in range({c}):\n        result = result * 2\n    return result + x",
        (),
        lambda x, c, d: 2**c + x,
    ),
    (
        "    values = [x, {c}, {d}]\n    return max(values) - min(values)",
        (),
        lambda x, c, d: max(x, c, d) - min(x, c, d),
    ),
    (
        "    count = 0\n    n = x\n    while n > 0:\n        n = n // {c}\n        count += 1\n    return count * {d}",
        (),
        lambda x, c, d: _log_count(x, c) * d,
    ),
    ("    y = abs(x - {c})\n    return y * y - {d}", (), lambda x, c, d: (x - c) ** 2 - d),
    (
        "    evens = 0\n    for i in range(x + {c}):\n        if i % 2 == 0:\n            evens += 1\n    return evens",
        (),
        lambda x, c, d: (x + c + 1) // 2,
    ),
    (
        "    a, b = 0, 1\n    for _ in range(x % {c}):\n        a, b = b, a + b\n    return a + {d}",
        (),
        lambda x, c, d: _fib(x % c) + d,
    ),
    (
        "    y = x\n    if y % 2 == 0:\n        y = y // 2\n    else:\n        y = 3 * y + 1\n    return y + {c}",
        (),
        lambda x, c, d: (x // 2 if x % 2 == 0 else 3 * x + 1) + c,
    ),
    (
        "    n = x * {c}\n    s = 0\n    while n > 0:\n        s += n % 10\n        n //= 10\n    return s",
        (),
        lambda x, c, d: _digit_sum(x * c),
    ),
    ("    return (x + {c}) * ({d} - x)", (), lambda x, c, d: (x + c) * (d - x)),
    (
        "    m = {c}\n    for i in range(1, x + 1):\n        if i % {d} == 0:\n            m += i\n    return m",
        (),
        lambda x, c, d: c + sum(i for i in range(1, x + 1) if i % d == 0),
    ),
    ("    y = x * x\n    y = y % {c}\n    return y + {d}", (), lambda x, c, d: x * x % c + d),
    ("    low = min(x, {c})\n    high = max(x, {d})\n    return high - low", (), lambda x, c, d: max(x, d) - min(x, c)),
    (
        "    steps = 0\n    while x != 0 and steps < {c}:\n        x = x // 2\n        steps = steps + 1\n"
        "    return steps + x",
        (),
        lambda x, c, d: _halvings(x, c),
    ),
    (
        "    p = 1\n    for i in range(1, {c} + 1):\n        p = p * i\n    return p % (x + 1)",
        (),
        lambda x, c, d: _fact(c) % (x + 1),
    ),
    (
        "    y = -x\n    for k in range({c}):\n        y = y + k\n    return y",
        (),
        lambda x, c, d: -x + c * (c - 1) // 2,
    ),
    (
        "    parity = x % 2\n    if parity:\n        return x * {c}\n    return x + {d}",
        (),
        lambda x, c, d: x * c if x % 2 else x + d,
    ),
    ("    y = {c} * x - {d} * 2\n    if y < 0:\n        y = -y\n    return y", (), lambda x, c, d: abs(c * x - 2 * d)),
    (
        "    acc = 0\n    for i in range(x):\n        for j in range({c}):\n            acc += 1\n    return acc - {d}",
        (),
        lambda x, c, d: x * c - d,
    ),
    ("    data = [x, x + {c}, x + {d}]\n    return sum(data) // 3", (), lambda x, c, d: (3 * x + c + d) // 3),
    ("    r = x\n    r -= {c}\n    r *= 2\n    return r", (), lambda x, c, d: 2 * (x - c)),
    ("    return x ** 2 - {c} * x + {d}", (), lambda x, c, d: x * x - c * x + d),
    (
        "    best = 0\n    for i in range(1, x + 1):\n        if x % i == 0:\n            best = i if i < x else best\n"
        "    return best + {c}",
        (),
        lambda x, c, d: max([i for i in range(1, x) if x % i == 0], default=0) + c,
    ),
]

IMPURE: list[tuple[str, tuple[str, ...]]] = [
    ("    y = math.sqrt(x + {c})\n    return round(y, 2)", ("math",)),
    ("    angle = math.radians(x * {c})\n    return math.sin(angle) + math.cos(angle)", ("math",)),
    ("    arr = np.arange(x + {c})\n    return float(np.mean(arr)) * {d}", ("numpy as np",)),
    ("    m = np.ones(({c}, {d})) * x\n    return m.sum()", ("numpy as np",)),
    ("    random.seed(x)\n    return random.randint(0, {c} * 10)", ("random",)),
    ("    values = [random.random() for _ in range({c})]\n    return sum(values) * x", ("random",)),
    ("    return math.log(x + {c}) * {d}", ("math",)),
    ("    v = np.array([x, {c}, {d}])\n    return int(np.std(v) * 100)", ("numpy as np",)),
    ("    return math.factorial({c}) / (x + 1)", ("math",)),
    ("    vec = np.linspace(0, x, {c} + 2)\n    return vec.tolist()", ("numpy as np",)),
    ("    h = math.hypot(x, {c})\n    return math.floor(h) + {d}", ("math",)),
    ("    noise = random.gauss(0, {c})\n    return x + noise", ("random",)),
    ("    text = str(x) * {c}\n    return len(text) + {d}", ()),
]


@dataclass(frozen=True)
class Snippet:
    """One bank entry; ``k`` is the full constant shown in ``function2`` (may have two digits)."""

    id: int
    body: str
    imports: tuple[str, ...]
    ref: Callable[[int, int, int], int] | None
    op: str
    k: int
    input_style: str  # used in faithful mode only: float(input()) / int(input()) / bare input()


def _build() -> tuple[Snippet, ...]:
    rng = random.Random(20240611)  # fixed: the bank is a constant
    templates = [(b, i, r) for b, i, r in PURE] + [(b, i, None) for b, i in IMPURE]
    out = []
    for idx in range(3 * len(templates)):
        body, imports, ref = templates[idx % len(templates)]
        op = rng.choices("+*-/", weights=(30, 29, 21, 19))[0]
        two_digit = rng.random() < 0.35
        if op == "/":
            k = rng.choice((10, 20, 25) if two_digit else (2, 4, 5, 8))
        else:
            k = rng.randint(10, 30) if two_digit else rng.randint(1, 9)
        style = "input()" if idx in (57, 111) else "int(input())" if idx % 8 in (1, 4, 6) else "float(input())"
        out.append(Snippet(idx, body, imports, ref, op, k, style))
    return tuple(out)


BANK: tuple[Snippet, ...] = _build()
PURE_BANK: tuple[Snippet, ...] = tuple(s for s in BANK if s.ref is not None)
