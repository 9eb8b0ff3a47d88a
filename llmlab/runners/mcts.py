"""MCTS planning on Blocksworld (RAP-MCTS and SC-MCTS*, `method=mcts|mcts_rap|sc_mcts`).

Per problem: draw the demonstrations (seeded), build the rule world model and the LLM-scored search config, run
`llmlab.search.mcts.MCTS`, validate the answer path with the simulator, dump the tree to `trees/<id>.json`, append
the record to `problems.partial.jsonl` (a killed run resumes with the next unsolved problem). With a normalised reward
the prior statistics come first, from random rollouts on generated problems (`reward_prior.json`); the running
statistics are saved after every problem (`reward_norm.json`).
"""

from __future__ import annotations

import random
import time

from omegaconf import DictConfig

from llmlab.blocksworld.data import load_blocksworld, row_problem
from llmlab.blocksworld.domain import generate_problems, validate
from llmlab.blocksworld.runs import append, draw_shots, finish, load_done, summarize
from llmlab.blocksworld.search import BWSearch, RuleWorld, random_rollout_samples
from llmlab.blocksworld.text import action_text, parse_action, update_template, world_update_prompt
from llmlab.config import MCTSConfig
from llmlab.decoding.prefix_cache import PrefixCache
from llmlab.decoding.speculative import greedy, speculative, stopper
from llmlab.errors import LlmlabError
from llmlab.io import write_json
from llmlab.models.loading import load_model
from llmlab.models.partners import build_amateur, build_draft
from llmlab.progress import progress_bar
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult
from llmlab.search.mcts import MCTS, MCTSSettings, dump_tree
from llmlab.search.rewards import ActionScorer, RewardModel


@register_runner("mcts", schema=MCTSConfig, objective=("accuracy", "maximize"))
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m, seed = cfg.method, cfg.seed
    check(m)
    data, prompts = load_blocksworld(cfg.dataset, seed)
    rows = data.to_list()[: m.limit]
    attn = cfg.hardware.attn_implementation
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, attn, seed)
    comps = set(m.reward.components)
    amateur = build_amateur(m.amateur, model, tok, ctx.hw, cfg.cache_dir, attn) if "jsd" in comps else None
    scorer = ActionScorer(model, tok, amateur, m.reward.jsd_impl, m.batch_size) if comps - {"random"} else None
    rewards = RewardModel(m.reward, scorer, seed)
    draft = build_draft(m.draft, model, tok, ctx.hw, cfg.cache_dir, attn) if m.node_text == "generate" else None
    narrate = narrator(model, tok, draft, prompts.templates, m) if m.node_text == "generate" else None

    if scorer is not None:
        scorer.warm(prompts.self_eval.split("<init_state>")[0])
    norm_file = ctx.run_dir.file("reward_norm.json")
    if rewards.norms:
        prepare_norms(rewards, ctx, cfg, prompts, norm_file)

    partial = ctx.run_dir.file("problems.partial.jsonl")
    done = load_done(partial)
    trees = ctx.run_dir.file("trees")
    with progress_bar(ctx.hw.is_main) as bar:
        task = bar.add_task(f"mcts {cfg.dataset.name}", total=len(rows), completed=len(done))
        for row in rows:
            if row["id"] in done:
                continue
            record, tree = solve(row, m, seed, prompts, rewards, scorer, narrate)
            if m.dump_trees:
                write_json(trees / f"{row['id']}.json", tree)
            if rewards.norms:
                write_json(norm_file, rewards.norm_state())
            done[row["id"]] = record
            append(partial, record)
            bar.advance(task)

    records = [done[r["id"]] for r in rows]
    metrics = {cfg.dataset.name: summarize(records)}
    results = {
        "runner": "mcts",
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "seed": seed,
        "components": list(m.reward.components),
        "normalise": m.reward.normalise,
        "backprop": m.backprop,
        "w_exp": m.w_exp,
        "n_iters": m.n_iters,
        "amateur": m.amateur.kind if amateur else None,
        "node_text": m.node_text,
        "draft": m.draft.kind,
        "metrics": metrics,
        "scorer": dict(scorer.stats) if scorer else None,
    }
    return finish(ctx, cfg.dataset.name, records, results, partial)


def check(m) -> None:
    if m.n_iters < 1:
        raise LlmlabError(f"method.n_iters must be >= 1, got {m.n_iters}")


