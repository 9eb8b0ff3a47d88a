"""`method=position_probe`: the absolute-position probe (StableMask spec S1) for each attention arm; results.json
holds every arm's held-out accuracy next to chance."""

from __future__ import annotations

from omegaconf import DictConfig

from llmlab.analysis.position_probe import chance, probe_arch, train_probe
from llmlab.config import PositionProbeConfig
from llmlab.errors import LlmlabError
from llmlab.io import write_json
from llmlab.models.scratch import arch_from
from llmlab.progress import progress_bar
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult


@register_runner("position_probe", schema=PositionProbeConfig, objective=("accuracy", "maximize"))
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m = cfg.method
    if m.n_classes < 2 or m.seq_len < m.n_classes:
        raise LlmlabError("method.n_classes must be >= 2 and method.seq_len >= n_classes")
    base = arch_from(cfg.model.lm)
    arms = {}
    with progress_bar(ctx.hw.is_main) as bar:
        task = bar.add_task(f"position probe ({base.position})", total=len(m.arms))
        for attention in m.arms:
            arch = probe_arch(base, attention, m.n_layer, m.d_model, m.n_head, m.seq_len)
            arms[attention] = train_probe(
                arch,
                m.task,
                m.seq_len,
                m.n_classes,
                m.steps,
                m.batch_size,
                m.lr,
                cfg.seed,
                m.eval_batches,
                ctx.hw.device,
            )
            ctx.run_dir.log_metrics({f"{attention}/accuracy": arms[attention]["accuracy"]})
            ctx.tracker.log({f"{attention}/accuracy": arms[attention]["accuracy"]})
            bar.advance(task)
    results = {
        "runner": "position_probe",
        "position": base.position,
        "task": m.task,
        "seq_len": m.seq_len,
        "n_classes": m.n_classes,
        "seed": cfg.seed,
        "chance": chance(m.task, m.seq_len, m.n_classes),
        "arms": arms,
        "metrics": {arm: {"accuracy": r["accuracy"]} for arm, r in arms.items()},
    }
    write_json(ctx.run_dir.file("results.json"), results)
    return results
