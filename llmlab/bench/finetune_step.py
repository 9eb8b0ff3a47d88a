"""Training-step throughput: llmlab's fine-tuning step against HF `Trainer` (+ peft), same model, data and settings.

    python -m llmlab.bench --only finetune_step [--steps 3] [--warmup 1] [--batch 8] [--seq 128] [--threads 1]

For each mode (full, LoRA) each side runs in its own subprocess (so peak RSS is its own): load SmolLM2-135M (fp32)
from the converted cache, build the same seeded batches of random tokens (batch x seq, labels = inputs), AdamW at
the paper's settings (constant lr after warm-up, clip 1.0), then time `--steps` optimiser steps after `--warmup`
untimed ones. Reports tokens/s, the ratio llmlab / Trainer (target >= 1.0x) and peak RSS (target: no more).
Results go to `outputs/bench/finetune_step.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from llmlab.bench.machine import machine, machine_line
from llmlab.io import write_json
from llmlab.paths import REPO_ROOT

MODES = ("full", "lora")
SIDES = ("llmlab", "trainer")


def batches(n: int, batch: int, seq: int, vocab: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (batch, seq), generator=gen) for _ in range(n)]


def child(side: str, mode: str, steps: int, warmup: int, batch: int, seq: int, threads: int) -> dict:
    """Run one side in this process and return its timings."""
    import torch
    from omegaconf import OmegaConf

    from llmlab.config import LoraSpec, ModelConfig
    from llmlab.hardware import Hardware
    from llmlab.models.loading import load_model
    from llmlab.paths import conf_dir
    from llmlab.runners.finetune import add_lora, label_tokens, lm_logits
    from llmlab.train.step import StepSettings, optimizer_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(conf_dir() / "model/smollm2-135m.yaml"))
    cache = os.environ.get("LLMLAB_CACHE", "~/.cache/llmlab")
    model, tok = load_model(cfg, Hardware(torch.device("cpu"), torch.float32), cache, reuse=False)
    lr = 1e-4 if mode == "lora" else 1e-5
    if mode == "lora":
        model = add_lora(model, OmegaConf.structured(LoraSpec))
    model.train()
    data = batches(warmup + steps, batch, seq, len(tok))
    stamps = []
    if side == "llmlab":
        from transformers import get_constant_schedule_with_warmup

        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = get_constant_schedule_with_warmup(opt, 1)
        mask = torch.ones(batch, seq, dtype=torch.long)
        settings = StepSettings(device=torch.device("cpu"), clip=1.0)
        losses = []
        for i, ids in enumerate(data):
            micro = [((ids, mask, ids), label_tokens(ids))]
            loss, _ = optimizer_step(model, opt, sched, micro, lm_logits, settings, step=i + 1)
            losses.append(float(loss))
            stamps.append(time.perf_counter())
    else:
        from datasets import Dataset
        from transformers import Trainer, TrainerCallback, TrainingArguments

        rows = [{"input_ids": r.tolist(), "attention_mask": [1] * seq, "labels": r.tolist()} for b in data for r in b]

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                stamps.append(time.perf_counter())

        args = TrainingArguments(
            output_dir=os.path.join(REPO_ROOT, "outputs", "bench", "trainer_tmp"),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            max_steps=warmup + steps,
            learning_rate=lr,
            weight_decay=0.0,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=1,
            max_grad_norm=1.0,
            optim="adamw_torch",
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), callbacks=[Stamp()])
        trainer.train()
        losses = []
    timed = stamps[warmup - 1 :] if warmup else [stamps[0]] + stamps
    seconds = timed[-1] - timed[0]
    return {
        "side": side,
        "mode": mode,
        "steps": len(timed) - 1,
        "seconds": seconds,
        "tokens_per_s": (len(timed) - 1) * batch * seq / seconds,
        "losses": losses,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmlab.bench --only finetune_step")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.warmup, args.batch, args.seq, args.threads)))
        return
    results = {}
    for mode in args.modes.split(","):
        for side in SIDES:  # alternate sides per mode, each in a fresh process
            cmd = [
                sys.executable,
                "-m",
                "llmlab.bench.finetune_step",
                "--child",
                side,
                mode,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch",
                str(args.batch),
                "--seq",
                str(args.seq),
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
            if out.returncode != 0:
                raise SystemExit(f"{side}/{mode} failed:\n{out.stderr[-3000:]}")
            results[f"{mode}/{side}"] = json.loads(out.stdout.strip().splitlines()[-1])
    summary = {}
    for mode in args.modes.split(","):
        a, b = results[f"{mode}/llmlab"], results[f"{mode}/trainer"]
        ratio = a["tokens_per_s"] / b["tokens_per_s"]
        memory_pass = a["peak_rss_mb"] <= b["peak_rss_mb"]
        summary[mode] = {"ratio": ratio, "speed_pass": ratio >= 1.0, "memory_pass": memory_pass}
    result = {
        "benchmark": "finetune_step",
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
        "runs": results,
        "summary": summary,
    }
    print(markdown(result))
    write_json(REPO_ROOT / "outputs" / "bench" / "finetune_step.json", result)


def markdown(result: dict) -> str:
    """The benchmark's table from its JSON (printed by `main`, and a README table kind)."""
    st = result["settings"]
    lines = [
        f"Fine-tuning step, SmolLM2-135M fp32, batch {st['batch']} × {st['seq']}, {st['threads']} thread(s), "
        f"{st['steps']} timed steps after {st['warmup']}, each side in its own process",
        "",
        "| mode | llmlab tokens/s | Trainer tokens/s | ratio (target ≥ 1.0×) | llmlab peak RSS | Trainer peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for mode, summary in result["summary"].items():
        a, b = result["runs"][f"{mode}/llmlab"], result["runs"][f"{mode}/trainer"]
        lines.append(
            f"| {mode} | {a['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | {summary['ratio']:.2f}× | "
            f"{a['peak_rss_mb']:,.0f} MB | {b['peak_rss_mb']:,.0f} MB |"
        )
    lines += ["", machine_line(result)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
