"""ICL log-likelihood scoring: llmlab's `Scorer` against lm-evaluation-harness's `HFLM`, on the same requests.

    python -m llmlab.bench --only icl_scoring [--queries 200] [--threads 1] [--modes per_query,fixed,bf16]

Queries are the first pattern test items of each task (expression and relation by default, split evenly); each
prompt is `header + k demonstrations + question` exactly as the ICL runner builds it, and each of its candidates is
one (context, continuation) log-likelihood request. Modes:

- `per_query`: demonstrations redrawn per query, fp32 (target: llmlab >= 1.5x lm-eval's throughput);
- `fixed`: one demonstration set shared by all queries, fp32, so llmlab can reuse the prefix (target: >= 3x);
- `bf16`: llmlab in bf16 with per-query demonstrations, against lm-eval in fp32; its drift is measured against
  llmlab fp32 on the same requests (no target: reported).

Both sides use the same batch size and thread count, are warmed up on a few queries, and are timed end to end from
strings to log-likelihoods (tokenization included), alternating (ABBA) task by task in the same process. In fp32
the two must agree to within 1e-4; requests that the two tokenize differently are counted and shown, and left out
of the comparison. Results go to `outputs/bench/icl_scoring.json`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console

from llmlab.bench.machine import machine, machine_line
from llmlab.config import DatasetConfig, ModelConfig
from llmlab.data.loading import load_eval_data
from llmlab.data.sources import dataset_option
from llmlab.hardware import Hardware
from llmlab.io import write_json
from llmlab.models.loading import load_model, model_dir
from llmlab.paths import REPO_ROOT, conf_dir
from llmlab.runners.icl import draw_demos
from llmlab.scoring import Request, Scorer

NAME = "icl_scoring"
TASKS = ("expression", "relation")
MODES = ("per_query", "fixed", "bf16")
TARGETS = {"per_query": 1.5, "fixed": 3.0, "bf16": None}  # llmlab / lm-eval throughput
MAX_ABS_DIFF = 1e-4  # fp32 agreement with lm-eval
LOAD_TARGET_S = 3.0
MODE_LABELS = {
    "per_query": "per-query demos, fp32",
    "fixed": "fixed demos, fp32",
    "bf16": "per-query demos, llmlab bf16",
}  # bf16: against lm-eval in fp32

log = Console(stderr=True)

# (log-likelihoods per query, seconds, forward tokens) for a list of queries
Side = Callable[[Sequence["Query"]], tuple[list[list[float]], float, int]]


@dataclass
class Query:
    task: str
    index: int
    context: str
    candidates: list[str]
    label: int


# ---- prompts -------------------------------------------------------------------------------------------------------


def dataset_config(task: str, **overrides) -> DatasetConfig:
    """The repository's `dataset=implicit/<task>` config, with `overrides` (e.g. a smaller `n_test` for tests)."""
    cfg = dataset_option(f"implicit/{task}")
    return OmegaConf.merge(cfg, overrides) if overrides else cfg


def build_queries(
    task: str,
    n: int,
    shots: int,
    seed: int,
    dataset_overrides: dict | None = None,
) -> dict[str, list[Query]]:
    """The first `n` pattern test items of `task` as k-shot prompts: {"per_query": [...], "fixed": [...]}."""
    data = load_eval_data(dataset_config(task, **(dataset_overrides or {})), seed)
    rows = data.tests["pattern"].to_list()
    if n > len(rows):
        raise ValueError(f"{task}: {n} queries asked, the dataset has {len(rows)} pattern test items")
    pool = data.pool["demo"]
    out: dict[str, list[Query]] = {}
    for mode, fixed in (("per_query", False), ("fixed", True)):
        out[mode] = [
            Query(
                task,
                i,
                data.header + "".join(draw_demos(pool, shots, fixed, seed, "pattern", i)) + row["question"],
                list(row["candidates"]),
                int(row["label"]),
            )
            for i, row in enumerate(rows[:n])
        ]
    return out


