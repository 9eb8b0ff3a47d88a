"""The ICL-vs-fine-tuning experiment (Yin et al., Findings of EMNLP 2024) as one run.

For every seed: the base model is evaluated with k demonstrations for every k in `method.shots` on every task
(k=0 is base@0); every arm in `method.run_arms` is fine-tuned on its task mixture and its weights are evaluated
0-shot on every task. Then the comparison: accuracies, Δ against base@0, gaps ICL − FT with paired bootstrap
intervals, the sample budgets, and the spec's pre-registered verdict. Layout of the run directory:

    seed-S/icl/<task>/k-K/          an ICL run (results.json, predictions.jsonl)
    seed-S/ft/<arm>/                a fine-tuning run (checkpoints/, model/, results.json)
    seed-S/ft/<arm>/eval/<task>/    the fine-tuned model, 0-shot
    comparison.json, comparison.md, icl_vs_ft.png

Each step is an ordinary icl / finetune run with its own run directory (and W&B run in this run's group). A step
whose results.json exists is skipped, and the unfinished one resumes, so rerunning the command continues the work.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from llmlab.analysis import icl_vs_ft as analysis
from llmlab.config import IclVsFtConfig
from llmlab.data.implicit import task_spec
from llmlab.errors import LlmlabError
from llmlab.io import atomic_write, write_json
from llmlab.models.loading import finetuned_model
from llmlab.paths import safe_name
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult, execute
from llmlab.run_dir import RunDir
from llmlab.runners import finetune, icl
from llmlab.seeding import seed_everything
from llmlab.tracking import Tracker


@register_runner("icl_vs_ft", schema=IclVsFtConfig, objective=(None, "maximize"))
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m = cfg.method
    check(m)
    base = OmegaConf.to_container(cfg, resolve=True)
    group = cfg.logger.group or ctx.run_dir.path.name

    # 1. Every step, seed by seed: base ICL over k, then each arm trained and evaluated 0-shot.
    results: dict[tuple, dict] = {}
    for seed in m.seeds:
        for task in m.tasks:
            for k in m.shots:
                results[seed, task, f"icl@{k}"] = step(
                    base,
                    ctx,
                    group,
                    f"seed-{seed}/icl/{task}/k-{k}",
                    seed,
                    method={**base["method"]["icl"], "shots": k},
                    dataset=task_dataset(base["dataset"], task),
                )
        for arm in m.run_arms:
            trained = step(base, ctx, group, f"seed-{seed}/ft/{arm}", seed, method=base["method"]["arms"][arm])
            weights = ctx.run_dir.path / f"seed-{seed}/ft/{arm}/model"  # not needed (nor kept) once evaluated
            for task in m.tasks:
                rel = f"seed-{seed}/ft/{arm}/eval/{task}"
                model = (
                    None
                    if (ctx.run_dir.path / rel / "results.json").exists()
                    else finetuned_model(base["model"], weights)
                )
                results[seed, task, f"ft:{arm}"] = step(
                    base,
                    ctx,
                    group,
                    rel,
                    seed,
                    model=model,
                    method={**base["method"]["icl"], "shots": 0},
                    dataset=task_dataset(base["dataset"], task),
                )
                results[seed, task, f"ft:{arm}"]["train"] = trained

    # 2. The comparison, per (task, variant), from the per-item predictions.
    cells = analysis.compare(ctx.run_dir.path, m, list(cfg.dataset.variants))
    budgets = {arm: sample_budget(base["method"]["arms"][arm]) for arm in m.run_arms}
    efficiency = {
        arm: {"ft_lines": n, "icl_demos_per_query": m.report_k, "ratio": n / m.report_k if m.report_k else None}
        for arm, n in budgets.items()
    }
    verdict = analysis.verdict(cells, m.report_k)
    summary = {
        "runner": "icl_vs_ft",
        "model": cfg.model.name,
        "metric": m.metric,
        "seeds": list(m.seeds),
        "shots": list(m.shots),
        "report_k": m.report_k,
        "arms": list(m.run_arms),
        "n_test": cfg.dataset.n_test,
        "bootstrap": m.bootstrap,
        "verdict": verdict,
        "sample_efficiency": efficiency,
        "train": {
            arm: {
                str(s): {k: results[s, m.tasks[0], f"ft:{arm}"]["train"][k] for k in ("final_loss", "steps", "timing")}
                for s in m.seeds
            }
            for arm in m.run_arms
        },
        "cells": [{"task": t, "variant": v, **c} for (t, v), c in cells.items()],
    }

    # 3. Tables, plot, W&B.
    table = analysis.markdown(cells, list(m.shots), list(m.run_arms), m.report_k, cfg.model.name, m.metric)
    notes = [f"Verdict (spec 6.3, pattern sets, {verdict.get('gap_key', '')}): **{verdict['outcome']}**"]
    notes += [
        f"Sample budget: FT arm '{a}' saw {e['ft_lines']} lines vs {e['icl_demos_per_query']} demonstrations "
        f"per ICL query ({e['ratio']:.0f}x)"
        for a, e in efficiency.items()
        if e["ratio"]
    ]
    write_json(ctx.run_dir.file("comparison.json"), summary)
    atomic_write(ctx.run_dir.file("comparison.md"), table + "\n" + "\n\n".join(notes) + "\n")
    analysis.plot(cells, list(m.shots), list(m.run_arms), ctx.run_dir.file("icl_vs_ft.png"), m.metric)
    rows = [
        {"task": t, "variant": v, "condition": cond, **e}
        for (t, v), c in cells.items()
        for cond, e in c["accuracy"].items()
    ]
    ctx.tracker.table("comparison", rows)
    ctx.tracker.summary({"verdict": verdict["outcome"]})
    write_json(ctx.run_dir.file("results.json"), summary)  # no per-variant "metrics": `llmlab report` reads steps
    return {"metrics": flat_metrics(cells)}


def check(m: DictConfig) -> None:
    if 0 not in m.shots:
        raise LlmlabError("method.shots must include 0 (base@0 is the reference of every delta)")
    if m.report_k not in m.shots:
        raise LlmlabError(f"method.report_k={m.report_k} is not among method.shots {list(m.shots)}")
    unknown = [a for a in m.run_arms if a not in m.arms]
    if unknown:
        raise LlmlabError(f"method.run_arms: unknown arm(s) {', '.join(unknown)}; defined: {', '.join(m.arms)}")
    needs = {"strict": "generate", "loose": "generate", "loglik": "loglik", "label_logit": "loglik"}[m.metric]
    if needs not in m.icl.scoring:
        raise LlmlabError(f"method.metric={m.metric} needs '{needs}' in method.icl.scoring")
    if not m.seeds or not m.tasks:
        raise LlmlabError("method.seeds and method.tasks must not be empty")
    for task in m.tasks:  # step directories are named after tasks and arms: check before any is made
        task_spec(safe_name(task, "method.tasks entry"))
    for arm in m.run_arms:
        safe_name(arm, "method.run_arms entry")


def task_dataset(dataset: dict, task: str) -> dict:
    """The experiment's dataset settings (sizes, faithful, variants) for one task; the options apply to their task."""
    options = dataset["options"] if task == dataset.get("task") else {}
    return {**dataset, "name": f"implicit/{task}", "source": "implicit", "task": task, "options": options}


