"""The README's first commands work as written, from any directory (issue 18: newcomer paths)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from tests.helpers import LM_SHAPE, compose

# LM_SHAPE without its dataset: pretraining must pick its corpus itself
SHAPE = [o for o in LM_SHAPE if not o.startswith("dataset=")]
QUICK = ["method.max_steps=2", "method.eval_blocks=2", "method.eval_lengths=[1]", "method.sink_blocks=1"]


def test_pretraining_defaults_to_the_pydoc_corpus_and_a_dataset_override_wins():
    assert compose(["method=pretrain", "model=lm-tiny"]).dataset.name == "corpus/pydoc"
    assert compose(["method=pretrain", "dataset=corpus/shakespeare"]).dataset.name == "corpus/shakespeare"
    assert compose(["method=icl"]).dataset.source == "implicit"  # only pretraining changes the dataset default


def test_pretraining_without_a_dataset_runs_from_another_directory(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "llmlab.cli", *SHAPE, *QUICK, "hardware=cpu", "logger=none", f"hydra.run.dir={run}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LLMLAB_CACHE": str(tmp_path / "cache")},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["dataset"]["name"] == "corpus/pydoc"
    assert (run / "results.json").is_file()
