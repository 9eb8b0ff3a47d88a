"""Pretraining from scratch on a text corpus: an explicit loop with gradient accumulation, a watchdog and exact resume.

The corpus (`llmlab.data.corpus`) gives packed blocks; step s, micro-batch j reads the blocks at positions
(s * grad_accum + j) * micro_batch_size onwards of a seeded per-epoch order, so a resumed run sees the same data.
AdamW (fp32 master weights; bf16 autocast on a GPU), linear warm-up then cosine decay to lr * lr_final_ratio,
clipping. The watchdog stops the run with a one-line error when the loss or the gradient norm is NaN/inf or the norm
exceeds `max_grad_norm`, before the optimiser step (`llmlab.train.step`), and refuses to checkpoint non-finite
weights: checkpoints on disk are always complete and healthy (`llmlab.train.checkpoint`: written atomically, one that
cannot be read is skipped on resume). A Ctrl-C or SIGTERM ends the run after the current step, checkpointed. Logged:
loss, lr, grad norm, tokens/s, achieved TFLOP/s (FLOPs = `model.flops_per_token`) and MFU when `method.peak_tflops` is
set; validation loss, perplexity and bits per byte every `eval_every` steps. At the end: `model/` (safetensors +
config.json), the extrapolation table and attention-sink statistics, and `results.json`.

Several processes (`hardware.nproc`, DDP or FSDP; `llmlab.distributed`): micro_batch_size x grad_accum stays the global
batch and each rank trains on its share of every step, so N processes follow the single-process trajectory; the logged
loss is the mean over ranks, tokens/s counts all ranks. Every rank validates (the same blocks); rank 0 alone writes
checkpoints and runs the final evaluations (FSDP: on the gathered weights).
"""

from __future__ import annotations

import math
import time

import torch
from omegaconf import DictConfig, OmegaConf

from llmlab import distributed, interrupts
from llmlab.analysis.lm_metrics import extrapolation, loss_row, mean_loss, sink_metrics
from llmlab.config import PretrainConfig
from llmlab.data.corpus import Corpus, eval_blocks, load_corpus, train_batch
from llmlab.errors import LlmlabError
from llmlab.io import write_json
from llmlab.models.scratch import build_scratch_model, save_scratch_model
from llmlab.progress import progress_bar
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult
from llmlab.train import speed
from llmlab.train.checkpoint import resume, save_checkpoint, save_interrupted
from llmlab.train.step import StepSettings, optimizer_step


