"""`llmlab plan` (llmlab.memory_plan): parameter counts equal the built models', the activation formula matches what
autograd saves in a real forward, one plan checked by hand, and the DDP / FSDP verdict."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmlab.memory_plan import GIB, Arch, Workload, arch_of, components, fsdp_components, render, totals, verdict
from tests.helpers import compose

SHRINK = [
    "model.source=shape",
    "model.shape.num_hidden_layers=2",
    "model.shape.hidden_size=64",
    "model.shape.intermediate_size=96",
    "model.shape.num_attention_heads=4",
    "model.shape.vocab_size=300",
]
SHAPES = {  # one per architecture family and embedding layout
    "qwen2_tied": ["model=qwen1.5-0.5b", *SHRINK, "model.shape.num_key_value_heads=4"],
    "qwen2_untied": ["model=qwen1.5-7b", *SHRINK, "model.shape.num_key_value_heads=2"],
    "llama_gqa": ["model=llama3.1-8b", *SHRINK, "model.shape.num_key_value_heads=2"],
}
LM = ["model=lm-tiny", "method=pretrain", "dataset=corpus/pydoc", "model.lm.n_layer=2", "model.lm.d_model=64"]
CPU_FP32 = ("cpu", torch.float32)


def build(overrides: list[str]):
    from llmlab.hardware import Hardware
    from llmlab.models.loading import load_model

    cfg = compose(["hardware=cpu", *overrides])
    model, tok = load_model(cfg.model, Hardware(torch.device("cpu"), torch.float32), "/nonexistent", reuse=False)
    return cfg, model, tok


def build_lm(cfg):
    from llmlab.models.scratch import build_scratch_model

    return build_scratch_model(cfg.model, arch_of(cfg).vocab, train_len=cfg.dataset.block_size)


@pytest.mark.parametrize("overrides", SHAPES.values(), ids=SHAPES.keys())
def test_planned_parameters_equal_the_built_shape_models(overrides):
    cfg, model, _ = build(overrides)
    assert arch_of(cfg).params() == sum(p.numel() for p in model.parameters())


def test_planned_parameters_equal_the_built_lm():
    cfg = compose(LM)
    assert arch_of(cfg).params() == sum(p.numel() for p in build_lm(cfg).parameters())


def test_planned_lora_parameters_equal_peft_trainable_ones():
    from llmlab.runners.finetune import add_lora

    cfg, model, _ = build([*SHAPES["llama_gqa"], "method=finetune", "method.peft=lora", "method.lora.r=4"])
    model = add_lora(model, cfg.method.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert arch_of(cfg).lora_params(list(cfg.method.lora.target_modules), 4) == trainable


# the hub models' published sizes: the transcribed shapes give them
PUBLISHED = {
    "qwen1.5-0.5b": 0.464e9,
    "qwen1.5-1.8b": 1.837e9,
    "qwen1.5-4b": 3.950e9,
    "qwen1.5-7b": 7.721e9,
    "llama3.1-8b": 8.030e9,
    "llama3.1-70b": 70.554e9,
}


@pytest.mark.parametrize("model", PUBLISHED)
def test_the_transcribed_shapes_have_the_published_parameter_counts(model):
    assert arch_of(compose([f"model={model}"])).params() == pytest.approx(PUBLISHED[model], rel=1e-3)


def saved_bytes(model, forward, amp: bool) -> int:
    """Bytes of the tensors autograd saves for the backward in `forward()` (each storage once; weights excluded)."""
    weights = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in weights:
            seen.setdefault(t.data_ptr(), t.untyped_storage().nbytes())
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        forward()
    return sum(seen.values())


@pytest.mark.parametrize("amp", [True, False], ids=["bf16_autocast", "fp32"])
@pytest.mark.parametrize("peft", ["none", "lora"])
def test_activation_formula_matches_what_a_shape_models_forward_saves(amp, peft):
    """Activations + autocast weight copies of the plan against the saved tensors of a padded micro-batch (the lm
    head's logits are the loss's part, left out of both)."""
    from llmlab.runners.finetune import add_lora

    overrides = [*SHAPES["llama_gqa"], "method=finetune", f"method.peft={peft}", "method.lora.r=4"]
    cfg, model, _ = build([*overrides, "method.micro_batch_size=2", "method.max_length=48"])
    if peft == "lora":
        model = add_lora(model, cfg.method.lora)
    model.train()
    ids = torch.randint(3, 300, (2, 48), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 40:] = 0
    measured = saved_bytes(model, lambda: model(input_ids=ids, attention_mask=mask, use_cache=False), amp)
    w = workload_of(cfg, amp)
    parts = components(arch_of(cfg), w)
    assert parts["activations"] + parts["autocast weight copies"] == pytest.approx(measured, rel=0.03)


@pytest.mark.parametrize("amp", [True, False], ids=["bf16_autocast", "fp32"])
def test_activation_formula_matches_what_the_lms_forward_saves(amp):
    cfg = compose([*LM, "method.micro_batch_size=2", "dataset.block_size=64"])
    model = build_lm(cfg).train()
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    measured = saved_bytes(model, lambda: model(ids), amp)
    parts = components(arch_of(cfg), workload_of(cfg, amp))
    assert parts["activations"] + parts["autocast weight copies"] == pytest.approx(measured, rel=0.03)


def workload_of(cfg, amp: bool) -> Workload:
    from llmlab.memory_plan import workload

    return dataclasses.replace(workload(cfg, 1), amp=amp)


def test_one_plan_by_hand():
    """Two Qwen2-style layers (h 64, f 128, 4 heads, 2 KV heads, V 1000, untied), 2 padded rows of 10 tokens, bf16."""
    a = Arch("hf", vocab=1000, hidden=64, ffn=128, layers=2, heads=4, kv_heads=2, qkv_bias=True)
    # a block: q 64x64 + k, v 64x32 each + o 64x64 + 3 x 64x128 = 36864 weights, + 128 biases + 2 x 64 norms
    assert a.params() == 2 * (36864 + 128 + 128) + 2 * 1000 * 64 + 64 == 202304
    w = Workload(micro_batch=2, seq=10, amp=True, padded=True, lora=None, gpus=1, label="finetune (full)")
    per_token_layer = 34 * 64 + 8 * 128 + 4 * 4 + 8  # 3224
    assert components(a, w) == {
        "weights": 4 * 202304,
        "gradients": 4 * 202304,
        "optimizer states": 8 * 202304,
        "autocast weight copies": 2 * (2 * 36864 + 1000 * 64),
        "activations": 20 * (2 * per_token_layer + 11 * 64 + 12) + 2 * 10**2 * 2 * 2,  # + the padding masks
        "logits and loss": 12 * 20 * 1000,
    }
    fsdp = fsdp_components(a, dataclasses.replace(w, gpus=4), 4)
    assert fsdp["weights"] == 202304 and fsdp["FSDP gathered params"] == 8 * (2 * 1000 * 64 + 64) + 8 * 37120


def test_lora_trains_only_the_adapters():
    a = Arch("hf", vocab=1000, hidden=64, ffn=128, layers=2, heads=4, kv_heads=2)
    w = Workload(2, 10, True, True, (["q_proj", "down_proj"], 8), 1, "finetune (LoRA)")
    trained = 2 * 8 * ((64 + 64) + (128 + 64))
    parts = components(a, w)
    assert parts["gradients"] == 4 * trained and parts["optimizer states"] == 8 * trained
    assert parts["weights"] == 4 * a.params()


def test_fsdp_is_advised_when_ddp_does_not_fit():
    cfg = compose(["model=qwen1.5-7b", "method=finetune", "hardware=multi_gpu", "hardware.nproc=8"])
    a, gpus = arch_of(cfg), 8
    from llmlab.memory_plan import workload

    w = workload(cfg, gpus)
    ddp, fsdp = totals(a, w, gpus)
    assert fsdp < 0.9 * 80 * GIB < ddp
    assert verdict(a, w, 80 * GIB).startswith("needs FSDP (hardware.strategy=fsdp)")
    assert verdict(a, w, 200 * GIB).startswith("fits:")  # DDP fits a bigger GPU
    one = dataclasses.replace(w, gpus=1)
    assert "FSDP over 3 GPUs (hardware=multi_gpu hardware.nproc=3 hardware.strategy=fsdp)" in verdict(a, one, 80 * GIB)


def test_the_papers_finetuning_config_prints_a_plan():
    text = render(compose(["model=qwen1.5-7b", "method=finetune", "hardware=gpu"]), 80, 1)
    assert "finetune (full) · model qwen1.5-7b (qwen2, 7.72B parameters) · 1 GPU x 80 GiB" in text
    assert "optimizer states" in text and "does not fit on 1 GPU" in text


def test_a_pretraining_plan_fits_one_gpu():
    text = render(compose(["model=lm-160m", "method=pretrain", "dataset=corpus/pydoc", "hardware=gpu"]), 80, 1)
    assert "pretrain · model lm-160m (lm, " in text and "\n  fits: " in text


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--gpu-memory-gb", "lots", "method=finetune"], "--gpu-memory-gb takes a number of GiB, got 'lots'"),
        (["--gpu-memory-gb=0", "method=finetune"], "--gpu-memory-gb must be > 0"),
        (["--fast", "method=finetune"], "unknown option --fast"),
        (["model=qwen1.5-7b", "method=icl"], "llmlab plan covers method=finetune (full, LoRA) and method=pretrain"),
        (["method=finetune"], "model 'smollm2-135m' has no shape"),
        (["model=qwen1.5-7b", "method=finetune", "method.peft=loraa"], "method.peft must be one of none, lora"),
        (["model=qwen1.5-7bb", "method=finetune"], "qwen1.5-7b"),
        (["model=qwen1.5-7b", "method=finetune", "hardware.dtype=fp16"], "does not train in fp16"),
    ],
)
def test_plan_refuses_bad_input_in_one_line(args, needle, capsys):
    from llmlab.memory_plan import main

    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    assert info.value.code == 2 and out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith("llmlab: error: ") and needle in out.err, out.err