def split_queries(total: int, tasks: Sequence[str]) -> dict[str, int]:
    """`total` queries split evenly over `tasks` (the first tasks take the remainder)."""
    per, extra = divmod(total, len(tasks))
    return {t: per + (i < extra) for i, t in enumerate(tasks)}


# ---- the two sides -------------------------------------------------------------------------------------------------


class ForwardTokens:
    """Counts the token positions (padding included) fed to `model.forward` while active."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.n, self._handle = model, 0, None

    def __enter__(self) -> ForwardTokens:
        self._handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.n += ids.numel()


def llmlab_side(scorer: Scorer) -> Side:
    def run(queries: Sequence[Query]):
        reqs = [Request(q.context, q.candidates) for q in queries]
        with ForwardTokens(scorer.model) as fwd:
            t0 = time.perf_counter()
            scored = scorer.score(reqs)
            secs = time.perf_counter() - t0
        return [list(s.loglik) for s in scored], secs, fwd.n

    return run


def lmeval_instances(queries: Sequence[Query]) -> list:
    """One lm-eval loglikelihood `Instance` per (query, candidate), in query order."""
    from lm_eval.api.instance import Instance

    return [
        Instance(request_type="loglikelihood", doc={}, arguments=(q.context, cand), idx=j)
        for q in queries
        for j, cand in enumerate(q.candidates)
    ]


def lmeval_side(lm) -> Side:
    def run(queries: Sequence[Query]):
        instances = lmeval_instances(queries)
        with ForwardTokens(lm.model) as fwd:
            t0 = time.perf_counter()
            res = lm.loglikelihood(instances, disable_tqdm=True)
            secs = time.perf_counter() - t0
        flat, out = iter(float(ll) for ll, _ in res), []
        for q in queries:
            out.append([next(flat) for _ in q.candidates])
        return out, secs, fwd.n

    return run


def make_hflm(model_or_path, tokenizer=None, batch_size: int = 8, dtype: str = "float32"):
    """lm-eval's HF model on CPU: from a model directory, or wrapping an in-memory model and tokenizer."""
    from lm_eval.models.huggingface import HFLM

    if isinstance(model_or_path, (str, Path)):
        return HFLM(pretrained=str(model_or_path), batch_size=batch_size, dtype=dtype, device="cpu")
    return HFLM(pretrained=model_or_path, tokenizer=tokenizer, batch_size=batch_size, device="cpu")


# ---- tokenization and agreement ------------------------------------------------------------------------------------


def tokenization(scorer: Scorer, lm, queries: Sequence[Query], max_examples: int = 3) -> dict:
    """How llmlab and lm-eval tokenize each request: which requests agree, token counts, mismatch examples."""
    same, tokens, mismatches, examples = [], 0, {"boundary": 0, "sequence": 0}, []
    for q in queries:
        ctx, cands = scorer.encode(Request(q.context, q.candidates))
        row = []
        for text, cont in zip(q.candidates, cands, strict=True):
            tokens += len(ctx) + len(cont)
            l_ctx, l_cont = lm._encode_pair(q.context, text)  # what HFLM.loglikelihood scores
            ok = ctx == l_ctx and cont == l_cont
            row.append(ok)
            if ok:
                continue
            kind = "boundary" if ctx + cont == l_ctx + l_cont else "sequence"
            mismatches[kind] += 1
            if len(examples) < max_examples:
                target = q.context + text  # does each side's token sequence spell the prompt and candidate?
                examples.append(
                    {
                        "task": q.task,
                        "index": q.index,
                        "kind": kind,
                        "candidate": text,
                        "llmlab_spells_text": scorer.tok.decode(ctx + cont) == target,
                        "lm_eval_spells_text": scorer.tok.decode(l_ctx + l_cont) == target,
                        "context_tail": q.context[-40:],
                        "llmlab": {"context_tail": _pieces(scorer, ctx[-4:]), "candidate": _pieces(scorer, cont)},
                        "lm_eval": {"context_tail": _pieces(scorer, l_ctx[-4:]), "candidate": _pieces(scorer, l_cont)},
                    }
                )
        same.append(row)
    n = sum(len(r) for r in same)
    return {
        "requests": n,
        "tokens": tokens,
        "mismatched": n - sum(map(sum, same)),
        "by_kind": mismatches,
        "examples": examples,
        "same": same,
    }


