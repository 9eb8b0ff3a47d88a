"""The report on a synthetic run directory: means, intervals, table and plot."""

from __future__ import annotations

import json
import math

import pytest

from llmlab.errors import LlmlabError
from llmlab.report import report


def write_run(path, shots, seed, acc):
    path.mkdir(parents=True)
    (path / "meta.json").write_text("{}")
    (path / "results.json").write_text(
        json.dumps(
            {
                "runner": "icl",
                "model": "m",
                "task": "bool",
                "shots": shots,
                "seed": seed,
                "metrics": {"pattern": {"n": 50, "strict": acc, "loglik": acc / 2}},
                "timing": {"scoring_s": 1.0},
            }
        )
    )


def test_report_aggregates_seeds(tmp_path):
    accs = {0: [0.5, 0.6, 0.7], 4: [0.8, 0.9, 1.0]}
    for shots, vals in accs.items():
        for seed, acc in enumerate(vals):
            write_run(tmp_path / f"{shots}-{seed}", shots, seed, acc)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "meta.json").write_text("{}")
    table, png = report(tmp_path)
    half = 4.303 * 0.1 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert f"0.600 ± {half:.3f} (3 seeds)" in table and f"0.900 ± {half:.3f} (3 seeds)" in table
    assert "0.450" in table  # loglik mean at 4 shots
    assert "1 unfinished" in table
    assert png is not None and png.stat().st_size > 1000 and (tmp_path / "report.md").is_file()


def test_single_seed_uses_item_interval(tmp_path):
    write_run(tmp_path / "a", 0, 0, 0.5)
    write_run(tmp_path / "b", 2, 0, 0.5)
    table, _ = report(tmp_path)
    assert f"0.500 ± {1.96 * math.sqrt(0.25 / 50):.3f} (items)" in table


def test_field_that_is_null_in_one_run_and_an_object_in_another(tmp_path):
    """e.g. MCTS `scorer`: null for the random reward, an object otherwise; such fields are not grouping keys, while
    list-valued ones (`components`) are."""
    for name, comps, scorer, acc in (
        ("random", ["random"], None, 0.8),
        ("jsd", ["jsd"], {"calls": 3}, 0.6),
        ("jsd_ll", ["jsd", "ll"], {"calls": 5}, 0.7),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(
            json.dumps(
                {
                    "runner": "mcts",
                    "components": comps,
                    "scorer": scorer,
                    "seed": 0,
                    "metrics": {"step_2": {"n": 10, "accuracy": acc}},
                }
            )
        )
    table, _ = report(tmp_path)
    rows = [line for line in table.splitlines() if "step_2 |" in line]
    assert len(rows) == 3 and "scorer" not in table  # list-valued fields separate arms, objects are left out
    assert any("| jsd+ll |" in r and "0.700" in r for r in rows)


def test_a_field_or_metric_a_run_lacks_is_a_dash(tmp_path):
    """e.g. RWKV beside a transformer: no `attention` key, no first-token mass; pretraining has no item count."""
    for name, extra, metrics in (
        ("lm", {"attention": "softmax"}, {"val_loss": 1.9, "first_token_mass": 0.01}),
        ("rwkv", {}, {"val_loss": 1.7}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(
            json.dumps({"runner": "pretrain", "model": name, **extra, "seed": 0, "metrics": {"val": metrics}})
        )
    table, _ = report(tmp_path)
    head = next(line for line in table.splitlines() if line.startswith("| model"))
    assert head.startswith("| model | attention | variant | n | first_token_mass | val_loss |")
    assert "| rwkv | – | val | – | – | 1.700 (1 seed) |" in table
    assert "| lm | softmax | val | – | 0.010 (1 seed) | 1.900 (1 seed) |" in table


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(LlmlabError, match="no finished runs"):
        report(tmp_path)


def test_pretrain_plots_from_run_directories(tmp_path):
    from llmlab.analysis.pretrain_plots import load, main

    for i, (attention, seed) in enumerate([("softmax", 0), ("softmax", 1), ("stablemask", 0)]):
        run = tmp_path / "sweep" / str(i)
        run.mkdir(parents=True)
        result = {
            "runner": "pretrain",
            "model": "lm-tiny",
            "attention": attention,
            "position": "rope",
            "seed": seed,
            "extrapolation": [{"multiple": m, "window": None, "ppl": 6.0 + m + seed} for m in (1, 2, 4)],
            "sink": {"mean": {"first_token_mass": 0.01 * (i + 1)}},
        }
        (run / "results.json").write_text(json.dumps(result))
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "train/loss": 3.0 - s / 100}) + "\n" for s in (10, 20))
            + json.dumps({"step": 20, "val/loss": 2.5})
        )
    runs = load([tmp_path / "sweep"], None)
    assert {k: len(v) for k, v in runs.items()} == {"lm-tiny softmax rope": 2, "lm-tiny stablemask rope": 1}
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "png")]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "attention_sink.png",
        "extrapolation.png",
        "loss_curves.png",
    ]
    assert main([str(tmp_path / "sweep"), "--out", str(tmp_path / "x"), "--arms", "nothing"]) == 2
