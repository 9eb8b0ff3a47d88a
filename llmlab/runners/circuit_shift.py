"""Circuit shift (ICL-vs-fine-tuning spec, section 4): does in-context learning move the computation to other heads
and MLPs more than fine-tuning does?

Conditions: B0 (base model, 0-shot), BK (base model, k demonstrations fixed per item) and F0 (the fine-tuned model
`method.finetuned`, 0-shot). On the same clean/corrupt pairs (`llmlab.analysis.corrupt_pairs`) each condition gets
one score per component (`llmlab.analysis.patching`, mean over pairs), its accuracy (share of clean prompts whose gold
answer token beats the other one) and its circuit; BK and F0 are compared with B0 by 1 - Jaccard of the circuits, the
total-variation distance of |score| and 1 - Spearman rho, for heads and MLPs separately, and beside them the noise
floor: the same metrics between the B0 circuits of two disjoint halves of the pairs (`llmlab.analysis.circuit_shift`,
which also gives the verdict over several seeds' runs). Writes `results.json`, `scores.npz` (per-pair scores),
`pairs.jsonl` and the heatmaps `circuit_shift.png`.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from llmlab.analysis import circuit_shift as analysis
from llmlab.analysis.corrupt_pairs import TASKS, build_pairs, encode
from llmlab.analysis.patching import SCORERS, model_shape
from llmlab.config import CircuitShiftConfig
from llmlab.data.loading import load_eval_data
from llmlab.errors import LlmlabError
from llmlab.io import atomic_write, write_json, write_jsonl
from llmlab.models.loading import finetuned_model, load_model
from llmlab.progress import progress_bar
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult


@register_runner("circuit_shift", schema=CircuitShiftConfig)
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m, seed = cfg.method, cfg.seed
    check_config(cfg)
    ft_model = None
    if m.finetuned:  # a LoRA adapter on the base model, or a full model directory
        ft_dir = str(Path(m.finetuned).expanduser())
        ft_model = OmegaConf.create(finetuned_model(OmegaConf.to_container(cfg.model, resolve=True), ft_dir))
    data = load_eval_data(cfg.dataset, seed)
    if "pattern" not in data.tests:
        raise LlmlabError("circuit_shift builds its pairs from the pattern items; add 'pattern' to dataset.variants")

    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, cfg.hardware.attn_implementation, seed)
    rows = data.tests["pattern"].to_list()
    pairs = build_pairs(cfg.dataset.task, rows, data.pool["demo"], data.header, tok, m.n_pairs, (0, m.shots), seed)
    if len(pairs) < 2:
        raise LlmlabError(
            f"only {len(pairs)} usable clean/corrupt pair(s) among {len(rows)} pattern items of {cfg.dataset.task}; "
            "raise dataset.n_test"
        )
    scores = {
        "B0": score(cfg, ctx, "B0", model, tok, data.header, pairs, 0),
        f"B{m.shots}": score(cfg, ctx, f"B{m.shots}", model, tok, data.header, pairs, m.shots),
    }
    shape = model_shape(model)
    if ft_model is not None:
        del model  # one model in memory at a time
        ft, ft_tok = load_model(ft_model, ctx.hw, cfg.cache_dir, cfg.hardware.attn_implementation, seed)
        if ft_tok.get_vocab() != tok.get_vocab():
            raise LlmlabError(f"the fine-tuned model '{m.finetuned}' has another tokenizer than {cfg.model.name}")
        scores["F0"] = score(cfg, ctx, "F0", ft, tok, data.header, pairs, 0)
    elapsed = time.perf_counter() - t0

    results = summarize(cfg, scores, shape, len(pairs))
    results["timing"] = {"total_s": elapsed, "pairs": len(pairs)}
    write_jsonl(ctx.run_dir.file("pairs.jsonl"), [{k: v for k, v in asdict(p).items() if k != "demos"} for p in pairs])
    save_npz(ctx.run_dir.file("scores.npz"), {f"{c}_{key}": v for c, s in scores.items() for key, v in s.items()})
    plot(ctx.run_dir.file("circuit_shift.png"), scores, results["conditions"])
    write_json(ctx.run_dir.file("results.json"), results)
    flat = flatten(results)
    ctx.log_final(flat)
    if ctx.tracker.run is not None:
        import wandb

        ctx.tracker.run.log({"circuit_shift": wandb.Image(str(ctx.run_dir.file("circuit_shift.png")))})
    return results


def check_config(cfg: DictConfig) -> None:
    m = cfg.method
    if cfg.dataset.source != "implicit" or cfg.dataset.task not in TASKS:
        raise LlmlabError(
            f"circuit_shift supports the implicit tasks {', '.join(TASKS)}; got dataset "
            f"'{cfg.dataset.name}' (source {cfg.dataset.source}, task {cfg.dataset.get('task')})"
        )
    if m.shots < 1 or m.n_pairs < 2 or not 0 < m.mass <= 1 or (m.top_frac is not None and not 0 < m.top_frac <= 1):
        raise LlmlabError(
            "circuit_shift needs method.shots >= 1, method.n_pairs >= 2, 0 < method.mass <= 1 and "
            "method.top_frac null or in (0, 1]"
        )
    if m.finetuned and not Path(m.finetuned).expanduser().is_dir():
        raise LlmlabError(f"method.finetuned '{m.finetuned}' is not a directory")


def score(cfg, ctx, name: str, model, tok, header: str, pairs, shots: int) -> dict[str, np.ndarray]:
    """Per-pair head and MLP scores and the clean and corrupt logit differences of one condition."""
    m, out = cfg.method, {"heads": [], "mlps": [], "ld_clean": [], "ld_corrupt": []}
    scorer = SCORERS[m.method]
    with progress_bar(ctx.hw.is_main) as bar:
        task = bar.add_task(f"{m.method} patching {name}", total=len(pairs))
        for pair in pairs:
            enc = encode(tok, header, pair, shots)
            clean, corrupt = (torch.tensor([ids], device=ctx.hw.device) for ids in (enc.clean, enc.corrupt))
            res = scorer(model, clean, corrupt, enc.answers, batch_size=m.batch_size)
            for key in out:
                out[key].append(getattr(res, key))
            bar.advance(task)
    return {key: np.array(v) for key, v in out.items()}


def summarize(cfg: DictConfig, scores: dict[str, dict[str, np.ndarray]], shape, n_pairs: int) -> dict:
    """The run's results: what was compared, and `llmlab.analysis.circuit_shift.compare` of its conditions."""
    m = cfg.method
    return {
        "runner": "circuit_shift",
        "operationalization": f"llmlab ({m.method} patching)",
        "model": cfg.model.name,
        "finetuned": m.finetuned,
        "dataset": cfg.dataset.name,
        "task": cfg.dataset.task,
        "faithful": cfg.dataset.faithful,
        "seed": cfg.seed,
        "shots": m.shots,
        "n_pairs": n_pairs,
        "circuit": {"top_frac": m.top_frac} if m.top_frac is not None else {"mass": m.mass},
        "shape": {"layers": shape.n_layers, "heads": shape.n_heads},
        **analysis.compare(scores, m.shots, m.mass, m.top_frac, shape.n_layers),
        "notes": [] if "F0" in scores else ["F0 skipped: method.finetuned is null"],
    }


