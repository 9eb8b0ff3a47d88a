"""`make gpu-check`: the GPU test tier, the kernel benchmarks and the training paths eager vs fast, in one JSON.

    python -m llmlab.bench.gpu_check [--out FILE] [--steps 50] [--budget-s 400] [--tests-timeout 240] [--cpu-smoke]

1. `pytest tests/gpu` (the GPU tier) in a subprocess: its summary line, exit code and time.
2. The kernel benchmarks `stablemask_gpu` and `wkv` (their JSON, at reduced CPU sizes for `wkv`).
3. Training throughput (`llmlab.bench.train_gpu`, bf16 autocast, fp32 master weights) of lm-71m and lm-160m
   pretraining (seq 1024 x 16) and SmolLM2-135M-shape full fine-tuning and LoRA (512 x 16), each on the `eager` path
   (the step before the speed levers) and the `fast` one (compiled model and loss, fused AdamW, no read of the loss
   inside the step), and full fine-tuning also with liger-kernel (`fast_liger`); tokens/s, MFU against a bf16 matmul
   peak measured in the same run, peak memory, and the losses of the first `--steps` steps. Both paths see the same
   initial weights and the same tokens; a fast path matches when every step's loss is within `LOSS_RTOL` of the
   eager one.

The JSON goes to `experiments/gpu/<device>.json` (e.g. `nvidia-h100-80gb-hbm3.json`), rewritten after every section
so a run cut short keeps what it measured; sections not reached within `--budget-s` are marked skipped.
`--cpu-smoke` runs the same sections on the CPU at toy sizes (compilation with backend aot_eager, the tests all
skipped, no kernel benchmarks) in under a minute: a test of this script.

On a lent device without network (torch, triton, transformers and peft there; hydra-core 1.3.8, omegaconf 2.3.1,
antlr4-python3-runtime 4.9.3 and liger-kernel 0.8.5 not): download those wheels into `.whl/` (antlr4 has no binary
wheel: `pip wheel --no-deps`), list `.whl/` in `.git/info/exclude`, carry it, and run
`pip install --no-index --no-deps --target .site .whl/*.whl && PYTHONPATH=.site:$PWD python3 -m
llmlab.bench.gpu_check --out $OUT/gpu-check.json --budget-s 330 --tests-timeout 180`; commit the JSON under
`experiments/gpu/`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
import time

import torch

from llmlab.bench import train_gpu
from llmlab.io import write_json
from llmlab.paths import REPO_ROOT
from llmlab.train import speed

LOSS_RTOL = 1e-2  # bf16 autocast: compiled kernels round differently from eager ones; |fast - eager| <= 1% per step
TRAIN = [  # (case, path), in order of importance: what the budget cuts comes last
    ("lm160m_softmax", "eager"),
    ("lm160m_softmax", "fast"),
    ("lm71m_softmax", "eager"),
    ("lm71m_softmax", "fast"),
    ("smollm2_full", "eager"),
    ("smollm2_full", "fast"),
    ("smollm2_lora", "eager"),
    ("smollm2_lora", "fast"),
    ("smollm2_full", "fast_liger"),
]
WARMUP = 10  # of the --steps: untimed (compilation, autotuning)
KERNEL_BENCHES = {"stablemask_gpu": [], "wkv": ["--seqs", "256", "--channels", "256", "--contexts", "128,1024"]}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_tests(timeout: float) -> dict:
    """The GPU tier in a subprocess (it must import Triton compiled): summary line, exit code, seconds."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout:.0f} s", "seconds": time.perf_counter() - t}
    lines = proc.stdout.strip().splitlines()
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return {
        "returncode": proc.returncode,
        "summary": lines[-1] if lines else proc.stderr.strip()[-300:],
        "failures": failures,
        "seconds": time.perf_counter() - t,
    }


def run_kernel_benches() -> dict:
    """The Triton kernel benchmarks, each its own JSON (outputs/bench/<name>.json) read back."""
    out = {}
    for name, args in KERNEL_BENCHES.items():
        t = time.perf_counter()
        try:
            code = importlib.import_module(f"llmlab.bench.{name}").main(args)
            result = json.loads((REPO_ROOT / "outputs" / "bench" / f"{name}.json").read_text())
            out[name] = {"returncode": code, "seconds": time.perf_counter() - t, "result": result}
        except Exception as e:  # one failing benchmark must not lose the rest
            out[name] = {"error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t}
    return out


def compare(eager: dict, fast: dict) -> dict:
    """The fast path against the eager one: loss agreement per step and the speed-up."""
    a, b = eager["losses"], fast["losses"]
    worst = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))
    return {
        "path": fast["path"],
        "steps": len(a),
        "max_rel_loss_diff": worst,
        "loss_rtol": LOSS_RTOL,
        "losses_match": len(a) == len(b) and worst <= LOSS_RTOL,
        "speedup": fast["tokens_per_s"] / eager["tokens_per_s"],
    }


