"""Each paper's report starts with a "where the code is" table, and every path in it exists (issue 18)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO

PAPERS = sorted(p.parent.name for p in (REPO / "experiments").glob("*/README.md"))


def expand(path: str) -> list[str]:
    """`a/{b,c}.yaml` -> `a/b.yaml`, `a/c.yaml`."""
    m = re.search(r"\{([^}]*)\}", path)
    return (
        [q for alt in m.group(1).split(",") for q in expand(path[: m.start()] + alt + path[m.end() :])] if m else [path]
    )


@pytest.mark.parametrize("paper", PAPERS)
def test_where_the_code_is_names_existing_files(paper):
    text = (REPO / "experiments" / paper / "README.md").read_text()
    section = re.search(r"## Where the code is\n\n<!-- text table -->\n(.*?)\n\n", text, re.S)
    assert section, f"experiments/{paper}/README.md has no 'Where the code is' table"
    folder = None
    for cell in re.findall(r"`([^`]+)`", section.group(1)):
        if cell.startswith(("llmlab/", "conf/", "tests/")):
            folder = cell.rsplit("/", 1)[0] if not cell.endswith("/") else cell.rstrip("/")
        elif cell.startswith("test_") and folder:  # a file of the folder named just before
            cell = f"{folder}/{cell}"
        else:
            continue
        for path in expand(cell):
            assert list(REPO.glob(path)), f"experiments/{paper}/README.md names {path}, which does not exist"
