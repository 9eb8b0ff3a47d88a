"""StableMask on the CPU: attention forward+backward vs plain causal SDPA, and pretraining tokens/s.

    python -m llmlab.bench.stablemask_cpu [--seqs 256,512,1024] [--reps 5] [--threads N]

(a) Attention, fp32, batch 2 x 8 heads x head dim 64, gamma = ALiBi slopes: median forward+backward time of plain
causal SDPA (the baseline), the StableMask SDPA sink path and the dense reference formula. Target: the sink path
within 1.3x of plain causal SDPA. (b) Pretraining step (forward, backward, AdamW) of the 71M-class shape (`lm-71m`:
L6, D512, 8 heads, SwiGLU 1536) with an 8k vocabulary, batch 4 x 128 tokens, softmax vs StableMask: tokens/s.
Results go to `outputs/bench/stablemask_cpu.json`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from llmlab.bench.machine import machine, machine_line
from llmlab.io import write_json
from llmlab.models.stablemask import alibi_slopes, stablemask_reference, stablemask_sdpa
from llmlab.paths import REPO_ROOT, conf_dir

TARGET = 1.3


def median_s(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fwd_bwd(fn, q, k, v, gamma, grad):
    return lambda: torch.autograd.grad(fn(q, k, v, gamma), (q, k, v), grad)


def attention(seqs: list[int], reps: int) -> list[dict]:
    impls = {
        "sdpa_causal": lambda q, k, v, g: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sdpa_sink": stablemask_sdpa,
        "dense_ref": stablemask_reference,
    }
    rows = []
    for s in seqs:
        gen = torch.Generator().manual_seed(s)
        q, k, v = (torch.randn(2, 8, s, 64, generator=gen, requires_grad=True) for _ in range(3))
        gamma, grad = alibi_slopes(8), torch.randn(2, 8, s, 64, generator=gen)
        row = {"seq": s}
        for name, fn in impls.items():
            row[name] = median_s(fwd_bwd(fn, q, k, v, gamma, grad), reps)
        row["sink_vs_sdpa"] = row["sdpa_sink"] / row["sdpa_causal"]
        row["dense_vs_sdpa"] = row["dense_ref"] / row["sdpa_causal"]
        rows.append(row)
    return rows


def train_step(model, opt, ids):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()

    return step


def pretrain_step(reps: int) -> dict:
    from llmlab.models.scratch import build_scratch_model

    base = OmegaConf.load(conf_dir() / "model" / "lm-71m.yaml")
    out = {}
    for kind in ("softmax", "stablemask"):
        cfg = OmegaConf.merge(base, {"lm": {"attention": kind}})
        torch.manual_seed(0)
        model = build_scratch_model(cfg, 8192, 128)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, 8192, (4, 129))
        seconds = median_s(train_step(model, opt, ids), reps)
        out[kind] = {
            "step_s": seconds,
            "tokens_per_s": 4 * 128 / seconds,
            "params": sum(p.numel() for p in model.parameters()),
        }
    out["stablemask_vs_softmax_tokens_per_s"] = out["stablemask"]["tokens_per_s"] / out["softmax"]["tokens_per_s"]
    return out


def markdown(result: dict) -> str:
    """The benchmark's tables and verdict from its JSON (printed by `main`, and a README table kind)."""
    rows, step = result["attention"], result["pretrain_step"]
    lines = [
        f"StableMask attention, CPU fp32, fwd+bwd, B=2 H=8 D=64, {result['threads']} thread(s), median s",
        "",
        "| seq | causal SDPA | StableMask SDPA sink path | dense formula | sink / SDPA | dense / SDPA |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seq']} | {r['sdpa_causal']:.4f} s | {r['sdpa_sink']:.4f} s | {r['dense_ref']:.4f} s | "
            f"{r['sink_vs_sdpa']:.2f}× | {r['dense_vs_sdpa']:.2f}× |"
        )
    worst = max(r["sink_vs_sdpa"] for r in rows)
    verdict = "met" if worst <= result["target"] else "missed"
    lines += [
        "",
        f"Sink path vs plain causal SDPA: worst {worst:.2f}× (target ≤ {result['target']}×: {verdict}). Pretraining "
        f"step, lm-71m shape ({step['softmax']['params'] / 1e6:.1f}M parameters with an 8k vocabulary), batch 4 × "
        f"128: softmax {step['softmax']['tokens_per_s']:.0f} tokens/s, StableMask "
        f"{step['stablemask']['tokens_per_s']:.0f} tokens/s ({step['stablemask_vs_softmax_tokens_per_s']:.2f}×). "
        + machine_line(result),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench.stablemask_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", default="256,512,1024")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args, _ = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = attention([int(s) for s in args.seqs.split(",")], args.reps)
    step = pretrain_step(max(2, args.reps // 2))
    result = {
        "benchmark": "stablemask_cpu",
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "attention": rows,
        "pretrain_step": step,
        "target": TARGET,
    }
    print(markdown(result))
    write_json(REPO_ROOT / "outputs" / "bench" / "stablemask_cpu.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
