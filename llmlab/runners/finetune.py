"""Causal-LM fine-tuning, full-parameter or LoRA: an explicit loop with gradient accumulation and exact resume.

The fine-tuning pool is the `train_ft` rows of the task(s), each a `ft_text` line, visited in a seeded order (a new
permutation per epoch). Every `save_every` steps a checkpoint (trainable weights, optimizer, scheduler, RNG states,
step) is written to `checkpoints/step-NNNNNN/` through a temporary directory and an atomic rename, so `resume=auto`
only ever sees complete checkpoints and continues bit-for-bit on CPU; one that cannot be read (truncated or foreign
files) is skipped, with a notice, for the one before it. A Ctrl-C or SIGTERM (`llmlab.interrupts`) ends the run after
the current step, checkpointed. The final weights go to `model/` (full fine-tuning: a loadable HF directory; LoRA: the
adapter).

Several processes (`hardware.nproc`, DDP or FSDP; `llmlab.distributed`): micro_batch_size x grad_accum stays the global
batch, each rank trains on its share of it and a micro-batch's loss is normalised by its global label-token count, so
the trajectory is the single-process one. Rank 0 alone writes checkpoints (full tensors, single-process layout) and
the final model; every rank loads a checkpoint when resuming.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from llmlab import distributed, interrupts
from llmlab.errors import LlmlabError
from llmlab.io import notice, write_json
from llmlab.progress import progress_bar
from llmlab.runners.context import RunContext

IGNORE = -100


def run(cfg: DictConfig, ctx: RunContext) -> dict:
    m = cfg.method
    # Master weights and optimizer state in fp32; on a GPU the forward/backward run under bf16 autocast.
    if ctx.hw.dtype == torch.float16:
        raise LlmlabError("fp16 fine-tuning is not supported (no loss scaling); use hardware.dtype=bfloat16")
    from transformers import get_constant_schedule_with_warmup  # here: pretrain imports this module, not transformers

    from llmlab.models.loading import load_model

    split = distributed.micro_split(m.micro_batch_size, m.grad_accum, ctx.hw.rank, ctx.hw.world_size)
    amp = ctx.hw.dtype if ctx.hw.device.type == "cuda" else None
    model, tok = load_model(
        cfg.model,
        dataclasses.replace(ctx.hw, dtype=torch.float32),
        cfg.cache_dir,
        cfg.hardware.attn_implementation,
        cfg.seed,
        reuse=False,
    )
    if m.peft == "lora":
        model = add_lora(model, m.lora)
    examples = encode(training_rows(cfg), tok, m.max_length, m.loss_on)
    trained = distributed.wrap(model, ctx.hw)  # DDP around `model`, or `model` sharded in place (FSDP)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=m.lr, weight_decay=m.weight_decay)
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
                    micro, counts = step_batches(examples, cfg.seed, step, m, split, tok.pad_token_id)
                    steady = False
                    loss_value, grad_norm, n = optimizer_step(
                        trained,
                        params,
                        opt,
                        sched,
                        micro,
                        m.clip,
                        ctx.hw.device,
                        amp,
                        counts=counts,
                        accum=m.grad_accum,
                        world=ctx.hw.world_size,
                    )
                    step, steady = step + 1, True
                    tokens += n
                    if step % m.log_every == 0:
                        metrics = {
                            "train/loss": loss_value,
                            "train/lr": sched.get_last_lr()[0],
                            "train/grad_norm": grad_norm,
                        }
                        ctx.run_dir.log_metrics(metrics, step=step)
                        ctx.tracker.log(metrics, step=step)
                    if step % m.save_every == 0 or step == m.max_steps:
                        save_checkpoint(ckpt_root, step, model, opt, sched, signature)
                        saved = step
                    bar.update(task, completed=step)
        except KeyboardInterrupt:
            if steady:
                save_interrupted(ckpt_root, step, saved, model, opt, sched, signature)
            raise
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


def optimizer_step(
    model,
    params,
    opt,
    sched,
    micro_batches,
    clip: float,
    device,
    amp: torch.dtype | None = None,
    counts: list[int] | None = None,
    accum: int | None = None,
    world: int = 1,
) -> tuple[float, float, int]:
    """One optimiser step over `micro_batches` (ids, mask, labels) with gradient accumulation and clipping, the
    forward/backward under autocast to `amp` if given. Several ranks: `micro_batches` is this rank's share, `counts`
    the label tokens of each whole global micro-batch, `accum` the global micro-batches per step, `world` the ranks
    (defaults: one process). Returns the mean micro-batch loss (over all ranks), the gradient norm before clipping and
    the number of label tokens this rank trained on."""
    opt.zero_grad(set_to_none=True)
    counts = counts or [label_tokens(labels) for _, _, labels in micro_batches]
    accum = accum or len(micro_batches)
    loss_sum, tokens = 0.0, 0
    for i, ((ids, mask, labels), count) in enumerate(zip(micro_batches, counts)):
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        # Shift the labels, not the logits (slicing batch x length x vocab logits would copy them), and keep no
        # reference to the logits, so they are freed before the backward pass.
        targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
        with distributed.grad_sync(model, i == len(micro_batches) - 1):  # synchronise on the last micro-step only
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            loss = (
                torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
                )
                / count
            )
            del logits
            (loss * world / accum).backward()  # DDP / FSDP average the ranks' gradients: x world makes it a sum
        loss_sum += loss.item()
        tokens += label_tokens(labels)
    loss_value = distributed.all_reduce_sum(loss_sum / accum)
    grad_norm = distributed.clip_grad_norm(params, clip)
    opt.step()
    sched.step()
    return loss_value, grad_norm, tokens


def label_tokens(labels) -> int:
    """Tokens the loss is computed on (the first position predicts nothing)."""
    return int((torch.as_tensor(labels)[..., 1:] != IGNORE).sum())


def step_batches(examples: list, seed: int, step: int, m, split: list[tuple[int, list[int]]], pad_id: int):
    """This rank's micro-batches of optimiser step `step` (the rows `split` gives it of each global micro-batch) and
    the label-token count of each whole global micro-batch."""
    micro, counts = [], []
    for j, rows in split:
        picked = sample_order(len(examples), seed, (step * m.grad_accum + j) * m.micro_batch_size, m.micro_batch_size)
        micro.append(collate([examples[picked[r]] for r in rows], pad_id))
        counts.append(sum(label_tokens(examples[i][1]) for i in picked))
    return micro, counts


def training_rows(cfg: DictConfig) -> list[dict]:
    """The `train_ft` rows of every task in `method.tasks` (or of `dataset.task`), in task order."""
    d = cfg.dataset
    if d.source.startswith("mre_"):  # MRE ablation rows (issue #7), per dataset.options.condition
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
        "faithful": cfg.dataset.faithful,
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


def save_checkpoint(root: Path, step: int, model, opt, sched, signature: dict) -> None:
    """Write everything needed to continue exactly into a temporary directory of this process's own, then publish it
    with one atomic rename. Several ranks: all call this (FSDP gathers the shards), rank 0 writes."""
    trainable = distributed.trainable_state(model)
    optimizer = distributed.optimizer_state(model, opt)
    if distributed.rank() != 0:
        return
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))  # unique: processes never share one
    try:
        save_file(trainable, tmp / "trainable.safetensors")
        np_state = np.random.get_state()
        torch.save(
            {
                "step": step,
                "optimizer": optimizer,
                "scheduler": sched.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "python": random.getstate(),
                    "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                },
            },
            tmp / "state.pt",
        )
        (tmp / "signature.json").write_text(json.dumps(signature, sort_keys=True))
        tmp.chmod(0o755)
        shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise  # else another process published this step first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only if something failed


def save_interrupted(root: Path, step: int, saved: int, model, opt, sched, signature: dict) -> None:
    """After a Ctrl-C / SIGTERM between optimiser steps: checkpoint `step` unless the newest checkpoint (of step
    `saved`) is that one or the weights are not finite. Not under FSDP: gathering the shards needs every rank, and the
    ranks may stop at different steps."""
    if step <= saved or distributed.is_fsdp(model):
        return
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return
    save_checkpoint(root, step, model, opt, sched, signature)
    if distributed.rank() == 0:
        notice(f"interrupted after step {step}: checkpointed it in {root}")


class _Unreadable(Exception):
    """A checkpoint file that is missing, truncated or foreign (the message: the file and the reason, one line)."""


def resume(root: Path, model, opt, sched, signature: dict) -> int:
    """Load the newest usable checkpoint under `root` (every rank loads it); its step, or 0 when there is none. An
    unreadable one is skipped with a notice, for the one before it; a changed config is refused."""
    ckpts = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
    for ckpt in ckpts:
        try:
            weights, state = read_checkpoint(ckpt, model, opt, sched, signature)
        except _Unreadable as e:
            notice(f"skipping checkpoint {ckpt}: {e}")
            continue
        distributed.load_trainable(model, weights)
        distributed.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        return state["step"]
    if ckpts:
        raise LlmlabError(
            f"cannot resume: none of the {len(ckpts)} checkpoint(s) in {root} can be read (see above); "
            "move them away or use method.resume=never"
        )
    return 0


def read_checkpoint(ckpt: Path, model, opt, sched, signature: dict) -> tuple[dict, dict]:
    """The trainable weights and the training state of `ckpt`, all read and checked against the model, optimiser and
    scheduler before any of it is applied. A changed config raises `LlmlabError`; a missing, truncated or foreign file
    `_Unreadable`."""
    saved = _read(ckpt / "signature.json", lambda p: _json_object(p.read_text()))
    changed = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
    if changed:
        raise LlmlabError(
            f"cannot resume from {ckpt}: the config changed {', '.join(changed)} "
            "(use a new run directory or method.resume=never)"
        )
    weights = _read(ckpt / "trainable.safetensors", lambda p: _check_weights(load_file(p), model))
    state = _read(ckpt / "state.pt", lambda p: _check_state(torch.load(p, weights_only=True), ckpt, opt, sched))
    return weights, state


def _read(path: Path, load):
    """`load(path)`, any failure of it as `_Unreadable`."""
    try:
        return load(path)
    except FileNotFoundError as e:
        raise _Unreadable(f"{path.name} is missing") from e
    except Exception as e:  # noqa: BLE001 - json, safetensors and torch each raise their own errors for bad bytes
        if "Weights only load failed" in str(e):
            raise _Unreadable(f"{path.name} holds objects other than tensors (unpickling them could run code)") from e
        lines = str(e).strip().splitlines()
        raise _Unreadable(f"{path.name}: {type(e).__name__}" + (f": {lines[0][:200]}" if lines else "")) from e


def _json_object(text: str) -> dict:
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _check_weights(weights: dict, model) -> dict:
    """`weights`, if they are the model's trainable parameters (the same names and shapes)."""
    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    if {n: tuple(t.shape) for n, t in weights.items()} != expected:
        raise ValueError("the tensors are not this model's trainable parameters")
    return weights


def _check_state(state: dict, ckpt: Path, opt, sched) -> dict:
    """`state` (of `state.pt`) with the step as an int and the numpy RNG state rebuilt, if every part has the form
    `resume` applies (else an error)."""
    step = int(state["step"])
    if f"step-{step:06d}" != ckpt.name:
        raise ValueError(f"it holds step {step}")
    sizes = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
    if sizes != [len(g["params"]) for g in opt.param_groups] or not isinstance(state["optimizer"]["state"], dict):
        raise ValueError("the optimizer state is not this model's")
    if not isinstance(state["scheduler"], dict) or set(sched.state_dict()) - set(state["scheduler"]):
        raise ValueError("the scheduler state is incomplete")
    name, keys, *rest = state["rng"]["numpy"]
    rng = {**state["rng"], "numpy": (name, np.array(keys, dtype=np.uint32), *rest)}
    torch.Generator().set_state(rng["torch"])  # each raises on a state of the wrong form
    random.Random().setstate(rng["python"])
    np.random.RandomState().set_state(rng["numpy"])
    return {**state, "step": step, "rng": rng}


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
