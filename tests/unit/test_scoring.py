"""The batched scorer agrees with plain per-candidate forwards and with HF `generate`."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from llmlab.config import ModelConfig
from llmlab.hardware import Hardware
from llmlab.models.loading import load_model
from llmlab.scoring import Request, Scorer

SHARED = "Compute the value.\n(1+2)+(3-3)*(4)=3\n(5)+(2-2)*(7-1)=5\n(2+2)+(1-1)*(9)=4\n"
QUERIES = [
    ("(3)+(4-4)*(2)=", ["3", "12"]),
    ("(1+1)+(0)*(5+5)=", ["2", "17"]),
    ("(6-1)+(9-9)*(1)=", ["5", "17", "0"]),
    ("Is it so? Answer:", [" True", " False"]),
    ("x", ["yz", "y"]),
]


@pytest.fixture(scope="module")
def tiny():
    cfg = OmegaConf.structured(ModelConfig(name="tiny", source="random"))
    return load_model(cfg, Hardware(torch.device("cpu"), torch.float32), cache_dir=".", seed=3)


def reference_loglik(model, tok, context: str, cand: str) -> float:
    ctx = tok(context).input_ids
    whole = tok(context + cand).input_ids
    logp = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


@pytest.mark.parametrize("batch_size", [1, 2, 8])
@pytest.mark.parametrize("reuse_prefix", [True, False])
@pytest.mark.parametrize("shared", [SHARED, ""])
def test_loglik_matches_per_candidate_forwards(tiny, batch_size, reuse_prefix, shared):
    model, tok = tiny
    reqs = [Request(shared + q, cands) for q, cands in QUERIES]
    scorer = Scorer(model, tok, batch_size=batch_size, reuse_prefix=reuse_prefix)
    with torch.inference_mode():
        for req, res in zip(reqs, scorer.score(reqs)):
            ref = [reference_loglik(model, tok, req.context, c) for c in req.candidates]
            assert res.loglik == pytest.approx(ref, abs=1e-4)
            assert len(res.first_logprob) == len(ref) and res.n_tokens == [len(c) for c in req.candidates]
    if reuse_prefix and shared:
        assert scorer.stats["prefix_tokens"] >= len(tok(SHARED).input_ids) - 1


def test_shared_prefix_is_computed_once(tiny):
    model, tok = tiny
    reqs = [Request(SHARED + q, cands) for q, cands in QUERIES[:3]]
    reuse, plain = Scorer(model, tok, batch_size=1), Scorer(model, tok, batch_size=1, reuse_prefix=False)
    reuse.score(reqs)
    plain.score(reqs)
    prefix = reuse.stats["prefix_tokens"]
    assert prefix > 0 and plain.stats["forward_tokens"] - reuse.stats["forward_tokens"] == prefix * (len(reqs) - 1)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_greedy_matches_hf_generate(tiny, batch_size):
    model, tok = tiny
    reqs = [Request(SHARED + q, (), max_new_tokens=n) for (q, _), n in zip(QUERIES, [3, 1, 4, 2, 5])]
    results = Scorer(model, tok, batch_size=batch_size).score(reqs)
    for req, res in zip(reqs, results):
        ids = torch.tensor([tok(req.context).input_ids])
        out = model.generate(ids, max_new_tokens=req.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        assert res.generated == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_generation_and_loglik_in_one_pass(tiny):
    model, tok = tiny
    both = Scorer(model, tok).score([Request(SHARED + q, c, 3) for q, c in QUERIES])
    only_ll = Scorer(model, tok).score([Request(SHARED + q, c, 0) for q, c in QUERIES])
    only_gen = Scorer(model, tok).score([Request(SHARED + q, (), 3) for q, _ in QUERIES])
    for a, b, c in zip(both, only_ll, only_gen):
        assert a.loglik == pytest.approx(b.loglik, abs=1e-5) and a.generated == c.generated
