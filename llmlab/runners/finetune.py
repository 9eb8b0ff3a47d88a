"""Causal-LM fine-tuning, full-parameter or LoRA: an explicit loop with gradient accumulation and exact resume.

The fine-tuning pool is the `train_ft` rows of the task(s), each a `ft_text` line, visited in a seeded order (a new
permutation per epoch), one optimiser step (`llmlab.train.step`) at a time. Every `save_every` steps a checkpoint
(trainable weights, optimizer, scheduler, RNG states, step) is written to `checkpoints/step-NNNNNN/` atomically
(`llmlab.train.checkpoint`), so `resume=auto` only ever sees complete checkpoints and continues bit-for-bit on CPU; one
that cannot be read (truncated or foreign files) is skipped, with a notice, for the one before it. A Ctrl-C or SIGTERM
(`llmlab.interrupts`) ends the run after the current step, checkpointed. The final weights go to `model/` (full
fine-tuning: a loadable HF directory; LoRA: the adapter).

Several processes (`hardware.nproc`, DDP or FSDP; `llmlab.distributed`): micro_batch_size x grad_accum stays the global
batch, each rank trains on its share of it and a micro-batch's loss is normalised by its global label-token count, so
the trajectory is the single-process one. Rank 0 alone writes checkpoints (full tensors, single-process layout) and
the final model; every rank loads a checkpoint when resuming.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from llmlab import distributed, interrupts
from llmlab.config import FinetuneConfig
from llmlab.data.sources import family
from llmlab.errors import LlmlabError
from llmlab.io import write_json
from llmlab.progress import progress_bar
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult
from llmlab.train import speed
from llmlab.train.checkpoint import resume, save_checkpoint, save_interrupted
from llmlab.train.step import IGNORE, StepSettings, optimizer_step


@register_runner("finetune", schema=FinetuneConfig, objective=("final_loss", "minimize"))
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m = cfg.method
    # Master weights and optimizer state in fp32; on a GPU the forward/backward run under bf16 autocast.
    if ctx.hw.dtype == torch.float16:
        raise LlmlabError("fp16 fine-tuning is not supported (no loss scaling); use hardware.dtype=bfloat16")
    from transformers import get_constant_schedule_with_warmup  # here: importing transformers takes seconds

    from llmlab.models.loading import load_model

    split = distributed.micro_split(m.micro_batch_size, m.grad_accum, ctx.hw.rank, ctx.hw.world_size)
    amp = ctx.hw.dtype if ctx.hw.device.type == "cuda" else None
    compile_model = speed.compile_enabled(m.compile, ctx.hw.device)
    fused_ops = m.fused_ops and ctx.hw.device.type == "cuda"  # liger's kernels need a GPU: off on the CPU
    settings = StepSettings(
        device=ctx.hw.device,
        clip=m.clip,
        accum=m.grad_accum,
        world=ctx.hw.world_size,
        amp=amp,
        compile=compile_model,
        fused_ce=fused_ops,
    )
    model, tok = load_model(
        cfg.model,
        dataclasses.replace(ctx.hw, dtype=torch.float32),
        cfg.cache_dir,
        cfg.hardware.attn_implementation,
        cfg.seed,
        reuse=False,
    )
    if fused_ops:
        speed.apply_fused_ops(model)
    if m.peft == "lora":
        model = add_lora(model, m.lora)
    examples = encode(training_rows(cfg), tok, m.max_length, m.loss_on)
    # DDP around `model`, or `model` sharded in place (FSDP); compiled (method.compile); `model` is the plain module
    trained = speed.compiled(distributed.wrap(model, ctx.hw), compile_model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = speed.adamw(params, lr=m.lr, weight_decay=m.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, m.warmup_steps)
    ckpt_root = ctx.run_dir.file("checkpoints")
    signature = training_signature(cfg)
    step = resume(ckpt_root, model, opt, sched, signature) if m.resume == "auto" else 0
    ctx.run_dir.trim_metrics(step)  # the rows of steps after the checkpoint are logged again
    if step:
        ctx.run_dir.record(resumed_from_step=step)

    model.train()
    t0, tokens, loss_value = time.perf_counter(), 0, float("nan")
    saved, steady = step, True  # the newest checkpoint's step; no optimiser step half done
    with progress_bar(ctx.hw.is_main) as bar:
        task = bar.add_task(f"finetune {m.peft} {cfg.model.name}", total=m.max_steps, completed=step)
        try:
            while step < m.max_steps:
                with interrupts.deferred():  # Ctrl-C / SIGTERM: raised once this step is done (and checkpointed)
                    micro = step_batches(examples, cfg.seed, step, m, split, tok.pad_token_id)
                    steady = False
                    loss_value, grad_norm = optimizer_step(
                        trained, opt, sched, micro, lm_logits, settings, step=step + 1
                    )
                    step, steady = step + 1, True
                    tokens += sum(label_tokens(labels) for (_, _, labels), _ in micro)
                    if step % m.log_every == 0:
                        metrics = {
                            "train/loss": float(loss_value),  # read here only: no wait for the GPU in a step
                            "train/lr": sched.get_last_lr()[0],
                            "train/grad_norm": float(grad_norm),
                        }
                        ctx.run_dir.log_metrics(metrics, step=step)
                        ctx.tracker.log(metrics, step=step)
                    if step % m.save_every == 0 or step == m.max_steps:
                        save_checkpoint(ckpt_root, step, model, opt, sched, signature, m.keep_checkpoints)
                        saved = step
                    bar.update(task, completed=step)
        except KeyboardInterrupt:
            if steady:
                save_interrupted(ckpt_root, step, saved, model, opt, sched, signature, m.keep_checkpoints)
            raise
    loss_value = float(loss_value)  # waits for the device: the time below includes its last step
    seconds = time.perf_counter() - t0
    tokens = int(distributed.all_reduce_sum(tokens))
    state = distributed.full_state(model) if distributed.is_fsdp(model) else None  # every rank takes part
    if not ctx.hw.is_main:
        return {}
    save_final(ctx.run_dir.file("model"), model, tok, m.peft, state)
    results = {
        "runner": "finetune",
        "model": cfg.model.name,
        "peft": m.peft,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "steps": step,
        "final_loss": loss_value,
        "train_examples": len(examples),
        "trainable_params": sum(p.numel() for p in params),
        "timing": {"train_s": seconds, "label_tokens": tokens, "world_size": ctx.hw.world_size},
    }
    write_json(ctx.run_dir.file("results.json"), results)
    ctx.tracker.summary({"final_loss": loss_value})
    return results


def lm_logits(model, ids, mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM's logits on a micro-batch (ids, mask, labels) and its targets: the labels shifted left by one (the
    labels rather than the logits, whose batch x length x vocab slice would be a copy)."""
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits, targets


