"""The ICL-vs-fine-tuning experiment: paired bootstrap, deltas, the spec's verdict, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmlab.analysis import icl_vs_ft as analysis
from llmlab.errors import LlmlabError
from llmlab.runners import icl_vs_ft
from tests.helpers import runner_setup


def vec(ones: int, n: int = 40) -> np.ndarray:
    return np.array([1.0] * ones + [0.0] * (n - ones))


def cell(base: int, icl: int, ft: int, seeds=(0, 1, 2)) -> dict:
    return {
        "icl@0": {s: vec(base) for s in seeds},
        "icl@1": {s: vec(base) for s in seeds},
        "icl@8": {s: vec(icl) for s in seeds},
        "ft:faithful": {s: vec(ft) for s in seeds},
    }


def test_paired_bootstrap_of_identical_conditions_has_zero_width_delta():
    rng = np.random.default_rng(0)
    same = {s: (rng.random(50) < 0.4).astype(float) for s in range(3)}
    out = analysis.compare_cell({"icl@0": same, "icl@8": same, "ft:a": same}, [0, 8], 8, ["a"], n_boot=300)
    assert out["delta"]["icl@8"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0}  # paired: same items in every resample
    acc = out["accuracy"]["icl@0"]
    assert acc["lo"] < acc["mean"] < acc["hi"]
    assert acc["mean"] == pytest.approx(np.mean([v.mean() for v in same.values()]))


def test_deltas_gaps_and_k_star():
    out = analysis.compare_cell(cell(base=10, icl=30, ft=14), [0, 1, 8], 8, ["faithful"], n_boot=500)
    assert out["k_star"] == 8
    assert out["delta"]["icl@8"]["mean"] == pytest.approx(0.5)
    assert out["delta"]["ft:faithful"]["mean"] == pytest.approx(0.1)
    gap = out["gap"]["icl@8 - ft:faithful"]
    assert gap["mean"] == pytest.approx(0.4) and 0 < gap["lo"] <= gap["hi"]


@pytest.mark.parametrize(
    "icl_bool,icl_expr,outcome", [(36, 36, "reproduced"), (36, 12, "partially reproduced"), (10, 36, "not reproduced")]
)
def test_verdict_follows_the_preregistered_levels(icl_bool, icl_expr, outcome):
    cells = {
        (task, "pattern"): analysis.compare_cell(cell(base=10, icl=icl, ft=12), [0, 1, 8], 8, ["faithful"], 300)
        for task, icl in (("bool", icl_bool), ("expression", icl_expr))
    }
    assert analysis.verdict(cells, 8)["outcome"] == outcome
    assert analysis.verdict({k: v for k, v in cells.items() if k[0] != "bool"}, 8)["outcome"] == "not assessed"


TINY_EXPERIMENT = [
    "method=icl_vs_ft",
    "method.tasks=[bool,expression]",
    "method.shots=[0,2]",
    "method.report_k=2",
    "method.seeds=[0,1]",
    "method.run_arms=[faithful,lora]",
    "method.arms.faithful.max_steps=2",
    "method.arms.lora.max_steps=2",
    "method.arms.faithful.grad_accum=2",
    "method.arms.lora.grad_accum=2",
    "method.bootstrap=100",
    "dataset.n_test=4",
]


def test_tiny_experiment_runs_every_step_and_resumes_without_redoing_any(tmp_path, monkeypatch):
    cfg, ctx = runner_setup(tmp_path, *TINY_EXPERIMENT)
    icl_vs_ft.run(cfg, ctx)
    root = ctx.run_dir.path
    for seed in (0, 1):
        for task in ("bool", "expression"):
            for k in (0, 2):
                assert (root / f"seed-{seed}/icl/{task}/k-{k}/predictions.jsonl").is_file()
            for arm in ("faithful", "lora"):
                assert (root / f"seed-{seed}/ft/{arm}/eval/{task}/results.json").is_file()
        assert (root / f"seed-{seed}/ft/lora/model/adapter_config.json").is_file()
        assert (root / f"seed-{seed}/ft/faithful/model/config.json").is_file()
    summary = json.loads((root / "comparison.json").read_text())
    assert {(c["task"], c["variant"]) for c in summary["cells"]} == {
        (t, v) for t in ("bool", "expression") for v in ("pattern", "counter")
    }
    assert summary["sample_efficiency"]["faithful"]["ft_lines"] == 2 * 2
    assert "| bool | pattern |" in (root / "comparison.md").read_text()
    assert (root / "icl_vs_ft.png").stat().st_size > 0
    first = (root / "comparison.json").read_text()

    def must_not_run(*_):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(icl_vs_ft.finetune, "run", must_not_run)
    monkeypatch.setattr(icl_vs_ft.icl, "run", must_not_run)
    icl_vs_ft.run(cfg, ctx)
    assert (root / "comparison.json").read_text() == first  # same data, same seeded bootstrap


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.shots=[1,2]", "must include 0"),
        ("method.report_k=16", "not among method.shots"),
        ("method.run_arms=[nope]", "unknown arm"),
    ],
)  # method.metric: its choices are checked with the config
def test_bad_experiment_settings_fail_before_any_work(tmp_path, override, message):
    cfg, ctx = runner_setup(tmp_path, *TINY_EXPERIMENT, override)
    with pytest.raises(LlmlabError, match=message):
        icl_vs_ft.run(cfg, ctx)
    assert not list(ctx.run_dir.path.glob("seed-*"))
