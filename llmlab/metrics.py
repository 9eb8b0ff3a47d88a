"""Answer matching for generated text: the released code's loose substring test and a strict first-answer test."""

from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z]+|-?\d+(?:\.\d+)?")


def loose_match(generated: str, answer: str) -> bool:
    """The released protocol: the gold answer appears anywhere in the continuation ("1" matches "10")."""
    return answer in generated


def strict_match(generated: str, answer: str, kind: str) -> bool:
    """The first number (numeric answers) or first word (boolean answers) of the continuation equals the gold."""
    if kind in ("int", "number"):
        found = _NUMBER.search(generated)
        return found is not None and math.isclose(float(found.group()), float(answer), abs_tol=1e-9)
    found = _WORD.search(generated)
    return found is not None and found.group() == answer