def _pieces(scorer: Scorer, ids: list[int]) -> list[str]:
    return [scorer.tok.decode([i]) for i in ids]


def agreement(a: list[list[float]], b: list[list[float]], same: list[list[bool]] | None = None) -> dict:
    """Absolute differences of log-likelihoods (requests where `same`), and argmax agreement per query (queries
    whose candidates all are `same`)."""
    same = same or [[True] * len(qa) for qa in a]
    rows = list(zip(a, b, same, strict=True))
    diffs = [abs(x - y) for qa, qb, qs in rows for x, y, s in zip(qa, qb, qs, strict=True) if s]
    kept = [(qa, qb) for qa, qb, qs in rows if all(qs)]
    agree = sum(_argmax(qa) == _argmax(qb) for qa, qb in kept)
    return {
        "requests_compared": len(diffs),
        "max_abs_diff": max(diffs) if diffs else None,
        "mean_abs_diff": statistics.fmean(diffs) if diffs else None,
        "queries_compared": len(kept),
        "argmax_agree": agree,
        "argmax_agree_frac": agree / len(kept) if kept else None,
    }


def accuracy(logliks: list[list[float]], queries: Sequence[Query]) -> float:
    """Fraction of queries whose highest-likelihood candidate is the label."""
    return sum(_argmax(ll) == q.label for ll, q in zip(logliks, queries, strict=True)) / max(len(queries), 1)


