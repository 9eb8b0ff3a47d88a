"""Checkable results: the two-level bootstrap against known answers, README tables generated from committed raw
results (and the check that fails on a hand-edited number), and the collection of a run's compact results."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmlab import collect, readme_tables, report, runs_table
from llmlab.analysis import bootstrap
from llmlab.analysis import circuit_shift as analysis
from llmlab.errors import LlmlabError
from llmlab.runners import circuit_shift
from tests.helpers import REPO

EXPERIMENTS = REPO / "experiments"


def test_one_seed_gives_the_item_interval():
    items = np.array([1.0] * 3000 + [0.0] * 7000)
    e = bootstrap.estimate([items], n_boot=4000)
    half = 1.96 * math.sqrt(0.3 * 0.7 / len(items))  # the normal approximation, accurate at n = 10,000
    assert e["mean"] == pytest.approx(0.3)
    assert (e["hi"] - e["lo"]) / 2 == pytest.approx(half, rel=0.1)


def test_seeds_without_item_variation_give_the_seed_resampling_range():
    # seed means 1, 0, 0 and no variation within a seed: the resampled mean is k/3 with P(k = 0) = 8/27 and
    # P(k = 3) = 1/27, both above 2.5%, so the interval is exactly [0, 1]
    per_seed = [np.ones(20), np.zeros(20), np.zeros(20)]
    e = bootstrap.estimate(per_seed, n_boot=4000)
    assert e["mean"] == pytest.approx(1 / 3) and (e["lo"], e["hi"]) == (0.0, 1.0)


def test_three_tied_seeds_still_have_an_item_interval():
    rng = np.random.default_rng(0)
    per_seed = [rng.permutation([1.0] * 34 + [0.0] * 6) for _ in range(3)]  # 0.850 in every seed
    e = bootstrap.estimate(per_seed)
    assert e["mean"] == pytest.approx(0.85) and e["hi"] - e["lo"] > 0.05  # not "± 0.000"


def test_paired_conditions_share_their_draws():
    a = [np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 1.0, 1.0])]
    samples = bootstrap.resample({"a": a, "b": [v.copy() for v in a]}, n_boot=500)
    assert np.array_equal(samples["a"], samples["b"])  # identical conditions: every paired difference is 0
    with pytest.raises(ValueError, match="same items"):
        bootstrap.resample({"a": a, "b": [a[0], a[1][:2]]})


def test_a_statistic_may_give_several_values_per_draw_from_the_same_draws():
    a = [np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 1.0, 1.0])]
    both = bootstrap.resample({"a": a}, n_boot=300, statistic=lambda x: np.stack([x.mean(1), 2 * x.mean(1)], 1))
    alone = bootstrap.resample({"a": a}, n_boot=300)
    assert both["a"].shape == (300, 2)
    np.testing.assert_allclose(both["a"][:, 0], alone["a"])
    np.testing.assert_allclose(both["a"][:, 1], 2 * alone["a"])


def write_run(root: Path, seed: int, shots: int, correct: list[bool]) -> None:
    root.mkdir(parents=True)
    acc = sum(correct) / len(correct)
    (root / "results.json").write_text(
        json.dumps(
            {
                "runner": "icl",
                "dataset": "implicit/bool",
                "shots": shots,
                "seed": seed,
                "metrics": {"pattern": {"n": len(correct), "strict": acc}},
            }
        )
    )
    rows = "".join(json.dumps({"id": i, "variant": "pattern", "strict": c}) + "\n" for i, c in enumerate(correct))
    (root / "predictions.jsonl.gz").write_bytes(gzip.compress(rows.encode(), mtime=0))


def test_report_intervals_come_from_the_kept_items(tmp_path):
    for seed in range(3):
        write_run(tmp_path / f"s{seed}", seed, 8, [True] * 34 + [False] * 6)
    table, _ = report.report(tmp_path)
    assert "0.850 [" in table and "(3 seeds)" in table and "± 0.000" not in table


def test_a_generated_table_is_checked_against_its_results(tmp_path):
    paper = tmp_path / "paper"
    for seed in range(2):
        write_run(paper / "results" / "sweep" / f"s{seed}", seed, 4, [True, False, True, True] * 5)
    readme = paper / "README.md"
    readme.write_text("# paper\n\n<!-- table: runs results/sweep -->\n<!-- /table -->\n\nprose\n")
    assert readme_tables.check(tmp_path) and "differs from its results" in readme_tables.check(tmp_path)[0]
    readme_tables.write(paper)
    assert readme_tables.check(tmp_path) == []
    text = readme.read_text()
    assert "0.750 [" in text and text.endswith("<!-- /table -->\n\nprose\n")
    readme.write_text(text.replace("0.750 [", "0.760 [", 1))  # a number edited by hand
    (problem,) = readme_tables.check(tmp_path)
    assert "table 'runs results/sweep' differs" in problem


def test_a_hand_typed_table_must_be_marked_legacy(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("x\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (problem,) = readme_tables.check(tmp_path)
    assert "README.md:3: a table typed by hand" in problem
    readme.write_text(f"x\n\n{readme_tables.LEGACY}\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert readme_tables.check(tmp_path) == []


def test_committed_report_tables_match_their_results():
    if not EXPERIMENTS.is_dir():
        pytest.skip("no experiments/ folder")
    assert readme_tables.check(EXPERIMENTS) == []


def test_collect_keeps_results_and_items_without_weights_or_machine_paths(tmp_path):
    run = tmp_path / "run"
    write_run(run / "seed-0" / "icl", 0, 0, [True, False])
    (run / "seed-0" / "icl" / "config.yaml").write_text(f"output_dir: {run}/seed-0/icl\n")
    (run / "seed-0" / "ft" / "model").mkdir(parents=True)
    (run / "seed-0" / "ft" / "model" / "model.safetensors").write_bytes(b"weights")
    (run / "seed-0" / "ft" / "results.json").write_text("{}")
    (run / "seed-0" / "ft" / "scores.npz").write_bytes(b"PK\x03\x04 per-pair arrays")
    dest = tmp_path / "dest"
    collect.collect(run, dest)
    assert (dest / "seed-0/ft/scores.npz").read_bytes() == b"PK\x03\x04 per-pair arrays"  # kept byte for byte
    assert (dest / "seed-0/icl/config.yaml").read_text() == "output_dir: <run>/seed-0/icl\n"
    assert (dest / "seed-0/icl/predictions.jsonl.gz").is_file() and (dest / "seed-0/ft/results.json").is_file()
    assert not list(dest.rglob("*.safetensors"))
    table, _ = report.report(dest / "seed-0" / "icl")
    assert "0.500 [" in table  # the copy is enough to recompute the interval
    shutil.rmtree(run)


def test_collect_scrubs_the_run_a_copied_step_was_first_written_under(tmp_path):
    first, run = tmp_path / "first", tmp_path / "second"
    step = run / "seed-1" / "icl"
    write_run(step, 1, 0, [True, False])
    (step / "config.yaml").write_text(f"output_dir: {first}/seed-1/icl\nother: {first}/elsewhere\n")
    (step / "meta.json").write_text(json.dumps({"command": f"llmlab hydra.run.dir={first}"}))
    collect.collect(run, tmp_path / "dest")
    copied = (tmp_path / "dest" / "seed-1" / "icl" / "config.yaml").read_text()
    assert copied == "output_dir: <run>/seed-1/icl\nother: <run>/elsewhere\n"
    assert str(first) not in (tmp_path / "dest" / "seed-1" / "icl" / "meta.json").read_text()


def write_steps(root: Path, seed: int, rels: dict[str, float], n: int = 20) -> None:
    """Steps of an icl_vs_ft experiment whose pattern items are right with the given share (counter: never)."""
    for rel, share in rels.items():
        d = root / f"seed-{seed}" / rel
        d.mkdir(parents=True)
        rows = [
            {"id": f"{v}-{i}", "variant": v, "strict": v == "pattern" and i < share * n}
            for v in ("pattern", "counter")
            for i in range(n)
        ]
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "results.json").write_text("{}")


def test_the_icl_vs_ft_table_uses_the_finished_seeds_and_says_when_it_is_preliminary(tmp_path):
    root = tmp_path / "results" / "exp"
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(
        "model: {name: m}\ndataset: {n_test: 20, variants: [pattern, counter]}\n"
        "method: {tasks: [bool], shots: [0, 8], seeds: [0, 1], run_arms: [faithful], report_k: 8, metric: strict,"
        " bootstrap: 200}\n"
    )
    write_steps(root, 0, {"icl/bool/k-0": 0.5, "icl/bool/k-8": 0.95, "ft/faithful/eval/bool": 0.6})
    write_steps(root, 1, {"icl/bool/k-0": 0.5, "icl/bool/k-8": 0.9})  # its fine-tuning has not finished
    text = readme_tables.render_icl_vs_ft(tmp_path, "results/exp")
    assert "| bool | pattern | 0.500 [" in text and "0.950 [" in text and "0.600 [" in text
    assert "Seeds [0]" in text and "preliminary" in text and "[0, 1]" in text
    write_steps(root, 1, {"ft/faithful/eval/bool": 0.55})
    text = readme_tables.render_icl_vs_ft(tmp_path, "results/exp")
    assert "Seeds [0, 1]" in text and "preliminary" not in text
    assert "0.925 [" in text  # ICL k=8 over both seeds: (0.95 + 0.90) / 2


def test_the_flagship_table_agrees_with_its_comparison_json_and_a_changed_one_is_refused(tmp_path):
    flagship = EXPERIMENTS / "icl_vs_ft" / "results" / "gemma3-270m"
    if not (flagship / "comparison.json").is_file():
        pytest.skip("the flagship run has not finished")
    shutil.copytree(flagship, tmp_path / "results" / "g")
    kept = json.loads((flagship / "comparison.json").read_text())
    assert f"**{kept['verdict']['outcome']}**" in readme_tables.render_icl_vs_ft(tmp_path, "results/g")
    kept["verdict"]["gaps"]["bool"]["mean"] += 0.1
    (tmp_path / "results" / "g" / "comparison.json").write_text(json.dumps(kept))
    with pytest.raises(LlmlabError, match="verdict differs"):
        readme_tables.render_icl_vs_ft(tmp_path, "results/g")


def test_the_paired_table_differences_arms_seed_by_seed(tmp_path):
    runs = tmp_path / "results" / "s2"
    values = {
        ("softmax", 0): (2.0, 8.0),
        ("softmax", 1): (2.2, 8.8),
        ("softmax", 2): (2.1, 8.4),
        ("stablemask", 0): (1.9, 9.5),
        ("stablemask", 1): (2.0, 8.0),
        ("stablemask", 2): (2.05, 8.2),
    }
    for (attention, seed), (loss, ppl8) in values.items():
        d = runs / f"{attention}-{seed}"
        d.mkdir(parents=True)
        metrics = {"val": {"val_loss": loss, "ppl@1x": 4.0, "ppl@8x": ppl8}}
        (d / "results.json").write_text(
            json.dumps(
                {"runner": "pretrain", "attention": attention, "position": "rope", "seed": seed, "metrics": metrics}
            )
        )
    text = readme_tables.render(
        "paired results/s2 arm=attention ref=softmax by=position metrics=val_loss,ppl@8x/ppl@1x", tmp_path
    )
    diffs = [-0.1, -0.2, -0.05]  # val_loss, stablemask - softmax per seed
    mean = sum(diffs) / 3
    half = 4.303 * (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5 / 3**0.5
    assert f"| rope | val_loss | 2.1000 | 1.9833 | {mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] | 3/3 |" in text
    assert "| rope | ppl@8x/ppl@1x | 2.1000 | 2.1417 |" in text and "| 2/3 |" in text  # ratios 2.375/2.0/2.05
    with pytest.raises(LlmlabError, match="unexpected keyword"):
        readme_tables.render("paired results/s2 arm=attention ref=softmax by=position metrics=x bogus=1", tmp_path)


def test_lists_of_objects_in_results_do_not_split_the_arms(tmp_path):
    for seed in range(2):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        result = {
            "runner": "pretrain",
            "attention": "softmax",
            "seed": seed,
            "metrics": {"val": {"val_loss": 1.0 + seed}},
            "extrapolation": [{"length": 128, "ppl": 5.0 + seed}],
        }  # differs per run, as evaluations do
        (d / "results.json").write_text(json.dumps(result))
    keys, rows = runs_table.aggregate(runs_table.load_runs(tmp_path)[0])
    assert "extrapolation" not in keys and len(rows) == 1 and rows[0]["val_loss"][0] == 1.5


def test_the_circuit_shift_table_shows_each_condition_its_shift_and_the_noise_floor(tmp_path):
    shift = {p: {"jaccard": 0.5, "tv": 0.25, "spearman": 0.125} for p in ("heads", "mlps")}
    cond = {"accuracy": 0.75, "mean_ld_clean": 1.0, "mean_ld_corrupt": -1.0, "circuit_size": {"heads": 3, "mlps": 2}}
    run = {
        "runner": "circuit_shift",
        "task": "bool",
        "seed": 0,
        "n_pairs": 8,
        "conditions": {"B0": cond, "B8": cond},
        "shift": {"B8": shift},
        "noise_floor": {p: {"jaccard": 0.1, "tv": 0.2, "spearman": 0.3} for p in ("heads", "mlps")},
        "check": {"rule": "r", "paper_consistent": False, "supporting": True},
    }
    (tmp_path / "results" / "c" / "bool").mkdir(parents=True)
    (tmp_path / "results" / "c" / "bool" / "results.json").write_text(json.dumps(run))
    text = readme_tables.render("circuit_shift results/c", tmp_path)
    assert "| bool | 0 | B0 | 0.750 | 1.00 / -1.00 | 3 / 2 | – | – | – |" in text  # no scores.npz: no largest
    shifted = "0.500 / 0.250 / 0.125"
    assert f"| bool | 0 | B8 | 0.750 | 1.00 / -1.00 | 3 / 2 | {shifted} | {shifted} | – |" in text
    assert "| bool | 0 | noise floor | – | – | – | 0.100 / 0.200 / 0.300 | 0.100 / 0.200 / 0.300 | – |" in text
    assert "bool seed 0: paper_consistent False, supporting True" in text
    assert "over seeds" not in text  # one seed: no verdict over seeds


def test_the_circuit_shift_verdict_over_seeds_comes_from_the_kept_per_pair_scores(tmp_path):
    from tests.unit.test_circuits import seed_run, synthetic_scores

    rng = np.random.default_rng(1)  # as in test_circuits: every head metric passes, the MLPs' Jaccard cannot
    for seed in range(3):
        run, scores = seed_run(seed, synthetic_scores(rng, 0.05))
        folder = tmp_path / "results" / "c" / f"seed-{seed}" / "bool"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"runner": "circuit_shift", **run}))
        circuit_shift.save_npz(folder / "scores.npz", {f"{c}_{k}": v for c, s in scores.items() for k, v in s.items()})
    text = readme_tables.render("circuit_shift results/c", tmp_path)
    verdict = analysis.across_seeds(
        [
            (json.loads((f / "results.json").read_text()), analysis.load_scores(f / "scores.npz"))
            for f in sorted((tmp_path / "results" / "c").glob("seed-*/bool"))
        ]
    )
    tv = verdict["checks"]["heads/tv"]
    assert f"{tv['diff']:+.3f} [{tv['lo']:+.3f}, {tv['hi']:+.3f}]" in text
    assert "| bool | passes | yes | yes | yes | no |" in text  # MLP circuits of 2 components cannot move
    assert "bool (seeds [0, 1, 2]):" in text and "supporting True" in text
    seed0 = tmp_path / "results" / "c" / "seed-0" / "bool" / "scores.npz"
    assert f"| {analysis.largest(analysis.load_scores(seed0))['B0']} |" in text  # the largest heads, from the npz
    (tmp_path / "results" / "c" / "seed-1" / "bool" / "scores.npz").unlink()
    with pytest.raises(LlmlabError, match="scores.npz"):
        readme_tables.render("circuit_shift results/c", tmp_path)


# ---- MRE tables: F1 statistics recomputed on every draw ----------------------------------------------------------


def test_the_f1_statistics_equal_the_runners_metrics_and_one_seed_of_ties_has_no_width():
    from llmlab.analysis.mre_metrics import class_codes, macro_f1, macro_f1_statistic, wl_counts, wl_micro_f1

    labels = ["negative", "positive", "neutral"]
    gold = ["positive", "negative", "positive", "neutral"]
    pred = ["positive", "positive", None, "neutral"]
    # per class F1: negative 0 (fn 1), positive 2/(2+1+1) = 0.5, neutral 1 -> mean 0.5
    assert macro_f1(gold, pred, labels) == pytest.approx(0.5)
    codes = class_codes(gold, pred, labels)
    assert bootstrap.point([codes], macro_f1_statistic(3)) == pytest.approx(0.5)
    wl_gold, wl_pred = [[("a", "x"), ("b", "y")], [("c", "z")]], [[("a", "x")], None]
    assert wl_micro_f1(wl_gold, wl_pred)["f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))  # tp 1, fp 0, fn 2
    assert wl_counts(wl_gold, wl_pred).tolist() == [[1, 0, 1], [0, 0, 1]]
    perfect = class_codes(["positive", "negative"] * 5, ["positive", "negative"] * 5, labels[:2])
    e = bootstrap.estimate([perfect], 200, statistic=macro_f1_statistic(2))
    assert e["mean"] == e["lo"] == e["hi"] == 1.0  # every draw of a perfect seed is perfect


def _verbalizer_run(folder: Path, seed: int, kv_right: int) -> None:
    """A verbalizer run on 10 items: the baseline gets the first 5 right, the KV the first `kv_right`."""
    labels, gold = ["negative", "positive"], ["positive", "negative"] * 5
    rows = []
    for arm, right in (("baseline", 5), ("kv", kv_right)):
        for i, g in enumerate(gold):
            wrong = labels[1 - labels.index(g)]
            rows.append({"id": i, "shots": 0, "arm": arm, "gold": g, "pred": g if i < right else wrong})
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = [{"shots": 0}]
    result = {"runner": "verbalizer", "model": "m", "dataset": "mre/scpos_adj", "seed": seed, "n_test": 10}
    (folder / "results.json").write_text(json.dumps({**result, "labels": labels, "table": table}))


def test_the_verbalizer_table_resamples_items_and_seeds_with_paired_deltas(tmp_path):
    _verbalizer_run(tmp_path / "results" / "v" / "0", 0, kv_right=5)
    _verbalizer_run(tmp_path / "results" / "v" / "1", 1, kv_right=5)
    text = readme_tables.render("mre results/v part=verbalizer", tmp_path)
    row = next(line for line in text.splitlines() if "mre/scpos_adj" in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    # 5 of 10 right, one class always right and one wrong half the time: the point macro-F1 is the runner's
    labels, gold = ["negative", "positive"], ["positive", "negative"] * 5
    pred = [g if i < 5 else labels[1 - labels.index(g)] for i, g in enumerate(gold)]
    from llmlab.analysis.mre_metrics import macro_f1

    assert cells[5].startswith(f"{macro_f1(gold, pred, labels):.3f} [")
    assert cells[7] == "+0.000 [+0.000, +0.000]"  # identical predictions: every paired draw differs by 0
    _verbalizer_run(tmp_path / "results" / "w" / "0", 0, kv_right=10)
    text = readme_tables.render("mre results/w part=verbalizer", tmp_path)
    delta = [c.strip() for c in next(ln for ln in text.splitlines() if "mre/" in ln).split("|")[1:-1]][7]
    assert delta.startswith("+0.") and float(delta.split("[")[1].split(",")[0]) > 0  # 5 more right on every draw
    with pytest.raises(LlmlabError, match="part 'nope'"):
        readme_tables.render("mre results/v part=nope", tmp_path)


def test_the_ablation_table_pairs_each_condition_with_its_single_level_model(tmp_path):
    run = tmp_path / "results" / "a" / "seed-0"
    gold = ["positive", "negative"] * 4
    conds = {"tl_only": 4, "tl_plus_wli": 8, "wl_only": None}  # items right (TL), or a WL arm
    for cond, right in conds.items():
        rows = [
            {
                "gold_tl": g,
                "tl": None if right is None else (g if i < right else "negative" if g == "positive" else "positive"),
                "gold_wl": [["great", "positive"]],
                "wl": [["great", "positive"]] if i % 2 else None,  # half the sets found, half unparseable
            }
            for i, g in enumerate(gold)
        ]
        (run / cond).mkdir(parents=True)
        (run / cond / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = {"runner": "mre_ablation", "model": "m", "dataset": "mre/scpos_adj", "seed": 0, "n_test": 8}
    conditions = {c: {} for c in conds}
    (run / "results.json").write_text(
        json.dumps({**result, "labels": ["negative", "positive"], "conditions": conditions})
    )
    text = readme_tables.render("mre results/a part=ablation", tmp_path)
    rows = {
        ln.split("|")[3].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in text.splitlines() if "mre/" in ln
    }
    assert rows["tl_plus_wli"][5] == "1.000" and rows["tl_plus_wli"][6].startswith("1.000 [1.000, 1.000]")
    assert rows["tl_plus_wli"][7].startswith("+0.500 [") and rows["tl_plus_wli"][7].endswith("vs tl_only")
    assert rows["tl_only"][6].startswith("0.500 [") and rows["tl_only"][7] == "–"
    assert rows["wl_only"][6].startswith(f"{2 * 4 / (2 * 4 + 4):.3f} [")  # micro-F1: tp 4, fn 4


def test_collect_scrubs_every_path_of_this_machine_and_leaves_other_text(tmp_path):
    from llmlab.paths import REPO_ROOT

    run, other = tmp_path / "run", tmp_path / "another_run" / "ft" / "model"
    other.mkdir(parents=True)
    write_run(run, 0, 0, [True])
    lines = [
        f"data: {REPO_ROOT.parent / 'shared'}/data/blocksworld",
        f"conf: {REPO_ROOT}/conf",
        f"finetuned: {other}",
        "ratio: ppl@8x/ppl@1x",
        "url: https://huggingface.co/a/b",
        "gone: /no/such/place/on/this/machine",
        f"sibling: {REPO_ROOT}-worktree/x",
    ]
    (run / "config.yaml").write_text("\n".join(lines) + "\n")
    collect.collect(run, tmp_path / "dest")
    copied = (tmp_path / "dest" / "config.yaml").read_text().splitlines()
    assert copied[:6] == [
        "data: <shared>/data/blocksworld",
        "conf: <repo>/conf",
        "finetuned: <elsewhere>/ft/model",
        "ratio: ppl@8x/ppl@1x",
        "url: https://huggingface.co/a/b",
        "gone: /no/such/place/on/this/machine",
    ]
    assert copied[6] == f"sibling: {REPO_ROOT}-worktree/x"  # a longer name is not the repository (nor exists)


def test_one_seed_gets_a_binomial_interval_for_a_share_of_items_only(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    metrics = {"blocksworld/step_4": {"accuracy": 0.5, "mean_wall_s": 0.5, "n": 100}}
    (run / "results.json").write_text(json.dumps({"runner": "mcts", "seed": 0, "metrics": metrics}))
    keys, rows = runs_table.aggregate(runs_table.load_runs(tmp_path)[0])
    text = runs_table.markdown(keys, rows)
    assert "0.500 ± 0.098 (items)" in text  # 1.96 * sqrt(0.25 / 100)
    assert "0.500 (1 seed)" in text  # seconds are not a share of the items


def test_a_bench_table_is_rendered_from_its_kept_json_by_the_benchmark(tmp_path):
    row = {"context": 4096, "rwkv_s_per_token": 0.035, "rwkv_vs_first": 0.95, "gpt_s_per_token": 0.112}
    row |= {"gpt_vs_first": 2.35, "rwkv_state_bytes": 20480, "gpt_kv_bytes": 33554432}
    cpu = {"T": 1024, "C": 256, "chunked_s": 0.55, "sequential_s": 3.534, "sequential_over_chunked": 6.43}
    result = {"threads": 1, "decode": {"shape": {"n_layer": 4, "d_model": 256}, "rows": [row]}, "cpu_wkv": [cpu]}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "wkv.json").write_text(json.dumps(result))
    text = readme_tables.render("bench results/wkv.json", tmp_path)
    assert "| 4,096 | 0.0350 s | 0.95× | 0.1120 s | 2.35× | 20 KiB | 32,768 KiB |" in text
    assert "| 1,024 | 256 | 0.550 s | 3.534 s | 6.4× |" in text
    (tmp_path / "results" / "nope.json").write_text("{}")
    with pytest.raises(LlmlabError, match="one of the benchmarks"):
        readme_tables.render("bench results/nope.json", tmp_path)


def test_a_bench_table_names_the_machine_it_was_measured_on():
    from llmlab.bench.machine import machine_line

    m = {"cpu": "Xeon", "gpu": None, "cpu_count": 2, "torch_threads": 1, "load_average_1min": 1.04, "torch": "2.13"}
    m |= {"transformers": "5.2", "lm_eval": "0.4.13", "git_sha": "0123456789"}
    assert machine_line({"machine": m}) == (
        "Measured on Xeon (2 CPUs, 1 torch thread, 1-min load 1.0 at the start), torch 2.13, commit 0123456."
    )
    line = machine_line({"hardware": {**m, "gpu": "H100", "torch_threads": 16}}, "hardware", ("torch", "lm_eval"))
    assert line.startswith("Measured on H100 (2 CPUs, 16 torch threads,") and "torch 2.13, lm-eval 0.4.13, " in line
    assert machine_line({}) == ""  # results written before the machine was recorded


def test_collect_copies_a_benchmark_json_without_machine_paths(tmp_path):
    bench = tmp_path / "outputs" / "bench" / "wkv.json"
    bench.parent.mkdir(parents=True)
    bench.write_text(json.dumps({"output": str(bench), "threads": 1}))
    (written,) = collect.collect(bench, tmp_path / "dest")
    assert json.loads(written.read_text()) == {"output": "<run>/wkv.json", "threads": 1}


def test_finetune_step_and_spec_decode_tables_come_from_their_json(tmp_path):
    (tmp_path / "results").mkdir()
    side = {"tokens_per_s": 59.4, "peak_rss_mb": 4470.0}
    ft = {
        "benchmark": "finetune_step",
        "settings": {"batch": 8, "seq": 128, "threads": 1, "steps": 3, "warmup": 1},
        "runs": {"full/llmlab": side, "full/trainer": {"tokens_per_s": 52.3, "peak_rss_mb": 4465.0}},
        "summary": {"full": {"ratio": 59.4 / 52.3}},
    }
    (tmp_path / "results" / "ft.json").write_text(json.dumps(ft))
    text = readme_tables.render("bench results/ft.json", tmp_path)
    assert "| full | 59.4 | 52.3 | 1.14× | 4,470 MB | 4,465 MB |" in text
    spec = {"benchmark": "spec_decode", "draft": "lookup", "prefix_cache": False, "n_draft": 8, "nodes": 2}
    spec |= {"rows": [{"identical": True}, {"identical": False}], "speedup_total": 1.29, "speedup_median_node": 1.31}
    spec |= {
        "plain_nodes_per_s": 0.046,
        "spec_nodes_per_s": 0.059,
        "plain_tokens_per_s": 2.0,
        "spec_tokens_per_s": 2.58,
    }
    spec |= {"acceptance_mean": 0.4, "model": "m", "threads": 1, "device": "cpu", "target": 1.3, "meets_target": False}
    (tmp_path / "results" / "spec_decode_no_cache.json").write_text(json.dumps(spec))
    text = readme_tables.render("bench results/spec_decode_no_cache.json", tmp_path)
    assert "every prompt prefilled in full | 1/2 | 1.29× | 1.31× | 0.046 → 0.059 | 2.00 → 2.58 | 0.40 | – |" in text
    assert "target ≥ 1.3× (missed)" in text
