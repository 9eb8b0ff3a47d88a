"""The OIELLM / MMM string format of MRE data (spec 1.3): `input = text/TASK`, `output = TL/TASK/:label;span...`.

A word-level (WL) item is a tuple of `;`-separated fields: `(label, span)` for NER and sentiment tasks, and
`(head, relation, tail)` for relation extraction (drawn `:head;relation;tail`). An empty WL set is an empty string
after the second `/`; a trailing `:` (as in some relation outputs) is accepted on reading and never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Task words of the MMM English files (spec 1.3) and the WL item arity each uses.
TASK_FIELDS = {
    "NER": 2,
    "Sentiment Relation Word": 2,
    "Sentiment Adj and N": 2,
    "Sentiment Adj": 2,
    "Sentiment N": 2,
    "Relation Extraction": 3,
    "Event Extraction": 2,
}


class FormatError(ValueError):
    """A string that does not follow the OIELLM grammar; the message says what is wrong (no location)."""


@dataclass
class MreRecord:
    """One MRE example: text, task word, text-level label and word-level items."""

    text: str
    task: str
    tl: str
    wl: list[tuple[str, ...]] = field(default_factory=list)
    id: str = ""

    def as_row(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "task": self.task,
            "tl": self.tl,
            "wl": [list(w) for w in self.wl],
            "input": write_input(self.text, self.task),
            "output": write_output(self.tl, self.task, self.wl),
        }


def wl_label(item: tuple[str, ...]) -> str:
    """The label of a WL item: the first field of a pair, the relation of a triple."""
    return item[1] if len(item) == 3 else item[0]


def wl_spans(item: tuple[str, ...]) -> list[str]:
    """The text spans of a WL item: the span of a pair, head and tail of a triple."""
    return [item[0], item[2]] if len(item) == 3 else [item[1]]


def _check_task(task: str) -> None:
    if task not in TASK_FIELDS:
        raise FormatError(f"unknown task word {task!r}; expected one of {', '.join(TASK_FIELDS)}")


def write_wl(task: str, wl: list[tuple[str, ...]]) -> str:
    """`:f1;f2...` per item; fields must be non-empty and free of the separators `:`, `;` and `/`."""
    _check_task(task)
    out = []
    for item in wl:
        if len(item) != TASK_FIELDS[task]:
            raise FormatError(f"task {task!r} needs {TASK_FIELDS[task]} fields per item, got {list(item)}")
        for f in item:
            if not f or any(c in f for c in ":;/\n"):
                raise FormatError(f"WL field {f!r} is empty or contains a separator (: ; / or newline)")
        out.append(":" + ";".join(item))
    return "".join(out)


def write_output(tl: str, task: str, wl: list[tuple[str, ...]]) -> str:
    if not tl or any(c in tl for c in ":;/\n"):
        raise FormatError(f"text-level label {tl!r} is empty or contains a separator")
    return f"{tl}/{task}/{write_wl(task, wl)}"


def write_input(text: str, task: str) -> str:
    _check_task(task)
    if "\n" in text:
        raise FormatError("text contains a newline")
    return f"{text}/{task}"


def parse_wl(task: str, s: str) -> list[tuple[str, ...]]:
    """The WL items of `s` (`:a;b:c;d`); raises FormatError on anything else."""
    _check_task(task)
    if not s:
        return []
    if not s.startswith(":"):
        raise FormatError(f"word-level part must start with ':' (got {s[:30]!r})")
    parts = s[1:].split(":")
    if parts and parts[-1] == "":  # a trailing ':' closes the last item
        parts = parts[:-1]
    items = []
    for p in parts:
        fields = tuple(p.split(";"))
        if len(fields) != TASK_FIELDS[task] or not all(fields):
            raise FormatError(
                f"word-level item {p!r} must have {TASK_FIELDS[task]} non-empty ';'-separated fields for task {task!r}"
            )
        items.append(fields)
    return items


def parse_output(s: str) -> tuple[str, str, list[tuple[str, ...]]]:
    """`(tl, task, wl)` of an output string `TL/TASK/WL`."""
    s = s.strip()
    tl, sep, rest = s.partition("/")
    if not sep or not tl:
        raise FormatError(f"output {s[:60]!r} is missing the 'TL/TASK/' separators")
    task, sep, wl = rest.partition("/")
    if not sep:
        raise FormatError(f"output {s[:60]!r} is missing the '/' after the task word")
    _check_task(task)
    return tl, task, parse_wl(task, wl)


def parse_input(s: str) -> tuple[str, str]:
    """`(text, task)` of an input string `text/TASK` (the task word is matched at the end)."""
    s = s.rstrip("\n")
    for task in sorted(TASK_FIELDS, key=len, reverse=True):
        if s.endswith("/" + task) and len(s) > len(task) + 1:
            return s[: -len(task) - 1], task
    if "/" not in s:
        raise FormatError(f"input {s[:60]!r} is missing the '/TASK' separator")
    raise FormatError(f"unknown task word {s.rsplit('/', 1)[1]!r} in input; expected one of {', '.join(TASK_FIELDS)}")


def parse_pair(inp: str, out: str, id: str = "") -> MreRecord:
    """A record from an (input, output) pair; the two task words must agree."""
    text, task = parse_input(inp)
    tl, task_out, wl = parse_output(out)
    if task_out != task:
        raise FormatError(f"input task {task!r} and output task {task_out!r} differ")
    return MreRecord(text, task, tl, wl, id)
