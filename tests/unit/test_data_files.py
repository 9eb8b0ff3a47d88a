"""llmlab.data.files: JSONL dataset loading and one-line errors naming file and line."""

from __future__ import annotations

import json

import pytest

from llmlab.data.files import load_jsonl_dataset
from llmlab.data.implicit import build_split
from llmlab.errors import LlmlabError


@pytest.fixture(scope="module")
def good_rows() -> list[dict]:
    return build_split("bool", "test_pattern", 4, 0).to_list() + build_split("code", "test_counter", 2, 0).to_list()


def _write(path, rows, extra_lines=()):
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _error(path) -> str:
    with pytest.raises(LlmlabError) as e:
        load_jsonl_dataset(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_good_file_loads(tmp_path, good_rows):
    path = _write(tmp_path / "d.jsonl", good_rows[:3], extra_lines=[""])
    path.write_text(path.read_text() + json.dumps({**good_rows[3], "extra": 1}) + "\n")
    ds = load_jsonl_dataset(path)
    assert ds.to_list() == good_rows[:4]
    assert load_jsonl_dataset(str(_write(tmp_path / "e.jsonl", good_rows))).to_list() == good_rows


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.jsonl")


def test_bad_json(tmp_path, good_rows):
    msg = _error(_write(tmp_path / "d.jsonl", good_rows[:1], extra_lines=['{"id": ']))
    assert "line 2" in msg and "bad JSON" in msg


def test_missing_field(tmp_path, good_rows):
    row = dict(good_rows[1])
    del row["target"]
    msg = _error(_write(tmp_path / "d.jsonl", [good_rows[0], good_rows[0], row]))
    assert "line 3" in msg and "missing field 'target'" in msg


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"label": "1"}, "field 'label' must be int"),
        ({"label": True}, "field 'label' must be int"),
        ({"candidates": "True"}, "field 'candidates' must be list"),
        ({"candidates": [" True", 1]}, "non-empty list of strings"),
        ({"label": 5}, "label 5 out of range for 2 candidates"),
        ({"label": -1}, "out of range"),
        ({"answer_kind": "text"}, "answer_kind must be one of"),
    ],
)
def test_bad_values(tmp_path, good_rows, change, expected):
    msg = _error(_write(tmp_path / "d.jsonl", [{**good_rows[0], **change}]))
    assert "line 1" in msg and expected in msg


def test_not_an_object_and_empty(tmp_path):
    assert "line 1: expected a JSON object" in _error(_write(tmp_path / "a.jsonl", [[1, 2]]))
    (tmp_path / "b.jsonl").write_text("\n\n")
    assert "no rows" in _error(tmp_path / "b.jsonl")