def flatten(results: dict) -> dict[str, float]:
    flat = {
        f"{c}/{key}": v
        for c, r in results["conditions"].items()
        for key, v in r.items()
        if key in ("accuracy", "mean_ld_clean", "mean_ld_corrupt")
    }
    flat.update(
        {f"shift/{c}/{k}/{x}": v for c, s in results["shift"].items() for k, ms in s.items() for x, v in ms.items()}
    )
    flat.update({f"noise_floor/{k}/{x}": v for k, ms in results["noise_floor"].items() for x, v in ms.items()})
    if results["check"]:
        flat["check/paper_consistent"] = float(results["check"]["paper_consistent"])
    return flat


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The per-pair scores as float32 (what the model computed them in), compressed; written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v.astype(np.float32) for k, v in arrays.items()})
    atomic_write(path, buf.getvalue())


def plot(path: Path, scores: dict[str, dict[str, np.ndarray]], conds: dict) -> None:
    """Per condition a layer x (heads + MLP) heatmap of the mean |score|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(4 * len(scores), 4), squeeze=False)
    for ax, (c, s) in zip(axes[0], scores.items()):
        grid = np.abs(np.concatenate([s["heads"].mean(0), s["mlps"].mean(0)[:, None]], axis=1))
        im = ax.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
        n_heads = grid.shape[1] - 1
        ax.axvline(n_heads - 0.5, color="white", lw=2)
        ax.set_xticks(range(n_heads + 1), [*map(str, range(n_heads)), "MLP"])
        ax.set_yticks(range(grid.shape[0]))
        ax.set(title=f"{c} (acc {conds[c]['accuracy']:.2f})", xlabel="head", ylabel="layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())
