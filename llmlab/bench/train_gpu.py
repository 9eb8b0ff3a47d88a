"""Training throughput on one GPU: tokens/s, TFLOP/s and MFU of the runners' own optimiser steps.

    python -m llmlab.bench.train_gpu [--cases lm71m_softmax,...] [--steps 10] [--warmup 3] [--path eager|fast]
                                     [--tiny --device cpu] [--out FILE]

Each case builds a model of a paper's shape with random weights, draws random tokens (throughput does not depend on
the data) and times `--steps` optimiser steps after `--warmup` untimed ones (the first compiles and autotunes the
Triton kernels), using exactly the optimiser step the runners call (`llmlab.train.step.optimizer_step`: bf16
autocast, fp32 master weights, AdamW, clipping) with `pretrain`'s forward for the from-scratch models and
`finetune`'s for the fine-tuned one.

Paths (`PATHS`): `eager` is the step as it ran before the speed levers (no compilation, torch's default AdamW, the
loss read after every step); `fast` compiles the model and the loss, uses fused AdamW and reads the losses only at
the end; `fast_liger` adds liger-kernel's fused RMSNorm/SwiGLU/RoPE and cross-entropy (Hugging Face models only).
The steps are timed as one window (`--steps` after `--warmup`), synchronised at its ends.

- `lm71m_*`: the StableMask paper's 71M decoder (L6, D512, 8 heads, SwiGLU 1536, RoPE, GPT-2 vocabulary 50,257),
  1024 tokens x 16 sequences per step; softmax/SDPA, StableMask through the SDPA sink path, StableMask Triton kernel.
- `lm160m_softmax`: its 160M decoder (L12, D768, 12 heads, SwiGLU 2048), 1024 x 16, softmax/SDPA.
- `rwkv169m_*`: RWKV-4 169M (L12, D768, vocabulary 50,277), 1024 x 8; Triton WKV kernel vs the chunked PyTorch form.
- `smollm2_*`: a Llama of SmolLM2-135M's shape (L30, D576, 9 heads / 3 KV heads, MLP 1536, tied 49,152 vocabulary;
  random weights, same FLOPs as the real model), 512 x 16 per step; full fine-tuning and LoRA r=16 on all projections.

FLOPs per token follow PaLM's convention (6 per matmul parameter + 12 L D S attention, causal half not discounted;
RWKV: 6 per matmul parameter + its recurrence); MFU is against a bf16 matmul peak measured in the same run
(8192^3). Results go to `outputs/bench/train_gpu.json` (or `--out`). Without CUDA (and without `--device cpu`) it
prints one line and exits 0; `--tiny --device cpu` runs every case at toy sizes as a smoke test of this script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, replace

import torch

from llmlab.config import LMArch, RWKVArch
from llmlab.io import write_json
from llmlab.paths import REPO_ROOT
from llmlab.train import speed
from llmlab.train.step import StepSettings, optimizer_step


@dataclass(frozen=True)
class Case:
    family: str  # lm | rwkv | llama
    arch: dict
    vocab: int
    seq: int
    batch: int
    peft: str = "none"


@dataclass(frozen=True)
class Path:
    compile: bool = False  # torch.compile of the model and the loss
    fused_adamw: bool = False
    sync: bool = True  # read the loss after every step (the step before the levers did)
    fused_ops: bool = False  # liger-kernel (Hugging Face models, CUDA)


PATHS = {
    "eager": Path(),
    "fast": Path(compile=True, fused_adamw=True, sync=False),
    "fast_liger": Path(compile=True, fused_adamw=True, sync=False, fused_ops=True),
}
LM71M = {"n_layer": 6, "d_model": 512, "n_head": 8, "ffn_hidden": 1536, "position": "rope", "max_seq_len": 4096}
LM160M = {**LM71M, "n_layer": 12, "d_model": 768, "n_head": 12, "ffn_hidden": 2048}
RWKV169M = {"n_layer": 12, "d_model": 768, "ctx_len": 1024}
SMOLLM2 = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
CASES = {
    "lm71m_softmax": Case("lm", {**LM71M, "attention": "softmax", "attn_impl": "sdpa"}, 50257, 1024, 16),
    "lm71m_stablemask_sdpa": Case("lm", {**LM71M, "attention": "stablemask", "attn_impl": "sdpa"}, 50257, 1024, 16),
    "lm71m_stablemask_triton": Case("lm", {**LM71M, "attention": "stablemask", "attn_impl": "triton"}, 50257, 1024, 16),
    "lm160m_softmax": Case("lm", {**LM160M, "attention": "softmax", "attn_impl": "sdpa"}, 50257, 1024, 16),
    "rwkv169m_triton": Case("rwkv", {**RWKV169M, "wkv_impl": "triton"}, 50277, 1024, 8),
    "rwkv169m_chunked": Case("rwkv", {**RWKV169M, "wkv_impl": "chunked"}, 50277, 1024, 8),
    "smollm2_full": Case("llama", SMOLLM2, 49152, 512, 16),
    "smollm2_lora": Case("llama", SMOLLM2, 49152, 512, 16, peft="lora"),
}
TINY = {
    "lm": {"n_layer": 2, "d_model": 64, "n_head": 4, "ffn_hidden": 128},
    "rwkv": {"n_layer": 2, "d_model": 64, "ctx_len": 64},
    "llama": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
}


def tiny(case: Case) -> Case:
    """The same case at toy size (CPU smoke test); Triton paths fall back to the PyTorch ones."""
    arch = {**case.arch, **TINY[case.family]}
    if arch.get("attn_impl") == "triton":
        arch["attn_impl"] = "sdpa"
    if arch.get("wkv_impl") == "triton":
        arch["wkv_impl"] = "chunked"
    return replace(case, arch=arch, vocab=256, seq=64, batch=2)


def build(case: Case, device: torch.device, fused_ops: bool = False):
    """(model, trainable params, FLOPs per token) for a case, on `device`, fp32 master weights; `fused_ops`: liger's
    kernels in a Hugging Face model."""
    torch.manual_seed(0)
    if case.family == "lm":
        from llmlab.models.lm import LM

        model = LM(LMArch(**case.arch), case.vocab, case.seq)
    elif case.family == "rwkv":
        from llmlab.models.rwkv import RWKV

        model = RWKV(RWKVArch(**case.arch), case.vocab, case.seq)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(vocab_size=case.vocab, attn_implementation="sdpa", **case.arch))
    model = model.to(device)
    if fused_ops:
        speed.apply_fused_ops(model)
    flops = model.flops_per_token(case.seq) if hasattr(model, "flops_per_token") else llama_flops(model, case.seq)
    if case.peft == "lora":
        from omegaconf import OmegaConf

        from llmlab.runners.finetune import add_lora

        spec = OmegaConf.create(
            {
                "r": 16,
                "alpha": 32,
                "dropout": 0.0,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            }
        )
        model = add_lora(model, spec)
        flops *= 2 / 3  # no weight gradients for the frozen matrices: forward + input gradients only
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad], flops


def llama_flops(model, seq: int) -> float:
    """6 per matmul parameter (the tied head counted once as the output projection) + 12 L D S attention."""
    cfg = model.config
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    if cfg.tie_word_embeddings:
        matmul += model.get_input_embeddings().weight.numel()
    return 6.0 * matmul + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq


def step_fn(case: Case, model, params, device: torch.device, amp, path: Path = PATHS["eager"]):
    """A closure running one optimiser step of the runner this case belongs to on fresh random tokens (the same
    tokens for every path), returning the loss as a 0-d tensor."""
    adamw = speed.adamw if path.fused_adamw else torch.optim.AdamW
    opt = adamw(params, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    gen = torch.Generator().manual_seed(1)
    settings = StepSettings(
        device=device,
        clip=1.0,
        amp=amp,
        max_grad_norm=None if case.family == "llama" else 1e9,  # as the runners: pretrain's watchdog on
        compile=path.compile,
        fused_ce=path.fused_ops,
    )
    trained = speed.compiled(model, path.compile)
    if case.family == "llama":
        from llmlab.runners.finetune import label_tokens, lm_logits

        def run():
            ids = torch.randint(0, case.vocab, (case.batch, case.seq), generator=gen)
            micro = [((ids, torch.ones_like(ids), ids.clone()), label_tokens(ids))]
            return optimizer_step(trained, opt, sched, micro, lm_logits, settings, step=1)[0]
    else:
        from llmlab.runners.pretrain import next_token_logits

        def run():
            blocks = torch.randint(0, case.vocab, (case.batch, case.seq + 1), generator=gen)
            micro = [((blocks,), blocks[:, 1:].numel())]
            return optimizer_step(trained, opt, sched, micro, next_token_logits, settings, step=1)[0]

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    name: str, case: Case, device: torch.device, warmup: int, steps: int, peak: float | None, path: str = "eager"
) -> dict:
    amp = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, params, flops = build(case, device, PATHS[path].fused_ops)
    run = step_fn(case, model, params, device, amp, PATHS[path])

    read = float if PATHS[path].sync else torch.Tensor.detach  # eager: the loss read back after every step
    seconds, losses = [], []
    for n in (warmup, steps):  # the first steps compile (and autotune the Triton kernels): not timed
        t = time.perf_counter()
        losses += [read(run()) for _ in range(n)]
        sync(device)
        seconds.append(time.perf_counter() - t)
    warm_s, step_s = seconds[0], seconds[1] / steps
    tokens = case.batch * case.seq
    row = {
        "case": name,
        "path": path,
        "family": case.family,
        "peft": case.peft,
        "arch": case.arch,
        "vocab": case.vocab,
        "seq": case.seq,
        "batch": case.batch,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params),
        "flops_per_token": flops,
        "warmup_s": warm_s,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "tflops": tokens / step_s * flops / 1e12,
        "losses": [float(x) for x in losses],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    row["mfu"] = row["tflops"] / peak if peak else None
    del model, params, run
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def matmul_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return 2 * n**3 / statistics.median(times) / 1e12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench.train_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--path", default="eager", choices=list(PATHS))
    parser.add_argument("--tiny", action="store_true", help="toy sizes (smoke test of this script)")
    parser.add_argument("--out", default=str(REPO_ROOT / "outputs" / "bench" / "train_gpu.json"))
    args, _ = parser.parse_known_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("train_gpu: no CUDA GPU found; nothing to benchmark")
        return 0
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"train_gpu: unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    peak = matmul_peak_tflops() if device.type == "cuda" else None
    rows = []
    for name in names:
        case = tiny(CASES[name]) if args.tiny else CASES[name]
        try:
            rows.append(measure(name, case, device, args.warmup, args.steps, peak, args.path))
        except Exception as e:  # one failing case (e.g. out of memory) must not lose the others' numbers
            print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            rows.append({"case": name, "error": f"{type(e).__name__}: {e}"})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        r = rows[-1]
        print(
            f"{name}: {r['tokens_per_s']:,.0f} tokens/s, {r['tflops']:.1f} TFLOP/s, step {r['step_s'] * 1e3:.1f} ms, "
            f"warm-up {r['warmup_s']:.1f} s, loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}",
            flush=True,
        )
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"\ntraining throughput, {device_name}, bf16 autocast + fp32 master weights; matmul peak "
        f"{peak or float('nan'):.0f} TFLOP/s"
    )
    print("| case | params | seq x batch | tokens/s | TFLOP/s | MFU | step ms | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | failed: {r['error'].splitlines()[0][:60]} | | | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(
            f"| {r['case']} | {r['params'] / 1e6:.1f}M | {r['seq']}x{r['batch']} | {r['tokens_per_s']:,.0f} | "
            f"{r['tflops']:.1f} | {mfu} | {r['step_s'] * 1e3:.1f} | {mem} |"
        )
    write_json(
        args.out,
        {
            "device": device_name,
            "torch": torch.__version__,
            "matmul_peak_tflops": peak,
            "tiny": args.tiny,
            "steps": args.steps,
            "path": args.path,
            "warmup": args.warmup,
            "rows": rows,
        },
    )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