def solve(row: dict, m, seed: int, prompts, rewards: RewardModel, scorer, narrate) -> tuple[dict, dict]:
    """Search one problem; its record and its tree."""
    problem = row_problem(row)
    depth = m.depth_limit or row["n_steps"]
    demos = draw_shots(prompts.pool, m.shots, seed, row["id"])
    search = BWSearch(problem, prompts.intro, demos, prompts.self_eval, rewards)
    if scorer is not None:
        for step in range(0, depth + 1, 2):
            scorer.warm(search.prefix(step))
    rewards.cache.clear()  # contexts of another problem never recur
    settings = MCTSSettings(
        n_iters=m.n_iters,
        depth_limit=depth,
        w_exp=m.w_exp,
        uct_with_fast_reward=m.uct_with_fast_reward,
        simulate=m.simulate,
        output=m.output,
        backprop=m.backprop,
        bp_lambda=m.bp_lambda,
        bp_value=m.bp_value,
        seed=seed,
    )
    t0 = time.perf_counter()
    result = MCTS(RuleWorld(problem, depth, narrate), search, settings).run()
    wall = time.perf_counter() - t0
    plan = [n.action for n in result.path[1:]]
    verdict = validate(problem, plan) if plan else None
    expanded = [n for n in result.nodes if n.state is not None]
    gen = [n.aux for n in expanded if "gen_s" in n.aux]
    drafted = [a for a in gen if a.get("accept") is not None]
    record = {
        "id": row["id"],
        "correct": bool(verdict and verdict.valid),
        "reason": verdict.reason if verdict else "no terminal path",
        "n_steps": row["n_steps"],
        "plan": [action_text(a) for a in plan],
        "n_nodes": len(result.nodes),
        "n_expanded": len(expanded),
        "wall_s": wall,
        "s_per_node": wall / max(1, len(expanded)),
        "gen_tokens": sum(a["gen_tokens"] for a in gen) if gen else None,
        "gen_s_per_node": sum(a["gen_s"] for a in gen) / len(gen) if gen else None,
        "acceptance": sum(a["accept"] for a in drafted) / len(drafted) if drafted else None,
    }
    tree = dump_tree(
        result,
        lambda n: {
            "step_text": action_text(n.action) if n.action else None,
            **{k: v for k, v in n.aux.items() if k != "goal_reached"},
        },
    )
    tree.update(id=row["id"], correct=record["correct"], plan=record["plan"])
    return record, tree


def narrator(model, tok, draft, templates: dict, m):
    """Per transition: greedy generation of the world model's [CHANGE] text (speculative with a draft); the prompts
    of one action type share their few-shot block, whose KV cache is reused."""
    prefix = PrefixCache()

    def narrate(state: str, action: str) -> dict:
        prompt = world_update_prompt(update_template(templates, parse_action(action)), state, action)
        ids = tok(prompt, add_special_tokens=True).input_ids
        stop = stopper(tok, m.node_max_new_tokens, ("\n[",))
        if draft is not None:
            gen, stats = speculative(model, draft, ids, stop, m.draft.n_draft, prefix)
        else:
            gen, stats = greedy(model, ids, stop, prefix)
        return {
            "change": tok.decode(gen, skip_special_tokens=True),
            "gen_s": stats.seconds,
            "gen_tokens": stats.new_tokens,
            "accept": stats.acceptance,
        }

    return narrate


def prepare_norms(rewards: RewardModel, ctx: RunContext, cfg, prompts, norm_file) -> None:
    """Running statistics from an interrupted run, else prior statistics from random rollouts on generated
    problems of the split's length (never the test problems)."""
    if norm_file.exists():
        import json

        rewards.load_norm_state(json.loads(norm_file.read_text()))
        return
    m = cfg.method
    prior_file = ctx.run_dir.file("reward_prior.json")
    step = int(dict(cfg.dataset.options).get("step", 2))
    rng = random.Random(f"prior-{cfg.seed}")
    samples = []
    for i, (problem, _) in enumerate(generate_problems(m.reward.prior_problems, step, cfg.seed + 10_000)):
        demos = draw_shots(prompts.pool, m.shots, cfg.seed, f"prior-{i}")
        search = BWSearch(problem, prompts.intro, demos, prompts.self_eval, rewards)
        for _ in range(m.reward.prior_rollouts):
            samples.extend(random_rollout_samples(search, step, rng))
    if m.reward.fit_regions:
        rewards.fit_regions(samples)
    for raw in samples:
        rewards.add_prior(raw)
    write_json(prior_file, {"samples": samples, "stats": rewards.norm_state()})
