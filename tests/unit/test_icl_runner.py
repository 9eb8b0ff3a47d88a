"""The ICL runner in-process on a tiny random model: prompts, metrics, interruption and resume."""

from __future__ import annotations

import json

import pytest

from llmlab.runners import icl
from llmlab.scoring import Scorer
from tests.helpers import runner_setup


def test_prompts_have_k_fresh_demos_and_metrics_match_predictions(tmp_path):
    cfg, ctx = runner_setup(tmp_path, "method.shots=3", "dataset=implicit/relation")
    res = icl.run(cfg, ctx)
    preds = [json.loads(x) for x in ctx.run_dir.file("predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 20 and res["metrics"]["counter"]["n"] == 10
    for variant in ("pattern", "counter"):
        sub = [p for p in preds if p["variant"] == variant]
        assert res["metrics"][variant]["loglik"] == sum(p["loglik_correct"] for p in sub) / len(sub)
        assert res["metrics"][variant]["strict"] == sum(p["strict"] for p in sub) / len(sub)
    pool = [f"demo {i}\n" for i in range(50)]
    per_query = {tuple(icl.draw_demos(pool, 3, False, 0, "pattern", i)) for i in range(10)}
    assert len(per_query) > 5  # redrawn per query
    assert icl.draw_demos(pool, 3, False, 0, "pattern", 4) == icl.draw_demos(pool, 3, False, 0, "pattern", 4)
    assert len({tuple(icl.draw_demos(pool, 3, True, 0, "pattern", i)) for i in range(10)}) == 1


def test_zero_shot_prompt_is_header_plus_question(tmp_path):
    from llmlab.data.implicit import load_implicit, task_spec

    cfg, ctx = runner_setup(tmp_path, "method.shots=0", "method.limit=3", "dataset=implicit/bool")
    icl.run(cfg, ctx)
    preds = [json.loads(x) for x in ctx.run_dir.file("predictions.jsonl").read_text().splitlines()]
    rows = load_implicit("bool", 0, n_test=10, n_train_ft=20, n_icl_pool=50)["test_pattern"].to_list()[:3]
    header = task_spec("bool").header
    # the tiny model's tokenizer is byte-level: one token per UTF-8 byte of header + question
    assert [p["context_tokens"] for p in preds[:3]] == [len((header + r["question"]).encode()) for r in rows]


def test_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    cfg, ctx = runner_setup(tmp_path, "method.shots=1", "dataset.n_test=40")
    monkeypatch.setattr(icl, "CHUNK", 16)
    calls = {"n": 0}
    real = Scorer.score

    def flaky(self, reqs, on_batch=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, reqs, on_batch)

    monkeypatch.setattr(Scorer, "score", flaky)
    with pytest.raises(KeyboardInterrupt):
        icl.run(cfg, ctx)
    partial = ctx.run_dir.file("predictions.partial.jsonl")
    assert len(partial.read_text().splitlines()) == 32
    assert not ctx.run_dir.file("results.json").exists()

    monkeypatch.setattr(Scorer, "score", real)
    res = icl.run(cfg, ctx)
    assert res["timing"]["items"] == 80 - 32 and not partial.exists()
    fresh_cfg, fresh_ctx = runner_setup(tmp_path / "fresh", "method.shots=1", "dataset.n_test=40")
    assert icl.run(fresh_cfg, fresh_ctx)["metrics"] == res["metrics"]


def test_only_requested_scoring_is_done(tmp_path):
    cfg, ctx = runner_setup(tmp_path, "method.shots=1", "method.scoring=[loglik]", "method.limit=3")
    res = icl.run(cfg, ctx)
    assert set(res["metrics"]["pattern"]) == {"n", "loglik", "label_logit"}


def test_file_dataset_runs_like_the_generated_one(tmp_path):
    from llmlab.data.implicit import build_split

    for name, split in (("rows", "test_counter"), ("demos", "icl_pool")):
        rows = build_split("bool", split, 6, seed=1).to_list()
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg, ctx = runner_setup(
        tmp_path,
        "dataset=file",
        f"dataset.path={tmp_path / 'rows.jsonl'}",
        f"dataset.pool_path={tmp_path / 'demos.jsonl'}",
        "dataset.header=Answer.",
        "method.shots=2",
    )
    res = icl.run(cfg, ctx)
    assert res["metrics"]["counter"]["n"] == 6 and "pattern" not in res["metrics"]