@register_runner("pretrain", schema=PretrainConfig, objective=("val_loss", "minimize"))
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m = cfg.method
    if m.max_steps < 1 or m.micro_batch_size < 1 or m.grad_accum < 1:
        raise LlmlabError("method.max_steps, method.micro_batch_size and method.grad_accum must be >= 1")
    if ctx.hw.dtype == torch.float16:
        raise LlmlabError("fp16 pretraining is not supported (no loss scaling); use hardware.dtype=bfloat16")
    split = distributed.micro_split(m.micro_batch_size, m.grad_accum, ctx.hw.rank, ctx.hw.world_size)
    device = ctx.hw.device
    amp = ctx.hw.dtype if device.type == "cuda" and ctx.hw.dtype != torch.float32 else None
    compile_model = speed.compile_enabled(m.compile, device)
    settings = StepSettings(
        device=device,
        clip=m.clip,
        accum=m.grad_accum,
        world=ctx.hw.world_size,
        amp=amp,
        max_grad_norm=m.max_grad_norm,
        compile=compile_model,
    )
    corpus = load_corpus(cfg.dataset, cfg.cache_dir)
    block = cfg.dataset.block_size
    train_blocks, val_blocks = corpus.blocks("train", block), eval_blocks(corpus.blocks("val", block), m.eval_blocks)
    torch.manual_seed(cfg.seed)
    model = build_scratch_model(cfg.model, corpus.vocab_size, train_len=block).to(device)
    # DDP around `model`, or `model` sharded in place (FSDP); compiled (method.compile); `model` is the plain module
    trained = speed.compiled(distributed.wrap(model, ctx.hw), compile_model)
    groups = (
        model.param_groups(m.weight_decay, m.lr)
        if hasattr(model, "param_groups")
        else param_groups(model, m.weight_decay)
    )  # a model may set its own (RWKV: layerwise LR)
    opt = speed.adamw(groups, lr=m.lr, betas=tuple(m.betas), eps=m.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(m.warmup_steps, m.max_steps, m.lr_final_ratio))
    ckpt_root = ctx.run_dir.file("checkpoints")
    signature = training_signature(cfg, corpus)
    step = resume(ckpt_root, model, opt, sched, signature) if m.resume == "auto" else 0
    ctx.run_dir.trim_metrics(step)  # the rows of steps after the checkpoint are logged again
    if step:
        ctx.run_dir.record(resumed_from_step=step)

    n_params = sum(p.numel() for p in model.parameters())
    flops_token = model.flops_per_token(block)
    tokens_step = m.micro_batch_size * m.grad_accum * block
    model.train()
    first_step = saved = step  # saved: the newest checkpoint's step
    steady = True  # no optimiser step half done
    loss_value, t_window, steps_window, train_s = float("nan"), time.perf_counter(), 0, 0.0
    with progress_bar(ctx.hw.is_main) as bar:
        task = bar.add_task(f"pretrain {cfg.model.name}", total=m.max_steps, completed=step)
        try:
            while step < m.max_steps:
                with interrupts.deferred():  # Ctrl-C / SIGTERM: raised once this step is done (and checkpointed)
                    micro = step_batches(train_blocks, cfg.seed, step, m, split)
                    steady = False
                    loss_value, grad_norm = optimizer_step(
                        trained, opt, sched, micro, next_token_logits, settings, step=step + 1
                    )
                    step, steady = step + 1, True
                    steps_window += 1
                    if step % m.log_every == 0 or step == m.max_steps:
                        # read here only, not in a step: waits for the device, so the window's time is complete
                        loss_value, grad_norm = float(loss_value), float(grad_norm)
                        seconds = time.perf_counter() - t_window
                        train_s += seconds
                        tok_s = steps_window * tokens_step / seconds
                        metrics = {
                            "train/loss": loss_value,
                            "train/lr": sched.get_last_lr()[0],
                            "train/grad_norm": grad_norm,
                            "train/tokens": step * tokens_step,
                            "perf/tokens_per_s": tok_s,
                            "perf/tflops": tok_s * flops_token / 1e12,
                        }
                        if m.peak_tflops:
                            metrics["perf/mfu"] = metrics["perf/tflops"] / m.peak_tflops
                        log(ctx, metrics, step)
                        t_window, steps_window = time.perf_counter(), 0
                    paused = time.perf_counter()  # evaluation and checkpoint time is not training time
                    if step % m.eval_every == 0 or step == m.max_steps:
                        val = loss_row(mean_loss(model, val_blocks, m.eval_batch_size, device, amp), corpus)
                        log(ctx, {f"val/{k}": v for k, v in val.items()}, step)
                    if step % m.save_every == 0 or step == m.max_steps:
                        if not distributed.all_finite(model.parameters()):
                            raise LlmlabError(
                                f"watchdog: non-finite weights after step {step}; not checkpointed "
                                "(lower method.lr or raise method.warmup_steps)"
                            )
                        save_checkpoint(ckpt_root, step, model, opt, sched, signature, m.keep_checkpoints)
                        saved = step
                    t_window += time.perf_counter() - paused
                    bar.update(task, completed=step)
        except KeyboardInterrupt:
            if steady:
                save_interrupted(ckpt_root, step, saved, model, opt, sched, signature, m.keep_checkpoints)
            raise

    model = main_copy(model, lambda: build_scratch_model(cfg.model, corpus.vocab_size, train_len=block).to(device))
    if model is None:  # ranks > 0: training is done, rank 0 evaluates and writes
        return {}
    val = loss_row(mean_loss(model, val_blocks, m.eval_batch_size, device, amp), corpus)
    save_scratch_model(
        ctx.run_dir.file("model"),
        model,
        {"tokenizer": corpus.tokenizer, "dataset": cfg.dataset.name},
        corpus.tokenizer_file,
    )
    results = {
        "runner": "pretrain",
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        **model.describe(),
        "steps": step,
        "params": n_params,
        "tokenizer": corpus.tokenizer,
        "vocab_size": corpus.vocab_size,
        "block_size": block,
        "train_tokens": step * tokens_step,
        "corpus_train_tokens": len(corpus.train),
        "train": {"loss": float(loss_value)},
        "val": val,  # nested: `llmlab report` groups by top-level scalars
        "timing": {
            "train_s": train_s,
            "flops_per_token": flops_token,
            "world_size": ctx.hw.world_size,
            "tokens_per_s": (step - first_step) * tokens_step / train_s if train_s else None,
        },
    }
    results.update(final_evaluations(model, corpus, block, m, device, amp))
    results["metrics"] = {"val": report_metrics(val, results)}
    write_json(ctx.run_dir.file("results.json"), results)
    ctx.tracker.summary({"val_loss": val["loss"], "val_ppl": val["ppl"], "val_bpb": val["bpb"]})
    return results


