"""In-context learning evaluation: k-shot prompts, scored by greedy generation and by candidate log-likelihood.

For each test item the prompt is `header + k demonstrations + question`; demonstrations are drawn from the pool
per query with a seeded RNG (or once for all queries with `method.fixed_demos=true`, whose shared prefix the scorer
then computes only once). Scored items are appended to `predictions.partial.jsonl` as they finish, so a killed run
started again in the same directory resumes where it stopped.

Every prompt plus its answer must fit the model's context: all are checked before scoring starts, and one that does
not fit is an error naming the item, or with `method.truncate=left` is cut from the left (results.json counts them
as `truncated`). With `method.limit`, only the first `limit` test items per variant are generated.
"""

from __future__ import annotations

import json
import time

from omegaconf import DictConfig

from llmlab.config import ICLConfig
from llmlab.data.loading import load_eval_data
from llmlab.errors import LlmlabError
from llmlab.io import resume_jsonl, write_json, write_jsonl
from llmlab.metrics import loose_match, strict_match
from llmlab.models.loading import load_model
from llmlab.progress import progress_bar
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult
from llmlab.scoring import Request, Scorer
from llmlab.seeding import make_rng

CHUNK = 64  # items scored between two appends to the partial predictions file


@register_runner("icl", schema=ICLConfig, objective=("strict", "maximize"))
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m, seed = cfg.method, cfg.seed
    data = load_eval_data(cfg.dataset, seed, limit=m.limit)
    if m.shots < 0:
        raise LlmlabError(f"method.shots must be >= 0, got {m.shots}")
    if m.shots > len(data.pool):
        raise LlmlabError(f"method.shots={m.shots} is larger than the demonstration pool ({len(data.pool)} items)")
    if not m.scoring:  # its entries, and truncate, are checked with the config (llmlab.config)
        raise LlmlabError("method.scoring must not be empty; choose generate, loglik or both")
    truncate = m.get("truncate", "none")

    t0 = time.perf_counter()
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, cfg.hardware.attn_implementation, seed)
    load_s = time.perf_counter() - t0

    # 1. Build every prompt.
    items, pool = [], data.pool["demo"]
    for variant, rows in data.tests.items():
        for i, row in enumerate(rows.to_list()[: m.limit]):
            demos = draw_demos(pool, m.shots, m.fixed_demos, seed, variant, i)
            items.append({"row": row, "variant": variant, "prompt": data.header + "".join(demos) + row["question"]})
    if cfg.model.chat_template:
        for it in items:
            it["prompt"] = tok.apply_chat_template(
                [{"role": "user", "content": it["prompt"]}], tokenize=False, add_generation_prompt=True
            )
    # Every prompt and its answer must fit the context, checked before any scoring (method.truncate=left cuts).
    reqs = [
        Request(
            it["prompt"],
            it["row"]["candidates"] if "loglik" in m.scoring else (),
            (m.max_new_tokens or data.max_new_tokens) if "generate" in m.scoring else 0,
            id=it["row"]["id"],
        )
        for it in items
    ]
    try:
        fitted, n_truncated = Scorer(model, tok, truncate=truncate).fit(reqs)
    except LlmlabError as e:
        if truncate != "none":
            raise
        raise LlmlabError(f"{e}; method.truncate=left cuts over-long prompts from the left") from None
    for it, req in zip(items, fitted):
        it["prompt"] = req.context

    # 2. Score them, resuming from a partial run if there is one.
    partial = ctx.run_dir.file("predictions.partial.jsonl")
    done = {p["id"]: p for p in resume_jsonl(partial)}
    todo = [it for it in items if it["row"]["id"] not in done]
    max_new = m.max_new_tokens or data.max_new_tokens
    scorer = Scorer(model, tok, batch_size=m.batch_size)
    t1 = time.perf_counter()
    with progress_bar(ctx.hw.is_main) as bar, open(partial, "a") as out:
        task = bar.add_task(f"icl {cfg.dataset.name} k={m.shots}", total=len(items), completed=len(done))
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            reqs = [
                Request(
                    it["prompt"],
                    it["row"]["candidates"] if "loglik" in m.scoring else (),
                    max_new if "generate" in m.scoring else 0,
                )
                for it in chunk
            ]
            scored = scorer.score(reqs, on_batch=lambda k: bar.advance(task, k))
            for it, s in zip(chunk, scored):
                pred = prediction(it["row"], it["variant"], s, m.scoring)
                done[pred["id"]] = pred
                out.write(json.dumps(pred) + "\n")
            out.flush()
    score_s = time.perf_counter() - t1

    # 3. Metrics per variant, written atomically with the predictions.
    preds = [done[it["row"]["id"]] for it in items]
    metrics = {v: summarize([p for p in preds if p["variant"] == v]) for v in data.tests}
    results = {
        "runner": "icl",
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "task": cfg.dataset.get("task"),  # implicit datasets have task and faithful
        "faithful": cfg.dataset.get("faithful", False),
        "shots": m.shots,
        "fixed_demos": m.fixed_demos,
        "seed": seed,
        "truncated": n_truncated,
        "metrics": metrics,
        "timing": {
            "model_load_s": load_s,
            "scoring_s": score_s,
            "items": len(todo),
            "forward_tokens": scorer.stats["forward_tokens"],
            "tokens_per_s": scorer.stats["forward_tokens"] / score_s if score_s > 0 else None,
        },
    }
    write_jsonl(ctx.run_dir.file("predictions.jsonl"), preds)
    write_json(ctx.run_dir.file("results.json"), results)
    partial.unlink(missing_ok=True)
    flat = {f"{v}/{k}": val for v, mv in metrics.items() for k, val in mv.items()}
    ctx.log_final(flat)
    ctx.tracker.table("predictions", preds)
    return results


def draw_demos(pool: list[str], shots: int, fixed: bool, seed: int, variant: str, index: int) -> list[str]:
    """`shots` demonstrations without replacement: seeded per query, or one set shared by all (`fixed`)."""
    rng = make_rng(seed, "demos") if fixed else make_rng(seed, "demos", variant, index)
    return [pool[j] for j in rng.sample(range(len(pool)), shots)]


def prediction(row: dict, variant: str, s, scoring) -> dict:
    """One item's record: what the model produced and how each metric judged it."""
    pred = {"id": row["id"], "variant": variant, "answer": row["answer"], "context_tokens": s.context_tokens}
    if "generate" in scoring:
        pred.update(
            generated=s.generated,
            loose=loose_match(s.generated, row["answer"]),
            strict=strict_match(s.generated, row["answer"], row["answer_kind"]),
        )
    if "loglik" in scoring:
        best = max(range(len(s.loglik)), key=s.loglik.__getitem__)
        first = max(range(len(s.first_logprob)), key=s.first_logprob.__getitem__)
        pred.update(
            candidates=list(row["candidates"]),
            label=row["label"],
            loglik=s.loglik,
            loglik_correct=best == row["label"],
            label_logit_correct=first == row["label"],
        )
    return pred


def summarize(preds: list[dict]) -> dict:
    """Accuracy per metric over `preds` (one variant)."""
    out: dict = {"n": len(preds)}
    for key in ("strict", "loose", "loglik_correct", "label_logit_correct"):
        if preds and key in preds[0]:
            out[key.removesuffix("_correct")] = sum(bool(p[key]) for p in preds) / len(preds)
    return out
