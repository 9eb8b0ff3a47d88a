"""The ICL scoring benchmark's functions on a tiny random-init model: llmlab and lm-eval agree, the result is whole."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lm_eval")

from llmlab.bench import icl_scoring as bench  # noqa: E402
from llmlab.config import ModelConfig  # noqa: E402
from llmlab.hardware import Hardware  # noqa: E402
from llmlab.models.loading import load_model  # noqa: E402
from llmlab.scoring import Scorer  # noqa: E402

SMALL_DATA = {"n_test": 4, "n_icl_pool": 12, "n_train_ft": 2}


def test_icl_scoring_bench_agrees_with_lm_eval(tmp_path):
    cfg = ModelConfig(name="tiny", source="random")
    cpu = torch.device("cpu")
    model, tok = load_model(cfg, Hardware(cpu, torch.float32), tmp_path)
    model16, tok16 = load_model(cfg, Hardware(cpu, torch.bfloat16), tmp_path)
    lm = bench.make_hflm(model, tok, batch_size=4)

    queries: dict = {"per_query": {}, "fixed": {}}
    for task, n in bench.split_queries(6, bench.TASKS).items():
        for mode, qs in bench.build_queries(task, n, shots=2, seed=0, dataset_overrides=SMALL_DATA).items():
            queries[mode][task] = qs
    assert [len(qs) for qs in queries["per_query"].values()] == [3, 3]
    assert queries["fixed"]["relation"][0].context[:200] == queries["fixed"]["relation"][1].context[:200]

    res = bench.run_benchmark(
        queries, Scorer(model, tok, batch_size=4), lm, Scorer(model16, tok16, batch_size=4), warmup=1
    )

    assert set(res) == {"modes", "tokenization"}
    assert set(res["modes"]) == {"per_query", "fixed", "bf16"}
    for mode in ("per_query", "fixed"):
        r = res["modes"][mode]
        assert res["tokenization"][mode]["mismatched"] == 0
        assert r["vs_lm_eval"]["requests_compared"] == 12
        assert r["vs_lm_eval"]["max_abs_diff"] <= 1e-4, r["vs_lm_eval"]
        assert r["vs_lm_eval"]["argmax_agree"] == 6
        assert r["agreement_pass"] is True and isinstance(r["speed_pass"], bool)
        for side in ("llmlab", "lm_eval"):
            assert {"seconds", "req_per_s", "tokens_per_s", "forward_tokens", "accuracy"} <= set(r[side])
            assert r[side]["requests"] == 12 and r[side]["req_per_s"] > 0
        assert r["ratio_req_per_s"] == pytest.approx(r["llmlab"]["req_per_s"] / r["lm_eval"]["req_per_s"])
    drift = res["modes"]["bf16"]["drift_vs_llmlab_fp32"]
    assert drift["requests_compared"] == 12 and 0 <= drift["mean_abs_diff"] <= drift["max_abs_diff"] < 1.0
    # what the README table shows is rendered from the same JSON
    settings = {"model": "tiny", "shots": 2, "queries": 6, "per_task": {"expression": 3, "relation": 3}}
    results = {
        **res,
        "hardware": bench.hardware_info(1),
        "settings": {**settings, "batch_size": 4, "warmup": 1, "repeats": 1},
        "load": {"llmlab_fp32_s": 0.5},
        "wall_s": 3.0,
    }
    text = bench.markdown(results)
    per_query = next(line for line in text.splitlines() if line.startswith(f"| {bench.MODE_LABELS['per_query']} |"))
    assert f"| {res['modes']['per_query']['ratio_req_per_s']:.2f}× |" in per_query and "| 6/6 |" in per_query
    assert "all 12 requests tokenized identically" in text and "(target < 3 s: pass)" in text