def label_tokens(labels) -> int:
    """Tokens the loss is computed on (the first position predicts nothing)."""
    return int((torch.as_tensor(labels)[..., 1:] != IGNORE).sum())


def step_batches(examples: list, seed: int, step: int, m, split: list[tuple[int, list[int]]], pad_id: int):
    """This rank's micro-batches of optimiser step `step` (the rows `split` gives it of each global micro-batch), each
    with the label-token count of the whole global micro-batch."""
    micro = []
    for j, rows in split:
        picked = sample_order(len(examples), seed, (step * m.grad_accum + j) * m.micro_batch_size, m.micro_batch_size)
        count = sum(label_tokens(examples[i][1]) for i in picked)
        micro.append((collate([examples[picked[r]] for r in rows], pad_id), count))
    return micro


def training_rows(cfg: DictConfig) -> list[dict]:
    """The `train_ft` rows of every task in `method.tasks` (or of `dataset.task`), in task order."""
    d = cfg.dataset
    if family(d.source) == "mre":  # MRE ablation rows (issue #7), per dataset.options.condition
        from llmlab.data.mre.ablation import training_rows as mre_rows

        return mre_rows(d, cfg.seed)
    from llmlab.data.implicit import load_implicit

    if d.source != "implicit":
        raise LlmlabError("method=finetune needs an implicit dataset (dataset=implicit/<task>)")
    tasks = list(cfg.method.tasks) or [d.task]
    rows = []
    for task in tasks:
        options = dict(d.options) if task == d.task else {}
        rows += load_implicit(
            task,
            cfg.seed,
            faithful=d.faithful,
            n_test=d.n_test,
            n_train_ft=d.n_train_ft,
            n_icl_pool=d.n_icl_pool,
            **options,
        )["train_ft"].to_list()
    return rows


def encode(rows: list[dict], tok, max_length: int, loss_on: str) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per line; `loss_on=answer` masks everything before the answer (the row's target)."""
    out = []
    for row in rows:
        text = row["ft_text"]
        ids = tok(text, add_special_tokens=True).input_ids[:max_length]
        labels = list(ids)
        if loss_on == "answer" and text.endswith(row["target"]):
            n_prompt = len(tok(text[: len(text) - len(row["target"])], add_special_tokens=True).input_ids)
            labels[:n_prompt] = [IGNORE] * min(n_prompt, len(labels))
        out.append((ids, labels))
    return out


def sample_order(n: int, seed: int, first: int, count: int) -> list[int]:
    """Examples at sample positions first..first+count-1 of an endless stream of seeded per-epoch permutations."""
    from llmlab.seeding import make_rng

    picked = []
    for pos in range(first, first + count):
        epoch, i = divmod(pos, n)
        perm = list(range(n))
        make_rng(seed, "finetune-order", epoch).shuffle(perm)
        picked.append(perm[i])
    return picked


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask and labels (padding ignored by the loss)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for r, (i, lab) in enumerate(batch):
        ids[r, : len(i)] = torch.tensor(i)
        mask[r, : len(i)] = 1
        labels[r, : len(lab)] = torch.tensor(lab)
    return ids, mask, labels


def add_lora(model, spec):
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in spec.target_modules if t not in names]
    if missing:
        raise LlmlabError(
            f"LoRA target module(s) {', '.join(missing)} not in the model; it has e.g. "
            f"{', '.join(sorted(n for n in names if n.endswith('proj'))[:8])}"
        )
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def training_signature(cfg: DictConfig) -> dict:
    """What must not change between a checkpoint and the run that resumes from it."""
    m = cfg.method
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "faithful": cfg.dataset.get("faithful", False),  # implicit datasets have it
        "seed": cfg.seed,
        "peft": m.peft,
        "tasks": list(m.tasks),
        "lr": m.lr,
        "micro_batch_size": m.micro_batch_size,
        "grad_accum": m.grad_accum,
        "max_length": m.max_length,
        "loss_on": m.loss_on,
        "n_train_ft": cfg.dataset.n_train_ft,
        "lora": OmegaConf.to_container(m.lora) if m.peft == "lora" else None,
    }


def save_final(path: Path, model, tok, peft: str, state: dict | None = None) -> None:
    """The final weights (a full model or the LoRA adapter), published atomically from a temporary directory of this
    process's own; `state`: the gathered full state dict of an FSDP-sharded model."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        model.save_pretrained(tmp, **({"state_dict": state} if state is not None else {}))
        if peft == "none":
            tok.save_pretrained(tmp)
        tmp.chmod(0o755)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only if something failed