def train_section(device: torch.device, steps: int, peak: float | None, tiny: bool, deadline: float) -> dict:
    rows = {}
    for case, path in TRAIN:
        key = f"{case}/{path}"
        if time.perf_counter() > deadline:
            rows[key] = {"case": case, "path": path, "skipped": "time budget spent"}
            continue
        if train_gpu.PATHS[path].fused_ops and device.type != "cuda":
            rows[key] = {"case": case, "path": path, "skipped": "liger-kernel needs CUDA"}
            continue
        spec = train_gpu.tiny(train_gpu.CASES[case]) if tiny else train_gpu.CASES[case]
        warmup = min(WARMUP, steps // 2)
        try:
            rows[key] = train_gpu.measure(case, spec, device, warmup, steps - warmup, peak, path)
        except Exception as e:  # e.g. out of memory: the other rows still count
            rows[key] = {"case": case, "path": path, "error": f"{type(e).__name__}: {str(e)[:2000]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        r = rows[key]
        if "error" not in r:
            mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] else ""
            print(f"{key}: {r['tokens_per_s']:,.0f} tokens/s{mfu}, warm-up {r['warmup_s']:.0f} s", flush=True)
        else:
            print(f"{key}: {r['error'].splitlines()[0]}", flush=True)
    comparisons = {}
    for key, row in rows.items():
        case, path = key.split("/")
        eager = rows.get(f"{case}/eager", {})
        if path != "eager" and "losses" in row and "losses" in eager:
            comparisons[key] = compare(eager, row)
    return {"rows": list(rows.values()), "comparisons": comparisons}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="default: experiments/gpu/<device>.json")
    parser.add_argument("--steps", type=int, default=50, help="optimiser steps per training path")
    parser.add_argument("--budget-s", type=float, default=400.0, help="no new training path after this many seconds")
    parser.add_argument("--tests-timeout", type=float, default=240.0, help="seconds for pytest tests/gpu")
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU: a test of this script")
    args, _ = parser.parse_known_args(argv)
    t0 = time.perf_counter()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU found; run with --cpu-smoke to test the script", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.cpu_smoke:
        speed.BACKEND = "aot_eager"  # no C++ code generation on the CPU
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu-smoke"
    out = args.out or str(REPO_ROOT / "experiments" / "gpu" / f"{slug(name)}.json")
    result = {
        "device": name,
        "torch": torch.__version__,
        "triton": version("triton"),
        "liger_kernel": version("liger-kernel"),
        "cpu_smoke": args.cpu_smoke,
        "steps": args.steps,
        "dtype": "bfloat16" if device.type == "cuda" else "float32",
        "matmul_peak_tflops": train_gpu.matmul_peak_tflops() if device.type == "cuda" else None,
        "tests": None,
        "kernels": None,
        "train": None,
        "seconds": None,
    }

    def save(section: str, value) -> None:
        result[section], result["seconds"] = value, time.perf_counter() - t0
        write_json(out, result)

    save("tests", run_tests(args.tests_timeout))
    print(f"tests/gpu: {result['tests']['summary']}", flush=True)
    save("kernels", run_kernel_benches() if device.type == "cuda" else {"skipped": "no CUDA GPU"})
    deadline = t0 + args.budget_s
    save("train", train_section(device, args.steps, result["matmul_peak_tflops"], args.cpu_smoke, deadline))
    for key, c in result["train"]["comparisons"].items():
        verdict = "match" if c["losses_match"] else "DIFFER"
        print(f"{key}: {c['speedup']:.2f}x eager, losses {verdict} (max rel {c['max_rel_loss_diff']:.1e})")
    print(f"gpu_check: {out} ({result['seconds']:.0f} s)")
    tests_ok = result["tests"]["returncode"] == 0
    matched = all(c["losses_match"] for c in result["train"]["comparisons"].values())
    errors = any("error" in r for r in result["train"]["rows"])
    return 0 if tests_ok and matched and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
