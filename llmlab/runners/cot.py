"""Few-shot chain-of-thought planning on Blocksworld: one greedy plan per problem (optionally with speculative
decoding, identical output), parsed and validated by the simulator. Finished problems are appended to
`problems.partial.jsonl`, so a killed run started again in the same directory goes on with the next one."""

from __future__ import annotations

import time

from omegaconf import DictConfig

from llmlab.blocksworld.data import load_blocksworld, row_problem
from llmlab.blocksworld.domain import validate
from llmlab.blocksworld.runs import append, draw_shots, finish, load_done, summarize
from llmlab.blocksworld.text import action_text, fewshot_prefix, parse_plan, query_text
from llmlab.config import CoTConfig
from llmlab.decoding.prefix_cache import PrefixCache
from llmlab.decoding.speculative import greedy, speculative, stopper
from llmlab.models.loading import load_model
from llmlab.models.partners import build_draft
from llmlab.progress import progress_bar
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult

STOP = ("[PLAN END]", "\n[")


@register_runner("cot", schema=CoTConfig, objective=("accuracy", "maximize"))
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m, seed = cfg.method, cfg.seed
    data, prompts = load_blocksworld(cfg.dataset, seed)
    rows = data.to_list()[: m.limit]
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, cfg.hardware.attn_implementation, seed)
    draft = build_draft(m.draft, model, tok, ctx.hw, cfg.cache_dir, cfg.hardware.attn_implementation)
    prefix = PrefixCache()  # prompts share the instructions (and demonstrations the shot draw repeats)

    partial = ctx.run_dir.file("problems.partial.jsonl")
    done = load_done(partial)
    with progress_bar(ctx.hw.is_main) as bar:
        task = bar.add_task(f"cot {cfg.dataset.name}", total=len(rows), completed=len(done))
        for row in rows:
            if row["id"] in done:
                continue
            demos = draw_shots(prompts.pool, m.shots, seed, row["id"])
            prompt = fewshot_prefix(prompts.intro, demos) + query_text(row["init_text"], row["goal_text"])
            ids = tok(prompt, add_special_tokens=True).input_ids
            stop = stopper(tok, m.max_new_tokens, STOP)
            gen, stats = (
                speculative(model, draft, ids, stop, m.draft.n_draft, prefix)
                if draft
                else greedy(model, ids, stop, prefix)
            )
            text = tok.decode(gen, skip_special_tokens=True)
            plan = parse_plan(text)
            verdict = validate(row_problem(row), plan)
            record = {
                "id": row["id"],
                "correct": verdict.valid,
                "reason": verdict.reason,
                "n_steps": row["n_steps"],
                "generated": text,
                "plan": [action_text(a) if a else None for a in plan],
                "prompt_tokens": len(ids),
                "gen_tokens": stats.new_tokens,
                "wall_s": stats.seconds,
                "acceptance": stats.acceptance,
            }
            done[row["id"]] = record
            append(partial, record)
            bar.advance(task)

    records = [done[r["id"]] for r in rows]
    metrics = {cfg.dataset.name: summarize(records)}
    results = {
        "runner": "cot",
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "shots": m.shots,
        "seed": seed,
        "draft": m.draft.kind,
        "metrics": metrics,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return finish(ctx, cfg.dataset.name, records, results, partial)
