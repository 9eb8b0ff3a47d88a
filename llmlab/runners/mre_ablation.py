"""MRE fine-tuning ablation (`method=mre_ablation`, spec 3.3): one `finetune` run per condition on the dataset's
training split (rows from `llmlab.data.mre.ablation`), each evaluated on the test split under the same condition.

Evaluation, kept simple: TL-target conditions score the TL labels as candidates (log-likelihood of `label + "\\n"`
after the prompt; argmax); WL-target and joint conditions generate greedily (`max_new_tokens`), cut at the first
newline and parse it with the OIELLM parser (unparseable = wrong / nothing predicted). Metrics: TL macro-F1 and
accuracy, WL exact-match micro-F1 over items, and for joint ALL = TL right and the WL set exact. Deltas:
ΔTL = tl_plus_wli - tl_only, ΔWL = wl_plus_tli - wl_only, and the same for the shuffled and neutral controls.
Each condition lives in `<run>/<condition>/` (training run, `model/`, `eval.json`); finished steps are skipped.
"""

from __future__ import annotations

import json
import math
import time

from omegaconf import DictConfig, OmegaConf

from llmlab.analysis.mre_metrics import accuracy, macro_f1, wl_micro_f1
from llmlab.config import MreAblationConfig
from llmlab.data.mre.ablation import CONDITIONS, condition_rows, target_level
from llmlab.data.mre.format import FormatError, parse_output, parse_wl
from llmlab.data.mre.loader import load_mre
from llmlab.errors import LlmlabError
from llmlab.io import write_json, write_jsonl
from llmlab.models.loading import finetuned_model, load_model
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult, execute
from llmlab.run_dir import RunDir
from llmlab.runners import finetune
from llmlab.scoring import Request, Scorer
from llmlab.seeding import seed_everything
from llmlab.tracking import Tracker

DELTAS = {
    "tl": ("tl_plus_wli", "tl_plus_wli_shuffled", "tl_neutral"),
    "wl": ("wl_plus_tli", "wl_plus_tli_shuffled", "wl_neutral"),
}


@register_runner("mre_ablation", schema=MreAblationConfig)
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m = cfg.method
    unknown = [c for c in m.conditions if c not in CONDITIONS]  # also checked with the config; here because each
    if unknown or not m.conditions:  # names a directory, made before any data is read
        raise LlmlabError(f"method.conditions: unknown {unknown}; choose from {', '.join(CONDITIONS)}")
    data = load_mre(cfg.dataset, cfg.seed)
    base = OmegaConf.to_container(cfg, resolve=True)
    group = cfg.logger.group or ctx.run_dir.path.name
    table, t0 = {}, time.perf_counter()
    for cond in m.conditions:
        path = ctx.run_dir.path / cond
        done = path / "eval.json"
        if done.exists():
            table[cond] = json.loads(done.read_text())
            continue
        dataset = {**base["dataset"], "options": {**base["dataset"]["options"], "condition": cond}}
        method = {**base["method"]["finetune"], "runner": "finetune"}
        if m.epochs is not None:
            per_step = method["micro_batch_size"] * method["grad_accum"]
            method["max_steps"] = max(1, math.ceil(m.epochs * len(data.train) / per_step))
        sub = OmegaConf.create({**base, "dataset": dataset, "method": method, "output_dir": str(path)})
        if not (path / "results.json").exists():
            seed_everything(cfg.seed)
            run_dir = RunDir(path, sub, [cond])
            execute(finetune.run, sub, RunContext(ctx.hw, run_dir, Tracker(sub, run_dir, cond, group, ctx.hw.is_main)))
        trained = json.loads((path / "results.json").read_text())
        model_cfg = OmegaConf.create(finetuned_model(base["model"], path / "model"))
        model, tok = load_model(
            model_cfg, ctx.hw, cfg.cache_dir, cfg.hardware.attn_implementation, cfg.seed, reuse=False
        )
        rows = condition_rows(data.test[: m.limit], cond, cfg.seed, "test")
        table[cond], preds = evaluate(
            Scorer(model, tok, batch_size=m.batch_size), rows, cond, data.labels, data.task, m.max_new_tokens
        )
        table[cond]["final_loss"] = trained["final_loss"]
        write_jsonl(path / "predictions.jsonl", preds)
        write_json(done, table[cond])
        del model
    results = {
        "runner": "mre_ablation",
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "n_train": len(data.train),
        "n_test": len(data.test[: m.limit]),
        "labels": data.labels,
        "conditions": table,
        "deltas": deltas(table),
        "skipped_lines": data.skipped,
        "manifest": data.manifest,
        "timing": {"total_s": time.perf_counter() - t0},
    }
    write_json(ctx.run_dir.file("results.json"), results)
    flat = {f"{c}/{k}": v for c, r in table.items() for k, v in r.items() if isinstance(v, float)}
    flat.update({f"delta/{k}": v for k, v in results["deltas"].items()})
    ctx.log_final(flat)
    return results


