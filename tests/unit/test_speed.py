"""The training speed levers (`llmlab.train.speed`): off or unchanged on the CPU, compiled models matching eager ones
(the Triton kernels as deliberate graph breaks), and resumable across a change of lever.

torch.compile runs with backend aot_eager here (Dynamo's graph capture and AOTAutograd's joint forward/backward
graph, no C++ code generation): inductor's CPU code generation takes minutes on this machine's two busy cores. The
inductor path itself is exercised by `make gpu-check` on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from llmlab.fingerprint import changed_keys
from llmlab.train import speed
from llmlab.train.step import StepSettings, optimizer_step
from tests.helpers import compose
from tests.unit.test_stablemask_attention import needs_triton

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
TOL = 1e-5  # compiled vs eager, fp32: logits and gradients, relative to their largest magnitude


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(speed, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_is_on_for_cuda_only_unless_set():
    assert (speed.compile_enabled(None, CUDA), speed.compile_enabled(None, CPU)) == (True, False)
    assert (speed.compile_enabled(False, CUDA), speed.compile_enabled(True, CPU)) == (False, True)
    model = torch.nn.Linear(2, 2)
    assert speed.compiled(model, False) is model and speed.compiled(model, True) is not model


def test_adamw_is_unchanged_on_the_cpu_and_loads_a_fused_checkpoint_unfused():
    model = torch.nn.Linear(3, 2)
    opt = speed.adamw([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=0.1)
    assert [g["fused"] for g in opt.param_groups] == [None, None]  # torch's default: as before this lever
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    for g in state["param_groups"]:
        g["fused"] = True  # as written on a GPU
    opt.load_state_dict(state)
    assert [g["fused"] for g in opt.param_groups] == [None, None]
    assert opt.state_dict()["state"][0]["exp_avg"].equal(state["state"][0]["exp_avg"])


def test_a_run_may_resume_with_another_compile_or_fused_ops_setting():
    cfg = OmegaConf.to_container(compose(["method=finetune", "model=tiny-random"]), resolve=False)
    cfg.pop("hydra")
    other = {**cfg, "method": {**cfg["method"], "compile": True, "fused_ops": True}}
    assert cfg["method"]["compile"] is None and changed_keys(cfg, other) == []
    assert changed_keys(cfg, {**cfg, "method": {**cfg["method"], "lr": 1.0}}) == ["method.lr"]  # still checked


def grads_of(call, model, ids):
    """`call(ids)`'s logits and the gradients it leaves on `model`'s parameters."""
    model.zero_grad(set_to_none=True)
    logits = call(ids)
    logits.float().square().mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= TOL * max(b.abs().max().item(), 1e-12)


@needs_triton
@pytest.mark.parametrize(
    "overrides",
    [
        ["model=lm-tiny", "model.lm.attention=stablemask", "model.lm.attn_impl=triton"],
        ["model=rwkv4-tiny", "model.rwkv.wkv_impl=triton"],
    ],
    ids=["lm_stablemask_triton", "rwkv_wkv_triton"],
)
def test_compiled_model_with_a_triton_kernel_matches_eager(aot_eager, overrides):
    from llmlab.models.scratch import build_scratch_model

    cfg = compose(["method=pretrain", *overrides]).model
    torch.manual_seed(0)
    model = build_scratch_model(cfg, 64, train_len=32).train()
    ids = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    eager_logits, eager_grads = grads_of(model, model, ids)
    compiled_logits, compiled_grads = grads_of(speed.compiled(model, True), model, ids)
    assert close(compiled_logits, eager_logits)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) == len(list(model.parameters()))
    assert all(close(compiled_grads[n], eager_grads[n]) for n in eager_grads)


def test_compiled_step_follows_the_eager_one(aot_eager):
    blocks = torch.randint(0, 16, (4, 9), generator=torch.Generator().manual_seed(0))

    def run(compiled: bool) -> list[float]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
        opt = speed.adamw(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        settings = StepSettings(device=CPU, clip=1.0, max_grad_norm=1e4, compile=compiled)
        trained = speed.compiled(model, compiled)
        out = []
        for step in range(3):
            out += map(float, optimizer_step(trained, opt, sched, [((blocks,), 32)], next_tokens, settings, step=step))
        return out

    assert run(True) == pytest.approx(run(False), rel=1e-5)


def next_tokens(model, blocks):
    return model(blocks[:, :-1]), blocks[:, 1:]


@needs_triton
def test_fused_ops_patch_a_llama_in_place_and_the_fused_loss_matches(monkeypatch):
    """Liger's RMSNorm does not run under Triton's interpreter, so the patched model's outputs are compared on a GPU
    (tests/gpu); here: what is patched, what is kept, and liger's cross-entropy (interpreted) against torch's."""
    pytest.importorskip("liger_kernel")
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    from llmlab.train.step import cross_entropy_sum, fused_cross_entropy_sum

    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):  # liger swaps these process-wide: restored after
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    plain = LlamaForCausalLM(config)
    fused = LlamaForCausalLM(config)
    speed.apply_fused_ops(fused)
    assert "forward" in vars(fused.model.norm) and "forward" not in vars(plain.model.norm)
    assert fused.model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"
    assert fused.state_dict().keys() == plain.state_dict().keys()
    logits = torch.randn(2, 12, 64)
    targets = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    targets[0, :3] = -100
    expected = cross_entropy_sum(logits, targets).item()
    assert fused_cross_entropy_sum(logits.clone(), targets).item() == pytest.approx(expected, rel=1e-6)
