"""Every `llmlab ...` command in README.md and experiments/*/README.md composes and validates as written (issue 18).

Commands are read from the fenced code blocks (continuation lines joined, `# comments` dropped). A sweep (`a=x,y`)
is checked with its first value; Optuna search expressions (`choice(...)`, `tag(...)`), shell variables and the
`...` of abbreviated commands are left out; `report` and `--help` commands are not configs.
"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helpers import REPO, compose

READMES = [REPO / "README.md", *sorted((REPO / "experiments").glob("*/README.md"))]
FLAGS = {"-m", "--multirun", "--cfg", "job", "-p"}


def commands() -> list[tuple[str, str]]:
    found = []
    for path in READMES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split(" #")[0].split("&&")[0].strip()
                if line.startswith("llmlab ") and not re.match(r"llmlab (report|--help)\b", line):
                    found.append((str(path.relative_to(REPO)), line))
    return found


def first_value(override: str) -> str:
    """`key=a,b` -> `key=a` (commas inside brackets belong to one list value)."""
    key, _, value = override.partition("=")
    depth, cut = 0, len(value)
    for i, ch in enumerate(value):
        depth += ch in "[({"
        depth -= ch in "])}"
        if ch == "," and depth == 0:
            cut = i
            break
    return f"{key}={value[:cut]}"


def overrides(line: str) -> list[str]:
    words = shlex.split(line.replace("<", "_").replace(">", "_"))[1:]
    return [
        first_value(w)
        for w in words
        if w not in FLAGS and "=" in w and "$" not in w and "..." not in w and "(" not in w
    ]


COMMANDS = commands()


def test_the_readmes_hold_commands():
    assert len(COMMANDS) > 40 and any(p.startswith("experiments/") for p, _ in COMMANDS)
    assert overrides("llmlab -m a=1,2 'b=[1,2]' 'c=choice(1,2)' $B \"s=[$S]\" d=... e=<run>/x") == [
        "a=1",
        "b=[1,2]",
        "e=_run_/x",
    ]


@pytest.mark.parametrize("where,line", COMMANDS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(COMMANDS)])
def test_a_readme_command_composes_and_validates(where, line):
    from llmlab.config import validate_config

    validate_config(compose(overrides(line)))
