"""User dataset files: JSONL, one row per line with the implicit-task row schema (see ``llmlab.data.implicit``)."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset

from ..errors import LlmlabError
from .implicit.common import ANSWER_KINDS, FEATURES, ROW_FIELDS


def _problem(row: object) -> str | None:
    """What is wrong with one parsed line, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for f in ROW_FIELDS:
        if f not in row:
            return f"missing field {f!r}"
        value, want = row[f], list if f == "candidates" else int if f == "label" else str
        if not isinstance(value, want) or (f == "label" and isinstance(value, bool)):
            return f"field {f!r} must be {want.__name__}, got {type(value).__name__}"
    cands = row["candidates"]
    if not cands or not all(isinstance(c, str) for c in cands):
        return "field 'candidates' must be a non-empty list of strings"
    if not 0 <= row["label"] < len(cands):
        return f"label {row['label']} out of range for {len(cands)} candidates"
    if cands[row["label"]] != row["target"]:
        return "candidates[label] differs from target"
    if row["answer_kind"] not in ANSWER_KINDS:
        return f"answer_kind must be one of {', '.join(ANSWER_KINDS)}, got {row['answer_kind']!r}"
    if row["answer_kind"] != "bool":  # strict matching compares numbers
        try:
            float(row["answer"])
        except ValueError:
            return f"answer {row['answer']!r:.40} is not a number (answer_kind {row['answer_kind']})"
    return None


def load_jsonl_dataset(path: str | Path) -> Dataset:
    """Load and validate a JSONL dataset; any problem raises ``LlmlabError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LlmlabError(f"{path}: dataset file not found")
    rows = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise LlmlabError(f"{path}: line {lineno}: not valid UTF-8") from None
            except json.JSONDecodeError as e:
                raise LlmlabError(f"{path}: line {lineno}: bad JSON ({e.msg} at column {e.colno})") from None
            problem = _problem(row)
            if problem:
                raise LlmlabError(f"{path}: line {lineno}: {problem}")
            rows.append({f: row[f] for f in ROW_FIELDS})
    if not rows:
        raise LlmlabError(f"{path}: no rows in dataset file")
    return Dataset.from_dict({f: [r[f] for r in rows] for f in ROW_FIELDS}, features=FEATURES)