def main_copy(model, build):
    """The trained model on rank 0 (None on the others): `model` itself, or under FSDP a fresh `build()` holding the
    gathered weights (every rank takes part in the gathering)."""
    if not distributed.is_fsdp(model):
        return model if distributed.rank() == 0 else None
    state = distributed.full_state(model)
    if distributed.rank() != 0:
        return None
    plain = build()
    plain.load_state_dict(state)
    plain.train()
    return plain


def final_evaluations(model, corpus: Corpus, block: int, m, device, amp) -> dict:
    """Perplexity at `eval_lengths` x block (also with `eval_window`) and the sink statistics."""
    out = {}
    if m.eval_lengths:
        rows = extrapolation(
            model, corpus, block, list(m.eval_lengths), m.eval_blocks, m.eval_batch_size, device, amp=amp
        )
        if m.eval_window:
            rows += extrapolation(
                model,
                corpus,
                block,
                list(m.eval_lengths),
                m.eval_blocks,
                m.eval_batch_size,
                device,
                window=m.eval_window,
                amp=amp,
            )
        out["extrapolation"] = rows
    if m.sink_metrics and hasattr(model, "attention_maps"):
        out["sink"] = sink_metrics(model, eval_blocks(corpus.blocks("val", block), m.sink_blocks), device)
    return out


def report_metrics(val: dict, results: dict) -> dict:
    """The flat numbers `llmlab report` tabulates: validation loss/ppl/bpb, ppl per context multiple, sink mass."""
    out = {"val_loss": val["loss"], "val_ppl": val["ppl"], "val_bpb": val["bpb"]}
    for row in results.get("extrapolation", []):
        if "ppl" in row:
            out[f"ppl@{row['multiple']}x" + (f"_w{row['window']}" if row["window"] else "")] = row["ppl"]
    if "sink" in results:
        out["first_token_mass"] = results["sink"]["mean"]["first_token_mass"]
        out["first_token_mass_real"] = results["sink"]["mean"]["first_token_mass_real"]
    return out


def step_batches(blocks: torch.Tensor, seed: int, step: int, m, split: list[tuple[int, list[int]]]) -> list:
    """This rank's micro-batches of optimiser step `step` (the rows `split` gives it of each global micro-batch), each
    with the target-token count of the whole global micro-batch."""
    first = step * m.grad_accum
    tokens = m.micro_batch_size * (blocks.shape[1] - 1)
    return [
        ((train_batch(blocks, seed, (first + j) * m.micro_batch_size, m.micro_batch_size)[rows],), tokens)
        for j, rows in split
    ]


def next_token_logits(model, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of blocks of length + 1 on all but their last token, and the next tokens as targets."""
    return model(blocks[:, :-1]), blocks[:, 1:]


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (embeddings, projections), none on the norm gains."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, final_ratio: float):
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine to `final_ratio` at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def training_signature(cfg: DictConfig, corpus: Corpus) -> dict:
    """What must not change between a checkpoint and the run that resumes from it."""
    m, d = cfg.method, cfg.dataset
    return {
        "model": cfg.model.name,
        "lm": OmegaConf.to_container(cfg.model.lm, resolve=True),
        "dataset": d.name,
        "source": d.source,
        "files": list(d.files),
        "hub_id": d.hub_id,
        "tokenizer": d.tokenizer,
        "vocab_size": corpus.vocab_size,
        "block_size": d.block_size,
        "val_fraction": d.val_fraction,
        "split_seed": d.split_seed,
        "max_chars": d.max_chars,
        "train_tokens": len(corpus.train),
        "seed": cfg.seed,
        "lr": m.lr,
        "lr_final_ratio": m.lr_final_ratio,
        "warmup_steps": m.warmup_steps,
        "max_steps": m.max_steps,
        "betas": list(m.betas),
        "eps": m.eps,
        "weight_decay": m.weight_decay,
        "micro_batch_size": m.micro_batch_size,
        "grad_accum": m.grad_accum,
        "clip": m.clip,
        **(
            {"rwkv": OmegaConf.to_container(cfg.model.rwkv, resolve=True)}
            if getattr(cfg.model, "family", "lm") == "rwkv"
            else {}
        ),
    }


def log(ctx: RunContext, metrics: dict, step: int) -> None:
    ctx.run_dir.log_metrics(metrics, step=step)
    ctx.tracker.log(metrics, step=step)
