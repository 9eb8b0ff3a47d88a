"""StableMask attention on a CUDA GPU: check the Triton kernel, then time it against PyTorch SDPA.

    python -m llmlab.bench.stablemask_gpu [--dims 64,128] [--seqs 1024,2048,4096,8192] [--reps 20] [--warmup 5]

(a) Correctness, bf16: the Triton kernel's output and q/k/v gradients against the dense reference (fp32 maths on the
same bf16 inputs) and the SDPA sink path, including a length that is not a multiple of any block size.
(b) Timing, bf16, causal, gamma = ALiBi slopes: forward and forward+backward (CUDA events, warm-up, median) of the
Triton kernel, the same kernel without pseudo mass (horizon 1: plain causal, the sink's own cost), SDPA causal forced
onto the flash backend, the SDPA sink path and the dense reference (short lengths only). batch x heads shrinks with the
length so every shape holds the same number of tokens. TFLOP/s use causal attention FLOPs (forward 2*2*B*H*S^2*D/2,
backward 2.5x forward) next to a measured bf16 matmul peak. Targets: Triton forward <= 1.15x SDPA-flash, forward +
backward <= 1.4x. Results go to `outputs/bench/stablemask_gpu.json` (atomic write). Without a CUDA GPU the script
prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from llmlab.io import write_json
from llmlab.models.stablemask import alibi_slopes, stablemask_reference, stablemask_sdpa
from llmlab.paths import REPO_ROOT

HEADS = 16
TOKENS = 16 * 1024  # batch * seq per shape
FWD_TARGET, FWDBWD_TARGET = 1.15, 1.4
BF16_FWD_TOL, BF16_GRAD_TOL = 2e-2, 5e-2  # abs on O; max-abs error / max-abs reference on gradients


def time_ms(fn, warmup: int, reps: int) -> float:
    """Median milliseconds of `fn()` over `reps` CUDA-event-timed runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def matmul_peak_tflops(warmup: int, reps: int, n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, warmup, reps)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def flash_causal(q, k, v, gamma):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def implementations() -> dict:
    from llmlab.kernels.stablemask_triton import stablemask_attention

    return {
        "triton": stablemask_attention,
        "triton_nosink": lambda q, k, v, g: stablemask_attention(q, k, v, g, horizon=1),
        "sdpa_flash": flash_causal,
        "sdpa_sink": stablemask_sdpa,
        "dense_ref": stablemask_reference,
    }


def make_inputs(b: int, h: int, s: int, d: int, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3)]


def forward_backward(fn, q, k, v, gamma, grad):
    out = fn(q, k, v, gamma)
    return out, torch.autograd.grad(out, (q, k, v), grad)


def check(dims: list[int]) -> list[dict]:
    """bf16 agreement of the Triton kernel with the dense reference and the SDPA sink path."""
    impl = implementations()
    rows = []
    for d in dims:
        for s in (512, 1000):
            q, k, v = (t.requires_grad_() for t in make_inputs(2, 4, s, d, seed=1))
            gamma = alibi_slopes(4)
            grad = torch.randn_like(q)
            out, grads = forward_backward(impl["triton"], q, k, v, gamma, grad)
            row = {"head_dim": d, "seq": s}
            for name in ("dense_ref", "sdpa_sink"):
                ref, ref_grads = forward_backward(impl[name], q, k, v, gamma, grad)
                row[f"fwd_abs_vs_{name}"] = (out.float() - ref.float()).abs().max().item()
                row[f"grad_rel_vs_{name}"] = max(
                    ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                    for a, b in zip(grads, ref_grads)
                )
            row["ok"] = row["fwd_abs_vs_dense_ref"] <= BF16_FWD_TOL and row["grad_rel_vs_dense_ref"] <= BF16_GRAD_TOL
            rows.append(row)
            print(
                f"check d={d} S={s}: |O - dense| {row['fwd_abs_vs_dense_ref']:.2e}, grad rel "
                f"{row['grad_rel_vs_dense_ref']:.2e}; vs sdpa_sink {row['fwd_abs_vs_sdpa_sink']:.2e} / "
                f"{row['grad_rel_vs_sdpa_sink']:.2e} -> {'ok' if row['ok'] else 'FAIL'}",
                flush=True,
            )
    return rows


def time_impl(fn, args: tuple, grad: torch.Tensor, warmup: int, reps: int) -> tuple[float, float]:
    """Median forward (no autograd graph) and forward+backward milliseconds of `fn(*args)`."""

    def fwd():
        with torch.no_grad():
            fn(*args)

    def fwd_bwd():
        torch.autograd.grad(fn(*args), args[:3], grad)

    return time_ms(fwd, warmup, reps), time_ms(fwd_bwd, warmup, reps)