def step(base: dict, ctx: RunContext, group: str, rel: str, seed: int, **sections) -> dict:
    """Run one icl / finetune step in `<run>/<rel>` with `sections` of the config replaced; skip it if finished."""
    path = ctx.run_dir.path / rel
    if (path / "results.json").exists():
        return json.loads((path / "results.json").read_text())
    sub = OmegaConf.create({**base, **sections, "seed": seed, "output_dir": str(path)})
    runner = finetune.run if sub.method.runner == "finetune" else icl.run
    seed_everything(seed)
    run_dir = RunDir(path, sub, [rel])
    tracker = Tracker(sub, run_dir, name=rel, group=group, is_main=ctx.hw.is_main)
    return execute(runner, sub, RunContext(ctx.hw, run_dir, tracker))


def sample_budget(arm: dict) -> int:
    """Training lines an arm sees: steps x micro batch x accumulation."""
    return arm["max_steps"] * arm["micro_batch_size"] * arm["grad_accum"]


def flat_metrics(cells: dict) -> dict:
    """`variant -> {task/condition: mean}` for `llmlab report` and sweepers."""
    out: dict[str, dict] = {}
    for (task, variant), c in cells.items():
        out.setdefault(variant, {}).update({f"{task}/{cond}": e["mean"] for cond, e in c["accuracy"].items()})
    return out
