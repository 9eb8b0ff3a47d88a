"""RWKV-4: the WKV forms agree (naive, stable sequential, chunked, Triton), parallel == RNN mode, official checkpoint
layout, pretraining, and ICL scoring of a saved model. All weights random (the official init zeroes most matrices,
which would make equivalence tests vacuous).

The Triton kernel runs under TRITON_INTERPRET=1 on the CPU, set by tests/conftest.py before triton is imported; if
triton was imported compiled first, the Triton tests run in a subprocess instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmlab.config import RWKVArch
from llmlab.errors import LlmlabError
from llmlab.models.rwkv import RWKV, L2Wrap, load_rwkv_checkpoint, load_weights
from llmlab.models.wkv import wkv_chunked, wkv_naive, wkv_sequential
from llmlab.paths import REPO_ROOT
from tests.helpers import runner_setup
from tests.unit.test_stablemask_attention import TRITON_HERE, needs_triton

try:
    from llmlab.kernels import wkv_triton as wt
except ImportError:  # triton is optional
    wt = None

TINY_RWKV = [
    "model=rwkv4-tiny",
    "dataset=corpus/pydoc",
    "model.rwkv.n_layer=2",
    "model.rwkv.d_model=32",
    "model.rwkv.ffn_hidden=64",
    "dataset.block_size=32",
]
PRETRAIN = [
    "method=pretrain",
    *TINY_RWKV,
    "method.micro_batch_size=4",
    "method.max_steps=12",
    "method.warmup_steps=2",
    "method.lr=3e-3",
    "method.eval_every=100",
    "method.log_every=1",
    "method.eval_blocks=4",
    "method.eval_lengths=[1,2]",
    "method.save_every=100",
]


def operands(b=2, t=64, c=8, dtype=torch.float64, key_scale=3.0, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    time_decay = torch.randn(c, generator=g, dtype=dtype)
    time_first = torch.randn(c, generator=g, dtype=dtype)
    k = torch.randn(b, t, c, generator=g, dtype=dtype) * key_scale
    v = torch.randn(b, t, c, generator=g, dtype=dtype)
    return [x.requires_grad_(grad) for x in (time_decay, time_first, k, v)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def random_model(n_layer=2, d=32, vocab=64, **kw) -> RWKV:
    torch.manual_seed(0)
    return RWKV(RWKVArch(n_layer=n_layer, d_model=d, ffn_hidden=2 * d, init="normal", **kw), vocab, 64).eval()


# ---- the operator


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_wkv_forms_agree(dtype, tol):
    w, u, k, v = operands(t=100, dtype=dtype)
    seq, state = wkv_sequential(w, u, k, v)
    assert rel(wkv_naive(w, u, k, v), seq) <= tol
    for chunk in (1, 7, 16, 100, 128):  # tails, one chunk = the causal softmax reference, chunk > T
        out, st = wkv_chunked(w, u, k, v, chunk)
        assert rel(out, seq) <= tol
        assert all(rel(a, b) <= tol for a, b in zip(st, state))


def test_long_sequence_where_the_naive_form_overflows():
    w, u, k, v = operands(t=256, dtype=torch.float32, key_scale=30.0)
    assert not torch.isfinite(wkv_naive(w, u, k, v)).all()
    exact = wkv_sequential(*(x.double() for x in (w, u, k, v)))[0]
    seq = wkv_sequential(w, u, k, v)[0]
    chunked = wkv_chunked(w, u, k, v, 16)[0]
    assert torch.isfinite(seq).all() and torch.isfinite(chunked).all()
    # keys ~ 30 N(0, 1): exponent arguments near 90 carry ~1e-5 fp32 rounding each, hence the looser bound
    assert rel(seq, exact.float()) <= 1e-4 and rel(chunked, exact.float()) <= 1e-4 and rel(chunked, seq) <= 1e-4


def test_state_carries_across_calls():
    w, u, k, v = operands(t=50)
    whole = wkv_sequential(w, u, k, v)[0]
    y1, s1 = wkv_chunked(w, u, k[:, :20], v[:, :20], 8)
    y2, _ = wkv_chunked(w, u, k[:, 20:], v[:, 20:], 8, s1)
    y3, _ = wkv_sequential(w, u, k[:, 20:], v[:, 20:], s1)
    assert rel(torch.cat([y1, y2], 1), whole) <= 1e-12 and rel(y3, whole[:, 20:]) <= 1e-12


def test_chunked_gradients_match_autograd_of_the_sequential_form():
    args = operands(t=40, grad=True)
    grad_out = torch.randn(2, 40, 8, dtype=torch.float64)
    g_seq = torch.autograd.grad(wkv_sequential(*args)[0], args, grad_out)
    g_chk = torch.autograd.grad(wkv_chunked(*args, chunk=16)[0], args, grad_out)
    assert all(rel(a, b) <= 1e-10 for a, b in zip(g_chk, g_seq))
    small = operands(b=1, t=8, c=4, grad=True)
    assert torch.autograd.gradcheck(lambda *x: wkv_chunked(*x, chunk=3)[0], small)
    assert torch.autograd.gradcheck(lambda *x: wkv_sequential(*x)[0], small)  # detached max-exponents are exact


# ---- the Triton kernel (interpreted on the CPU)


@needs_triton
@pytest.mark.parametrize("b,t,c,key_scale", [(2, 12, 40, 3.0), (1, 24, 8, 30.0)])
def test_triton_matches_the_sequential_form(b, t, c, key_scale):
    args = operands(b, t, c, torch.float32, key_scale, grad=True)
    y, state = wt.wkv_triton(*args)
    ref, ref_state = wkv_sequential(*args)
    assert rel(y, ref) <= 1e-5 and all(rel(a, r) <= 1e-5 for a, r in zip(state, ref_state))
    grad_out = torch.randn(b, t, c)
    g_tr = torch.autograd.grad(y, args, grad_out)
    g_ref = torch.autograd.grad(ref, args, grad_out)
    assert all(rel(a, r) <= 1e-4 for a, r in zip(g_tr, g_ref))


@needs_triton
def test_triton_initial_state_and_fp16():
    w, u, k, v = operands(1, 16, 8, torch.float32)
    _, s1 = wkv_sequential(w, u, k[:, :6], v[:, :6])
    y, _ = wt.wkv_triton(w, u, k[:, 6:], v[:, 6:], s1)
    assert rel(y, wkv_sequential(w, u, k, v)[0][:, 6:]) <= 1e-5
    y16, _ = wt.wkv_triton(w, u, k.half(), v.half())
    assert y16.dtype == torch.float16 and rel(y16.float(), wkv_sequential(w, u, k, v)[0]) <= 2e-3


@pytest.mark.skipif(wt is None, reason="triton missing")
def test_triton_refuses_a_context_it_cannot_index():
    k = torch.empty(4, 1 << 20, 256, device="meta")  # 3 x B x T x C >= 2^31
    with pytest.raises(ValueError, match="too long"):
        wt.check_inputs(k, k)
    model = random_model(wkv_impl="triton", ctx_len=8)
    with pytest.raises(LlmlabError, match="ctx_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.skipif(TRITON_HERE or wt is None, reason="the Triton tests ran in this process")
def test_triton_tests_in_subprocess():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "triton_matches or triton_initial",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0 and " skipped" not in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


# ---- the model


def test_parallel_sequential_and_rnn_mode_logits_agree():
    model = random_model()
    ids = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        chunked = model(ids)
        seq, _ = model.run(ids, impl="sequential")
        state, steps = None, []
        for t in range(ids.shape[1]):
            logits, state = model.run(ids[:, t : t + 1], state)
            steps.append(logits)
    assert chunked.std() > 0.5  # not vacuous
    assert rel(seq, chunked) <= 1e-5 and rel(torch.cat(steps, 1), chunked) <= 1e-5
    assert state.shape == (2, 5, 2, 32) and state.dtype == torch.float32


def test_state_round_trip_and_padding(tmp_path):
    model = random_model()
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(ids)
        _, state = model.run(ids[:, :25])
        save_file({"state": state}, tmp_path / "state.safetensors")
        rest, _ = model.run(ids[:, 25:], load_file(tmp_path / "state.safetensors")["state"])
        assert rel(rest, whole[:, 25:]) <= 1e-5
        # right padding: row 1 has 10 real tokens; its state must be the one after token 10
        _, padded = model.run(ids[:, :25], lengths=torch.tensor([25, 10]))
        _, alone = model.run(ids[1:, :10])
        assert rel(padded[:, :, 1], alone[:, :, 0]) <= 1e-5 and rel(padded[:, :, 0], state[:, :, 0]) <= 1e-5


def test_greedy_generation_matches_full_recompute():
    model = random_model()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    out = model.generate(ids, 6)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq[:, 10:])


def test_official_init_table():
    model = RWKV(RWKVArch(n_layer=3, d_model=16), 50, 32)
    att0, att2 = model.blocks[0].att, model.blocks[2].att
    assert att0.time_decay[0].item() == pytest.approx(-5) and att2.time_decay[-1].item() == pytest.approx(3)
    assert att0.time_first[:3].tolist() == pytest.approx([-1.2040 + 0.0, -1.2040 + 0.5, -1.2040 - 0.5], abs=1e-3)
    assert att0.time_mix_k.shape == (1, 1, 16)
    assert att2.time_mix_k.flatten()[3].item() == pytest.approx((3 / 16) ** (1 / 3))  # (n / D) ^ (1 - l / L)
    for lin in (att0.key, att0.receptance, att0.output, model.blocks[1].ffn.value, model.blocks[1].ffn.receptance):
        assert not lin.weight.any()
    assert model.emb.weight.abs().max() <= 1e-4 and hasattr(model.blocks[0], "ln0")
    assert not hasattr(model.blocks[1], "ln0")


def test_l2wrap_adds_the_logit_penalty_to_the_gradient_only():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    wrapped = L2Wrap.apply(logits, 1e-4)
    assert torch.equal(wrapped, logits)
    wrapped.backward(torch.zeros_like(logits))  # what remains is the penalty
    top, idx = logits.detach().max(-1)
    extra = logits.grad
    assert torch.allclose(extra.gather(-1, idx[..., None])[..., 0], top * 1e-4 / 6)
    assert extra.abs().sum() == pytest.approx((top * 1e-4 / 6).abs().sum().item(), rel=1e-5)


def test_fp16_overflow_is_an_error_not_nans():
    model = random_model().half()
    with torch.no_grad():
        model.blocks[1].ffn.key.weight.mul_(1e4)
    with pytest.raises(LlmlabError, match=r"fp16 overflow in blocks\.1"):
        model(torch.randint(0, 64, (1, 8)))


def test_official_checkpoint_layout_loads_and_bad_keys_are_named(tmp_path):
    model = random_model()
    sd = model.state_dict()
    assert {
        "emb.weight",
        "blocks.0.ln0.weight",
        "blocks.0.ln1.bias",
        "blocks.1.att.time_decay",
        "blocks.1.att.time_first",
        "blocks.1.att.time_mix_k",
        "blocks.1.att.key.weight",
        "blocks.1.ffn.receptance.weight",
        "blocks.1.ffn.time_mix_r",
        "ln_out.weight",
        "head.weight",
    } <= set(sd)
    assert sd["blocks.1.att.time_decay"].shape == (32,) and sd["blocks.1.att.time_mix_v"].shape == (1, 1, 32)
    assert sd["blocks.1.ffn.key.weight"].shape == (64, 32) and sd["blocks.1.ffn.value.weight"].shape == (32, 64)
    ids = torch.randint(0, 64, (1, 12))
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / "rwkv.pth")  # official files: bf16
    save_file(sd, tmp_path / "rwkv.safetensors")
    with torch.no_grad():
        ref = model(ids)
        assert torch.equal(load_rwkv_checkpoint(tmp_path / "rwkv.safetensors")(ids), ref)
        assert rel(load_rwkv_checkpoint(tmp_path / "rwkv.pth")(ids), ref) <= 0.05
    missing = {k: v for k, v in sd.items() if k != "blocks.1.att.time_first"}
    with pytest.raises(LlmlabError, match="missing key 'blocks.1.att.time_first'") as info:
        load_weights(random_model(), missing)
    assert "\n" not in str(info.value)
    bad = {**sd, "blocks.0.att.time_mix_k": torch.zeros(32)}
    with pytest.raises(LlmlabError, match=r"'blocks.0.att.time_mix_k' has shape \(32,\)"):
        load_weights(random_model(), bad)
    with pytest.raises(LlmlabError, match="unexpected key 'head_q.weight'"):
        load_weights(random_model(), {**sd, "head_q.weight": torch.zeros(1)})


# ---- pretraining and ICL


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from llmlab.runners import pretrain

    tmp = tmp_path_factory.mktemp("rwkv_pretrain")
    cfg, ctx = runner_setup(tmp, *PRETRAIN, f"cache_dir={tmp / 'cache'}")
    return pretrain.run(cfg, ctx), ctx


def test_pretraining_decreases_the_loss_and_saves_an_official_layout(trained):
    res, ctx = trained
    rows = [json.loads(x) for x in ctx.run_dir.file("metrics.jsonl").read_text().splitlines()]
    curve = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(curve) == 12 and sum(curve[-3:]) < sum(curve[:3])
    assert res["family"] == "rwkv4" and res["timing"]["flops_per_token"] > 0 and "sink" not in res
    assert [r["length"] for r in res["extrapolation"]] == [32, 64]
    saved = ctx.run_dir.file("model")
    config = json.loads((saved / "config.json").read_text())
    assert config["family"] == "rwkv" and config["rwkv"]["n_layer"] == 2
    model = load_rwkv_checkpoint(saved / "model.safetensors")
    assert model.arch.n_layer == 2 and model.vocab_size == 256


def test_icl_runner_scores_a_saved_rwkv_model(trained, tmp_path):
    from llmlab.models.loading import load_model
    from llmlab.runners import icl
    from llmlab.scoring import Request, Scorer

    model_dir = trained[1].run_dir.file("model")
    cfg, ctx = runner_setup(
        tmp_path,
        "model=local",
        f"model.path={model_dir}",
        "dataset=implicit/bool",
        "method.shots=2",
        "method.limit=3",
        "method.batch_size=2",
    )
    res = icl.run(cfg, ctx)
    preds = [json.loads(x) for x in ctx.run_dir.file("predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and res["metrics"]["pattern"]["n"] == 3
    assert all("generated" in p and len(p["loglik"]) == len(p["candidates"]) for p in preds)

    # the scores are the model's own: compare with a direct unpadded pass
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir)
    reqs = [Request("The answer is", [" yes", " no!"], 3), Request("Short", [" x"], 0), Request("Short too", [" a"])]
    scored = Scorer(model, tok, batch_size=3).score(reqs)
    rwkv = model.model
    for req, s in zip(reqs, scored):
        for cand, ll in zip(req.candidates, s.loglik):
            ids = torch.tensor([list((req.context + cand).encode())])
            with torch.no_grad():
                logp = rwkv(ids[:, :-1]).log_softmax(-1)[0]
            n = len(req.context.encode())
            direct = sum(logp[i - 1, ids[0, i]].item() for i in range(n, ids.shape[1]))
            assert ll == pytest.approx(direct, abs=1e-4)
    greedy = rwkv.generate(torch.tensor([list(b"The answer is")]), 3)[0].tolist()
    assert scored[0].generated == bytes(greedy).decode("utf-8", errors="replace")


def test_decode_plot_from_bench_rows(tmp_path):
    from llmlab.bench.wkv import plot_decode

    rows = [
        {
            "context": c,
            "rwkv_s_per_token": 0.03,
            "gpt_s_per_token": 0.04 * c / 128,
            "rwkv_state_bytes": 20480,
            "gpt_kv_bytes": 8192 * c,
        }
        for c in (128, 1024)
    ]
    plot_decode({"shape": {"n_layer": 2, "d_model": 64}, "rows": rows}, tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