def evaluate(scorer: Scorer, rows: list[dict], cond: str, labels: list[str], task: str, max_new: int):
    """Metrics and per-example predictions of one condition's model on its test rows."""
    level = target_level(cond)
    if level == "tl":
        reqs = [Request(r["prompt"], [f"{c}\n" for c in labels]) for r in rows]
    else:
        reqs = [Request(r["prompt"], (), max_new) for r in rows]
    scored = scorer.score(reqs)
    tl_pred, wl_pred, preds = [], [], []
    for r, s in zip(rows, scored):
        gen = s.generated.split("\n", 1)[0].strip()
        tl, wl = None, None
        if level == "tl":
            tl = labels[max(range(len(labels)), key=s.loglik.__getitem__)]
        else:
            try:
                if level == "joint":
                    tl, _, wl = parse_output(gen)
                else:
                    wl = parse_wl(task, gen)
            except FormatError:
                pass
        tl_pred.append(tl)
        wl_pred.append(wl)
        preds.append(
            {
                "id": r["id"],
                "gold_tl": r["tl"],
                "gold_wl": r["wl"],
                "generated": gen,
                "tl": tl,
                "wl": [list(w) for w in wl] if wl is not None else None,
            }
        )
    gold_tl, gold_wl = [r["tl"] for r in rows], [[tuple(w) for w in r["wl"]] for r in rows]
    out: dict = {"n": len(rows)}
    if level in ("tl", "joint"):
        out.update(tl_macro_f1=macro_f1(gold_tl, tl_pred, labels), tl_accuracy=accuracy(gold_tl, tl_pred))
    if level in ("wl", "joint"):
        wl = wl_micro_f1(gold_wl, wl_pred)
        out.update(
            wl_f1=wl["f1"],
            wl_precision=wl["precision"],
            wl_recall=wl["recall"],
            wl_set_exact=wl["set_exact"],
            unparseable=sum(p is None for p in wl_pred) / max(len(rows), 1),
        )
    if level == "joint":
        out["all"] = sum(
            t == g and p is not None and set(p) == set(gw) for t, g, p, gw in zip(tl_pred, gold_tl, wl_pred, gold_wl)
        ) / max(len(rows), 1)
    return out, preds


def deltas(table: dict) -> dict:
    """ΔTL and ΔWL of the conditioned arms and their controls against the single-level arm (where both ran)."""
    out = {}
    for level, arms in DELTAS.items():
        ref = table.get(f"{level}_only")
        key = "tl_macro_f1" if level == "tl" else "wl_f1"
        for arm in arms:
            if ref and arm in table:
                out[f"{arm}-{level}_only"] = table[arm][key] - ref[key]
        if ref and "joint" in table:
            out[f"joint-{level}_only"] = table["joint"][key] - ref[key]
    return out
