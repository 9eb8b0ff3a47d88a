"""DDP scaling on the CPU: N processes x 1 thread (gloo) against 1 process x N threads, the same global batch.

    python -m llmlab.bench --only ddp_scaling [--nproc 2] [--steps 12] [--warmup 4] [--micro 16] [--accum 2]

Both sides are real `llmlab method=pretrain` runs (`model=lm-tiny`, `dataset=corpus/pydoc`, byte tokenizer, block 128)
in a temporary directory: one with `hardware.threads=N`, one with `hardware.nproc=N hardware.threads=1` (torchrun
relaunch, DDP). Tokens/s is the median of the per-step training throughput logged after `--warmup` steps (start-up,
validation and checkpoints excluded). Also reported: the largest relative gap between the two loss curves (the same
global batch: it should be float32 noise). Results go to `outputs/bench/ddp_scaling.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from llmlab.io import write_json
from llmlab.paths import REPO_ROOT


def overrides(args) -> list[str]:
    """The pretraining run both sides make (only the hardware differs)."""
    return [
        "method=pretrain",
        f"model={args.model}",
        "dataset=corpus/pydoc",
        "logger=none",
        "hardware=cpu",
        "dataset.block_size=128",
        f"method.micro_batch_size={args.micro}",
        f"method.grad_accum={args.accum}",
        f"method.max_steps={args.steps}",
        "method.warmup_steps=2",
        "method.log_every=1",
        f"method.eval_every={args.steps}",
        f"method.save_every={args.steps}",
        "method.eval_blocks=8",
        "method.eval_lengths=[1]",
        "method.sink_metrics=false",
    ]


def run_side(args, name: str, nproc: int, threads: int, root: Path) -> dict:
    """One pretraining run through the CLI; its throughput and loss curve."""
    run_dir = root / name
    cmd = [
        sys.executable,
        "-m",
        "llmlab.cli",
        *overrides(args),
        f"hardware.nproc={nproc}",
        f"hardware.threads={threads}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    if out.returncode != 0:
        raise SystemExit(f"ddp_scaling: the {name} run failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/tokens_per_s" in r]
    timed = [r["perf/tokens_per_s"] for r in steps[args.warmup :]] or [r["perf/tokens_per_s"] for r in steps]
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "tokens_per_s": statistics.median(timed),
        "tokens_per_s_steps": timed,
        "losses": [r["train/loss"] for r in steps],
    }


def max_rel_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench --only ddp_scaling")
    parser.add_argument("--nproc", type=int, default=2, help="processes (DDP side) = threads (single side)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4, help="logged steps left out of the median")
    parser.add_argument("--micro", type=int, default=16, help="global micro-batch (blocks of 128 tokens)")
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--model", default="lm-tiny")
    args, _ = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="ddp_scaling-") as tmp:
        single = run_side(args, "single", 1, args.nproc, Path(tmp))
        ddp = run_side(args, "ddp", args.nproc, 1, Path(tmp))
    ratio = ddp["tokens_per_s"] / single["tokens_per_s"]
    gap = max_rel_gap(ddp["losses"], single["losses"])
    tokens = args.micro * args.accum * 128
    table = Table(
        title=f"pretraining {args.model}, global batch {args.micro} x {args.accum} x 128 = {tokens} tokens, "
        f"{args.steps} steps (median after {args.warmup})"
    )
    for col in ("side", "tokens/s", "ratio DDP / threads", "max loss gap"):
        table.add_column(col)
    table.add_row(f"1 process x {args.nproc} threads", f"{single['tokens_per_s']:.0f}", "", "")
    table.add_row(
        f"{args.nproc} processes x 1 thread (DDP, gloo)", f"{ddp['tokens_per_s']:.0f}", f"{ratio:.2f}x", f"{gap:.1e}"
    )
    Console().print(table)
    path = REPO_ROOT / "outputs" / "bench" / "ddp_scaling.json"
    write_json(
        path,
        {
            "benchmark": "ddp_scaling",
            "settings": vars(args),
            "cpu_count": os.cpu_count(),
            "runs": {"single": single, "ddp": ddp},
            "summary": {"ratio": ratio, "max_loss_gap": gap},
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
