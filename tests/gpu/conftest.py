"""The GPU tier (`make test-gpu`): every test in this directory carries the `gpu` marker and is skipped without a
CUDA GPU; its subprocesses run the Triton kernels compiled (tests/conftest.py sets TRITON_INTERPRET=1 for the
session, this directory removes it again)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import requires_gpu

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m "not gpu"` deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            item.add_marker(requires_gpu)


@pytest.fixture(autouse=True)
def compiled_kernels(monkeypatch):
    """Subprocesses started by these tests (the CLI, the kernel comparison) import Triton compiled."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
