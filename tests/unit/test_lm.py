"""The `lm` decoder: every attention x position combination, path equivalence, evaluations, the position probe."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from llmlab.analysis import lm_metrics
from llmlab.analysis.position_probe import chance, probe_arch, train_probe
from llmlab.config import LMArch
from llmlab.data.corpus import Corpus
from llmlab.errors import LlmlabError
from llmlab.models.lm import LM, attention_probs, score_bias
from llmlab.models.stablemask import alibi_slopes, stablemask_reference

SMALL = LMArch(n_layer=2, d_model=32, n_head=4, ffn_hidden=48, max_seq_len=64)
COMBOS = [(a, p) for a in ("softmax", "stablemask") for p in ("rope", "alibi", "none")]


def model(seed=0, train_len=16, **kw) -> LM:
    torch.manual_seed(seed)
    return LM(dataclasses.replace(SMALL, **kw), 50, train_len).eval()


@pytest.mark.parametrize("attention,position", COMBOS)
def test_sdpa_equals_the_reference_on_the_model_level(attention, position):
    ids = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(1))  # past train_len=16 too
    fast = model(attention=attention, position=position, attn_impl="sdpa")(ids)
    ref = model(attention=attention, position=position, attn_impl="reference")(ids)
    assert fast.shape == (2, 24, 50) and torch.isfinite(fast).all()
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)


def test_stablemask_changes_the_output_and_softmax_ignores_gamma():
    ids = torch.randint(0, 50, (1, 16), generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(model(attention="softmax")(ids), model(attention="stablemask")(ids))
    torch.testing.assert_close(model(gamma="0.3")(ids), model(gamma="alibi")(ids))


@pytest.mark.parametrize("horizon", [None, 12, math.inf])
def test_dense_weights_match_the_papers_formula_with_and_without_alibi(horizon):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    gamma = alibi_slopes(4).double()
    probs, pseudo = attention_probs(q, k, gamma=gamma, horizon=horizon)
    torch.testing.assert_close(
        (probs.double() @ v), stablemask_reference(q, k, v, gamma, horizon=horizon), atol=1e-6, rtol=1e-5
    )
    # ALiBi: S = (A - m (i - j)) * C + P, P[i, j] = -j * gamma for i < j < H (H = 8 here), softmax, times C
    if horizon is None:
        bias = score_bias(8, 8, gamma, None, q.device)
        probs, pseudo = attention_probs(q, k, gamma=gamma, bias=bias)
        i, j = torch.arange(8)[:, None], torch.arange(8)[None, :]
        a = q @ k.transpose(-1, -2) / math.sqrt(8) - gamma[:, None, None] * (i - j)
        s = torch.where(j <= i, a, -j * gamma[:, None, None])
        full = torch.softmax(s, -1)
        torch.testing.assert_close(probs.double(), full * (j <= i), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(pseudo.double(), (full * (j > i)).sum(-1), atol=1e-6, rtol=1e-5)


def test_rope_refuses_sequences_past_max_seq_len_alibi_does_not():
    with pytest.raises(LlmlabError, match="longer than model.lm.max_seq_len=64"):
        model(position="rope")(torch.zeros(1, 65, dtype=torch.long))
    assert model(position="alibi")(torch.zeros(1, 65, dtype=torch.long)).shape == (1, 65, 50)


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"attention": "linear"}, "attention must be one of"),
        ({"gamma": "fast"}, "gamma must be 'alibi' or a positive number"),
        ({"gamma": "-1"}, "gamma must be > 0"),
        ({"n_head": 3}, "must split into 3 heads"),
        ({"attn_impl": "triton", "attention": "stablemask", "position": "alibi"}, "triton supports position rope"),
    ],
)
def test_bad_architectures_are_clear_errors(kw, needle):
    with pytest.raises(LlmlabError, match=needle):
        model(**kw)


def tiny_corpus(n_tokens=2000) -> Corpus:
    ids = torch.randint(0, 50, (n_tokens,), generator=torch.Generator().manual_seed(0))
    return Corpus("t", "byte", 50, ids, ids.clone(), 1.0)


def test_extrapolation_reports_perplexity_per_length():
    m = model(attention="stablemask", position="rope")
    rows = lm_metrics.extrapolation(
        m, tiny_corpus(), 16, [1, 2, 8], max_blocks=4, batch_size=4, device=torch.device("cpu")
    )
    assert [r["length"] for r in rows] == [16, 32, 128]
    assert all(r["ppl"] > 1 and r["bpb"] > 0 for r in rows[:2]) and "max_seq_len" in rows[2]["skipped"]
    windowed = lm_metrics.extrapolation(m, tiny_corpus(), 16, [2], 4, 4, torch.device("cpu"), window=8)
    assert windowed[0]["window"] == 8 and windowed[0]["ppl"] != rows[1]["ppl"]
    assert all(b.attn.window is None for b in m.blocks)


@pytest.mark.parametrize("attention", ["softmax", "stablemask"])
def test_sink_metrics_on_a_tiny_model(attention):
    m = model(attention=attention, position="rope", train_len=64)  # horizon 64: every row has pseudo columns
    blocks = tiny_corpus().blocks("val", 32)[:3]
    out = lm_metrics.sink_metrics(m, blocks, torch.device("cpu"), batch_size=2)
    assert len(out["layers"]) == 2 and out["n_sequences"] == 3 and out["length"] == 32
    mean = out["mean"]
    assert 0 < mean["first_token_mass"] < 1 and 0 < mean["max_key_mass"] <= 1 and mean["entropy"] > 0
    if attention == "stablemask":
        curve = out["pseudo_ratio_by_position"]
        assert len(curve) == 32 and curve[0] > curve[8] > curve[-1] >= 0 and 0 < mean["real_mass"] < 1
        # over the real keys alone the first key holds more: the raw figure counts the pseudo mass in the row
        assert mean["first_token_mass_real"] > mean["first_token_mass"] * 1.01
    else:
        assert "pseudo_ratio" not in mean
        assert mean["first_token_mass_real"] == pytest.approx(mean["first_token_mass"], rel=1e-5)


def test_the_position_probe_runs_and_softmax_rope_is_at_chance():
    base = LMArch(position="rope")
    arch = probe_arch(base, "softmax", n_layer=1, d_model=16, n_head=2, seq_len=16)
    res = train_probe(
        arch, "bucket", 16, 4, steps=3, batch_size=4, lr=1e-2, seed=0, eval_batches=2, device=torch.device("cpu")
    )
    assert res["accuracy"] == pytest.approx(chance("bucket", 16, 4)) == 0.25
    sm = train_probe(
        dataclasses.replace(arch, attention="stablemask"), "mod", 16, 4, 3, 4, 1e-2, 0, 2, torch.device("cpu")
    )
    assert 0 <= sm["accuracy"] <= 1 and math.isfinite(sm["final_loss"])


@pytest.mark.slow
def test_stablemask_learns_absolute_position_and_softmax_cannot():
    """Spec S1 (shortened): 2 layers, D = 64, 4 heads, RoPE, N = 64, 8 buckets."""
    base = LMArch(position="rope")
    results = {
        a: train_probe(probe_arch(base, a, 2, 64, 4, 64), "bucket", 64, 8, 200, 32, 1e-3, 0, 4, torch.device("cpu"))[
            "accuracy"
        ]
        for a in ("softmax", "stablemask")
    }
    assert results["softmax"] == pytest.approx(0.125) and results["stablemask"] >= 0.9