def _argmax(xs: Sequence[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)


# ---- timing --------------------------------------------------------------------------------------------------------


def run_mode(
    queries: dict[str, list[Query]], sides: dict[str, Side], warmup: int = 2, repeats: int = 1, label: str = ""
) -> dict[str, dict]:
    """Time every side on every task's queries, alternating the order task by task (ABBA), after a warm-up on the
    first `warmup` queries. A task's time is the median over `repeats`; log-likelihoods are from the first run."""
    names = list(sides)
    first = next(iter(queries.values()))[:warmup]
    for name in names:
        if first:
            sides[name](first)
    out = {name: {"per_task_s": {}, "runs_s": {}, "logliks": [], "forward_tokens": 0} for name in names}
    unit = 0
    for task, qs in queries.items():
        for rep in range(repeats):
            for name in names if unit % 2 == 0 else names[::-1]:
                ll, secs, fwd = sides[name](qs)
                res = out[name]
                res["runs_s"].setdefault(task, []).append(secs)
                if rep == 0:
                    res["logliks"].extend(ll)
                    res["forward_tokens"] += fwd
                if label:
                    log.print(f"  [{label}] {task} ({len(qs)} queries) {name}: {secs:.2f} s")
            unit += 1
    for res in out.values():
        res["per_task_s"] = {t: statistics.median(r) for t, r in res["runs_s"].items()}
        res["seconds"] = sum(res["per_task_s"].values())
    return out


def throughput(res: dict, requests: int, queries: int, tokens: int) -> dict:
    s = res["seconds"]
    return {
        "seconds": s,
        "per_task_s": res["per_task_s"],
        "runs_s": res["runs_s"],
        "requests": requests,
        "queries": queries,
        "req_per_s": requests / s,
        "queries_per_s": queries / s,
        "tokens": tokens,
        "tokens_per_s": tokens / s,
        "forward_tokens": res["forward_tokens"],
        "forward_tokens_per_s": res["forward_tokens"] / s,
    }


def run_benchmark(
    queries: dict[str, dict[str, list[Query]]],
    scorer: Scorer,
    lm,
    scorer_bf16: Scorer | None = None,
    modes: Sequence[str] = MODES,
    warmup: int = 2,
    repeats: int = 1,
    bf16_queries: dict[str, int] | None = None,
    verbose: bool = False,
) -> dict:
    """All modes on `queries[mode][task]`. `scorer` is llmlab fp32, `lm` an lm-eval HFLM in fp32, `scorer_bf16`
    llmlab in bf16; `bf16` uses the first `bf16_queries[task]` per-query prompts (all by default). Returns the
    results without per-request values."""
    modes = [m for m in MODES if m in modes and (m != "bf16" or scorer_bf16 is not None)]
    out: dict = {"modes": {}, "tokenization": {}}
    fp32_logliks: dict[tuple[str, int], list[float]] = {}  # llmlab fp32, per-query demos, by (task, index)
    for mode in modes:
        prompts = (
            queries[mode]
            if mode != "bf16"
            else {t: qs[: (bf16_queries or {}).get(t, len(qs))] for t, qs in queries["per_query"].items()}
        )
        flat = [q for qs in prompts.values() for q in qs]
        tok = tokenization(scorer, lm, flat)
        if mode != "bf16":
            out["tokenization"][mode] = {k: v for k, v in tok.items() if k != "same"}
        llmlab = llmlab_side(scorer_bf16 if mode == "bf16" else scorer)
        if verbose:
            log.print(f"[bold]{MODE_LABELS[mode]}[/bold]: {len(flat)} queries, {tok['requests']} requests")
        timed = run_mode(
            prompts, {"lm_eval": lmeval_side(lm), "llmlab": llmlab}, warmup, repeats, label=mode if verbose else ""
        )
        ll_l, ll_e = timed["llmlab"]["logliks"], timed["lm_eval"]["logliks"]
        res = {
            "label": MODE_LABELS[mode],
            "target_ratio": TARGETS[mode],
            "llmlab": throughput(timed["llmlab"], tok["requests"], len(flat), tok["tokens"]),
            "lm_eval": throughput(timed["lm_eval"], tok["requests"], len(flat), tok["tokens"]),
        }
        res["llmlab"]["accuracy"] = accuracy(ll_l, flat)
        res["lm_eval"]["accuracy"] = accuracy(ll_e, flat)
        res["ratio_req_per_s"] = res["llmlab"]["req_per_s"] / res["lm_eval"]["req_per_s"]
        res["ratio_tokens_per_s"] = res["llmlab"]["tokens_per_s"] / res["lm_eval"]["tokens_per_s"]
        res["vs_lm_eval"] = agreement(ll_l, ll_e, tok["same"])
        if mode == "bf16":
            missing = [q for q in flat if (q.task, q.index) not in fp32_logliks]
            if missing:  # per_query mode not run: score these requests in fp32, untimed
                fp32_logliks.update(
                    zip([(q.task, q.index) for q in missing], llmlab_side(scorer)(missing)[0], strict=True)
                )
            res["drift_vs_llmlab_fp32"] = agreement(ll_l, [fp32_logliks[q.task, q.index] for q in flat])
            res["pass"] = None
        else:
            if mode == "per_query":
                fp32_logliks.update(((q.task, q.index), ll) for q, ll in zip(flat, ll_l, strict=True))
            res["speed_pass"] = res["ratio_req_per_s"] >= TARGETS[mode]
            diff = res["vs_lm_eval"]["max_abs_diff"]
            res["agreement_pass"] = diff is not None and diff <= MAX_ABS_DIFF
            res["pass"] = res["speed_pass"] and res["agreement_pass"]
        out["modes"][mode] = res
    return out


# ---- report --------------------------------------------------------------------------------------------------------


def hardware_info(threads: int) -> dict:
    return {**machine(), "threads": threads}


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def markdown(results: dict) -> str:
    """The benchmark's table and notes from its JSON (printed by `main`, and a README table kind)."""
    st = results["settings"]
    lines = [
        f"ICL scoring: {st['model']}, {st['shots']}-shot, {st['queries']} queries "
        f"({', '.join(f'{n} {t}' for t, n in st['per_task'].items())}), batch size {st['batch_size']}, warm-up "
        f"{st['warmup']} queries, repeats {st['repeats']}; llmlab `Scorer` vs lm-eval `HFLM` on the same "
        "log-likelihood requests (context, candidate)",
        "",
        "| mode | queries | llmlab req/s | lm-eval req/s | ratio | target | verdict | "
        "max \\|Δ loglik\\| | argmax agree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in results["modes"].items():
        target = r["target_ratio"]
        if mode == "bf16":
            drift = r.get("drift_vs_llmlab_fp32") or r["vs_lm_eval"]
            ref = "vs llmlab fp32" if "drift_vs_llmlab_fp32" in r else "vs lm-eval fp32"
            delta = f"{_fmt(drift['max_abs_diff'], '.3g')} ({ref})"
            agree = f"{drift['argmax_agree']}/{drift['queries_compared']}"
            verdict = "reported"
        else:
            agg = r["vs_lm_eval"]
            delta = _fmt(agg["max_abs_diff"], ".2e")
            agree = f"{agg['argmax_agree']}/{agg['queries_compared']}"
            fails = [w for w, ok in (("speed", r["speed_pass"]), ("Δ", r["agreement_pass"])) if not ok]
            verdict = "pass" if not fails else f"fail ({', '.join(fails)})"
        lines.append(
            f"| {r['label']} | {r['llmlab']['queries']} | {_fmt(r['llmlab']['req_per_s'])} | "
            f"{_fmt(r['lm_eval']['req_per_s'])} | {r['ratio_req_per_s']:.2f}× | "
            f"{'–' if target is None else f'≥ {target}×'} | {verdict} | {delta} | {agree} |"
        )
    lines.append("")
    for mode, r in results["modes"].items():
        lab, ev = r["llmlab"], r["lm_eval"]
        lines.append(
            f"- {mode}: prompt+candidate tokens/s llmlab {lab['tokens_per_s']:.0f}, lm-eval {ev['tokens_per_s']:.0f} "
            f"({r['ratio_tokens_per_s']:.2f}×); forward tokens/s llmlab {lab['forward_tokens_per_s']:.0f}, lm-eval "
            f"{ev['forward_tokens_per_s']:.0f}; time llmlab {lab['seconds']:.1f} s, lm-eval {ev['seconds']:.1f} s; "
            f"accuracy llmlab {lab['accuracy']:.3f}, lm-eval {ev['accuracy']:.3f}"
        )
        if "drift_vs_llmlab_fp32" in r:
            d = r["drift_vs_llmlab_fp32"]
            lines.append(
                f"- bf16 drift vs llmlab fp32: max {d['max_abs_diff']:.4g}, mean {d['mean_abs_diff']:.4g} over "
                f"{d['requests_compared']} requests; argmax agrees on {d['argmax_agree']}/{d['queries_compared']}"
            )
    for mode, t in results["tokenization"].items():
        if t["mismatched"]:
            lines.append(
                f"- tokenization ({mode}): {t['mismatched']}/{t['requests']} requests tokenized differently by "
                f"llmlab and lm-eval ({t['by_kind']}), left out of the comparison"
            )
        else:
            lines.append(f"- tokenization ({mode}): all {t['requests']} requests tokenized identically")
    load = results["load"]
    ok = load["llmlab_fp32_s"] < LOAD_TARGET_S
    lines.append(
        f"- model load from the cache (llmlab, fp32): {load['llmlab_fp32_s']:.2f} s (target < {LOAD_TARGET_S:g} s: "
        f"{'pass' if ok else 'fail'}); llmlab bf16 {_fmt(load.get('llmlab_bf16_s'))} s; lm-eval HFLM "
        f"{_fmt(load.get('lm_eval_s'))} s"
    )
    libraries = ("torch", "transformers", "lm_eval")
    lines += ["", f"{machine_line(results, 'hardware', libraries)} Wall time {results['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


# ---- entry point ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llmlab.bench --only icl_scoring", description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=200, help="queries in all, split evenly over the tasks (200)")
    p.add_argument("--tasks", default=",".join(TASKS), help="implicit tasks (expression,relation)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for both sides (1)")
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8, help="the same for both sides (8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=2, help="queries each side scores before it is timed (2)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per task and side; the median is kept (1)")
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument(
        "--bf16-queries",
        type=int,
        default=None,
        help="queries for the bf16 mode (the first ones of each task; default: --queries)",
    )
    p.add_argument("--model", default="smollm2-135m", help="a conf/model/<name>.yaml (smollm2-135m)")
    p.add_argument("--cache-dir", default=None, help="llmlab's cache ($LLMLAB_CACHE or ~/.cache/llmlab)")
    p.add_argument("--out", default=str(REPO_ROOT / "outputs" / "bench" / f"{NAME}.json"))
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        p.error(f"--modes: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(MODES)}")
    if args.queries < len(args.tasks):
        p.error("--queries must be at least the number of tasks")
    return args


def main(argv: list[str] | None = None) -> dict:
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
        os.environ.setdefault(key, value)
    args = parse_args(argv)
    wall0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    cache_dir = Path(args.cache_dir or os.environ.get("LLMLAB_CACHE", "~/.cache/llmlab")).expanduser()
    model_cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(conf_dir() / "model" / f"{args.model}.yaml")
    )
    cpu = torch.device("cpu")
    if model_cfg.source != "random":
        model_dir(model_cfg, cache_dir)  # convert a PyPI GGUF on first use: not part of the timed load
    load: dict = {}
    t0 = time.perf_counter()
    model, tok = load_model(model_cfg, Hardware(cpu, torch.float32), cache_dir)
    load["llmlab_fp32_s"] = time.perf_counter() - t0
    scorer_bf16 = None
    if "bf16" in args.modes:
        t0 = time.perf_counter()
        model16, tok16 = load_model(model_cfg, Hardware(cpu, torch.bfloat16), cache_dir)
        load["llmlab_bf16_s"] = time.perf_counter() - t0
        scorer_bf16 = Scorer(model16, tok16, batch_size=args.batch_size)
    t0 = time.perf_counter()
    if model_cfg.source == "random":
        lm = make_hflm(model, tok, batch_size=args.batch_size)
    else:
        lm = make_hflm(model_dir(model_cfg, cache_dir), batch_size=args.batch_size)
    load["lm_eval_s"] = time.perf_counter() - t0
    torch.set_num_threads(args.threads)  # in case a library changed it

    per_task = split_queries(args.queries, args.tasks)
    n16 = max(len(args.tasks), min(args.bf16_queries or args.queries, args.queries))
    log.print(f"building prompts: {per_task}")
    queries: dict[str, dict[str, list[Query]]] = {"per_query": {}, "fixed": {}}
    for task, n in per_task.items():
        for mode, qs in build_queries(task, n, args.shots, args.seed).items():
            queries[mode][task] = qs

    results = run_benchmark(
        queries,
        Scorer(model, tok, batch_size=args.batch_size),
        lm,
        scorer_bf16,
        modes=args.modes,
        warmup=args.warmup,
        repeats=args.repeats,
        verbose=True,
        bf16_queries=split_queries(n16, args.tasks),
    )
    results = {
        "benchmark": NAME,
        "settings": {
            "model": args.model,
            "queries": args.queries,
            "per_task": per_task,
            "shots": args.shots,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "seed": args.seed,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "modes": args.modes,
            "bf16_queries": n16,
            "variant": "pattern",
            "lm_eval_model": "HFLM(dtype=float32, device=cpu)",
        },
        "hardware": hardware_info(args.threads),
        "load": load,
        **results,
    }
    load_ok = load["llmlab_fp32_s"] < LOAD_TARGET_S
    results["targets"] = {
        **{
            f"{m}_speed": {"target": f">= {TARGETS[m]}x", "value": r["ratio_req_per_s"], "pass": r["speed_pass"]}
            for m, r in results["modes"].items()
            if m != "bf16"
        },
        **{
            f"{m}_agreement": {
                "target": f"max |diff| <= {MAX_ABS_DIFF}",
                "value": r["vs_lm_eval"]["max_abs_diff"],
                "pass": r["agreement_pass"],
            }
            for m, r in results["modes"].items()
            if m != "bf16"
        },
        "load_time": {"target": f"< {LOAD_TARGET_S} s", "value": load["llmlab_fp32_s"], "pass": load_ok},
    }
    results["wall_s"] = time.perf_counter() - wall0
    results["output"] = str(args.out)
    write_json(args.out, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