def bench(dims: list[int], seqs: list[int], warmup: int, reps: int, dense_max: int) -> list[dict]:
    rows = []
    for d in dims:
        for s in seqs:
            b = max(1, TOKENS // s)
            q, k, v = (t.requires_grad_() for t in make_inputs(b, HEADS, s, d))
            gamma, grad = alibi_slopes(HEADS), torch.randn_like(q)
            fwd_flops = 2 * 2 * b * HEADS * s * s * d / 2
            for name, fn in implementations().items():
                if name == "dense_ref" and s > dense_max:
                    continue
                t0 = time.perf_counter()
                try:
                    fwd_ms, fb_ms = time_impl(fn, (q, k, v, gamma), grad, warmup, reps)
                except torch.cuda.OutOfMemoryError:
                    print(f"{name} d={d} S={s}: out of memory, skipped", flush=True)
                    torch.cuda.empty_cache()
                    continue
                rows.append(
                    {
                        "impl": name,
                        "head_dim": d,
                        "seq": s,
                        "batch": b,
                        "heads": HEADS,
                        "fwd_ms": fwd_ms,
                        "fwd_bwd_ms": fb_ms,
                        "fwd_tflops": fwd_flops / (fwd_ms * 1e-3) / 1e12,
                        "fwd_bwd_tflops": 3.5 * fwd_flops / (fb_ms * 1e-3) / 1e12,
                        "wall_s": time.perf_counter() - t0,
                    }
                )
                print(f"{name:>13} d={d:<3} S={s:<5} fwd {fwd_ms:8.3f} ms  fwd+bwd {fb_ms:8.3f} ms", flush=True)
            torch.cuda.empty_cache()
    flash = {(r["head_dim"], r["seq"]): r for r in rows if r["impl"] == "sdpa_flash"}
    for r in rows:
        base = flash.get((r["head_dim"], r["seq"]))
        r["fwd_vs_flash"] = r["fwd_ms"] / base["fwd_ms"] if base else None
        r["fwd_bwd_vs_flash"] = r["fwd_bwd_ms"] / base["fwd_bwd_ms"] if base else None
    return rows


def print_table(rows: list[dict], peak: float) -> None:
    print(
        f"\nbf16 matmul peak (8192^3): {peak:.1f} TFLOP/s; ratios vs sdpa_flash (targets: triton fwd <= "
        f"{FWD_TARGET}x, fwd+bwd <= {FWDBWD_TARGET}x)"
    )
    head = f"{'impl':>13} {'D':>4} {'S':>5} {'BxH':>6} {'fwd ms':>9} {'x flash':>8} {'TFLOP/s':>8} "
    print(head + f"{'f+b ms':>9} {'x flash':>8} {'TFLOP/s':>8}")
    for r in rows:
        ratio = lambda x: f"{x:8.2f}" if x is not None else f"{'-':>8}"  # noqa: E731
        print(
            f"{r['impl']:>13} {r['head_dim']:>4} {r['seq']:>5} {r['batch'] * r['heads']:>6} {r['fwd_ms']:9.3f} "
            f"{ratio(r['fwd_vs_flash'])} {r['fwd_tflops']:8.1f} {r['fwd_bwd_ms']:9.3f} "
            f"{ratio(r['fwd_bwd_vs_flash'])} {r['fwd_bwd_tflops']:8.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench.stablemask_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="64,128", help="head dims")
    parser.add_argument("--seqs", default="1024,2048,4096,8192", help="sequence lengths")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--dense-max", type=int, default=2048, help="longest sequence for the dense reference")
    parser.add_argument("--skip-check", action="store_true")
    args, _ = parser.parse_known_args(argv)  # flags of other benchmarks pass through
    if not torch.cuda.is_available():
        print("stablemask_gpu: no CUDA GPU found; nothing to benchmark")
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("stablemask_gpu: unset TRITON_INTERPRET to benchmark the compiled kernel")
        return 2
    dims, seqs = [int(x) for x in args.dims.split(",")], [int(x) for x in args.seqs.split(",")]
    t0 = time.perf_counter()
    torch.backends.cuda.matmul.allow_tf32 = False
    checks = [] if args.skip_check else check(dims)
    peak = matmul_peak_tflops(args.warmup, args.reps)
    rows = bench(dims, seqs, args.warmup, args.reps, args.dense_max)
    print_table(rows, peak)
    triton_rows = [r for r in rows if r["impl"] == "triton" and r["fwd_vs_flash"] is not None]
    targets = {
        "fwd_max_ratio": max((r["fwd_vs_flash"] for r in triton_rows), default=math.nan),
        "fwd_bwd_max_ratio": max((r["fwd_bwd_vs_flash"] for r in triton_rows), default=math.nan),
    }
    targets["met"] = targets["fwd_max_ratio"] <= FWD_TARGET and targets["fwd_bwd_max_ratio"] <= FWDBWD_TARGET
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "dtype": "bfloat16",
        "matmul_peak_tflops": peak,
        "checks": checks,
        "checks_ok": all(c["ok"] for c in checks),
        "timings": rows,
        "targets": targets,
        "seconds": time.perf_counter() - t0,
    }
    path = REPO_ROOT / "outputs" / "bench" / "stablemask_gpu.json"
    write_json(path, result)
    print(
        f"\ntargets: triton fwd max {targets['fwd_max_ratio']:.2f}x, fwd+bwd max {targets['fwd_bwd_max_ratio']:.2f}x "
        f"-> {'met' if targets['met'] else 'NOT met'}; checks {'ok' if result['checks_ok'] else 'FAILED'}; {path}"
    )
    return 0 if result["checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
