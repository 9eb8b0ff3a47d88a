"""Node expansion with and without speculative decoding: the LLM world model's `[CHANGE]` generation (greedy) on the
same Blocksworld node prompts, plain vs speculative with `--draft lookup` (n-gram lookup in the prompt and in
earlier outputs, no model; default) or `--draft early_exit` (the model's first `--draft-layer` layers + its final
norm and head); `--n-draft` tokens per check. Both sides reuse the KV cache of the prompt prefix they share with
earlier nodes (as the MCTS runner does; `--no-prefix-cache` turns it off for both). HF `generate` (greedy, same stop
string, no prefix cache: it has none across calls) is timed on the same prompts as the library baseline.

    python -m llmlab.bench --only spec_decode [--nodes 12] [--threads 1] [--draft lookup|early_exit] [--n-draft 8]

Prompts: the first transitions (random legal actions, seeded) of generated problems, in the PlanBench world-update
format when the shared prompt files are present (built-in template otherwise). Each node is decoded plain and
speculative, alternating the order node by node after one warm-up node; outputs must be token-identical. Reports the
per-node latency ratio (target >= 1.3x on CPU), nodes/s, tokens/s, the acceptance rate and tokens/s against HF
`generate`. Results go to
`outputs/bench/spec_decode.json`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import torch

from llmlab.bench.machine import machine, machine_line
from llmlab.blocksworld.data import DEFAULT_ROOT, load_prompts, prompt_file_exists
from llmlab.blocksworld.domain import apply, generate_problems, legal_actions
from llmlab.blocksworld.text import action_text, state_text, update_template, world_update_prompt
from llmlab.decoding.prefix_cache import PrefixCache
from llmlab.decoding.speculative import PromptLookup, greedy, speculative, stopper
from llmlab.hardware import Hardware
from llmlab.io import write_json
from llmlab.models.loading import load_model
from llmlab.models.partners import early_exit_model, named_model_config
from llmlab.paths import REPO_ROOT

NAME = "spec_decode"
TARGET = 1.3


def node_prompts(n: int, seed: int = 0) -> list[str]:
    """World-update prompts of `n` transitions from generated 4- to 6-step problems."""
    root = DEFAULT_ROOT if DEFAULT_ROOT.is_dir() and prompt_file_exists(DEFAULT_ROOT, 2) else None
    templates = load_prompts(root, "easy", 2).templates
    rng, out = random.Random(seed), []
    for problem, _ in generate_problems(n, 4, seed):
        state = problem.init
        for _ in range(rng.randint(0, 3)):
            state = apply(state, rng.choice(legal_actions(state, problem.blocks)))
        action = rng.choice(legal_actions(state, problem.blocks))
        out.append(world_update_prompt(update_template(templates, action), state_text(state), action_text(action)))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m llmlab.bench --only spec_decode")
    p.add_argument("--model", default="smollm2-135m", help="a conf/model name")
    p.add_argument("--nodes", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--draft", default="lookup", choices=["lookup", "early_exit"])
    p.add_argument("--draft-layer", type=int, default=8)
    p.add_argument("--n-draft", type=int, default=8)
    p.add_argument("--no-prefix-cache", action="store_true", help="both sides prefill every prompt in full")
    p.add_argument("--no-hf", action="store_true", help="skip the HF generate baseline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO_ROOT / "outputs" / "bench" / f"{NAME}.json"))
    args, _ = p.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    cache = os.environ.get("LLMLAB_CACHE", str(Path.home() / ".cache" / "llmlab"))
    hw = Hardware(torch.device("cuda" if torch.cuda.is_available() else "cpu"), torch.float32)
    model, tok = load_model(named_model_config(args.model), hw, cache)
    draft = early_exit_model(model, args.draft_layer) if args.draft == "early_exit" else PromptLookup()
    prompts = node_prompts(args.nodes + 1)
    prefix = {kind: None if args.no_prefix_cache else PrefixCache() for kind in ("plain", "spec")}
    decode = {
        "plain": lambda ids, stop: greedy(model, ids, stop, prefix["plain"]),
        "spec": lambda ids, stop: speculative(model, draft, ids, stop, args.n_draft, prefix["spec"]),
    }
    if not args.no_hf:
        decode["hf"] = lambda ids, stop: hf_generate(model, tok, ids, args.max_new_tokens)
    rows = []
    for i, prompt in enumerate(prompts):
        ids = tok(prompt, add_special_tokens=True).input_ids
        stop = stopper(tok, args.max_new_tokens, ("\n[",))
        runs = {}
        for kind in list(decode) if i % 2 else list(decode)[::-1]:  # alternate the order
            if hw.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            gen, st = decode[kind](ids, stop)
            if hw.device.type == "cuda":
                torch.cuda.synchronize()
            runs[kind] = (gen, st, time.perf_counter() - t0)
        if i == 0:
            continue  # warm-up
        (g0, _, t0), (g1, s1, t1) = runs["plain"], runs["spec"]
        rows.append(
            {
                "prompt_tokens": len(ids),
                "new_tokens": len(g0),
                "identical": g0 == g1,
                "plain_s": t0,
                "spec_s": t1,
                "speedup": t0 / t1,
                "acceptance": s1.acceptance,
                "target_forwards": s1.target_forwards,
                "text": tok.decode(g0),
                **({"hf_s": runs["hf"][2], "hf_tokens": len(runs["hf"][0])} if "hf" in runs else {}),
            }
        )
    plain_s, spec_s = sum(r["plain_s"] for r in rows), sum(r["spec_s"] for r in rows)
    tokens = sum(r["new_tokens"] for r in rows)
    accepted = [r["acceptance"] for r in rows if r["acceptance"] is not None]
    result = {
        "benchmark": NAME,
        "model": args.model,
        "device": str(hw.device),
        "threads": args.threads,
        "machine": machine(),
        "draft": args.draft,
        "draft_layer": args.draft_layer if args.draft == "early_exit" else None,
        "n_layers": model.config.num_hidden_layers,
        "n_draft": args.n_draft,
        "nodes": len(rows),
        "all_identical": all(r["identical"] for r in rows),
        "speedup_total": plain_s / spec_s,
        "speedup_median_node": statistics.median(r["speedup"] for r in rows),
        "plain_nodes_per_s": len(rows) / plain_s,
        "spec_nodes_per_s": len(rows) / spec_s,
        "plain_tokens_per_s": tokens / plain_s,
        "spec_tokens_per_s": tokens / spec_s,
        "acceptance_mean": statistics.mean(accepted) if accepted else None,
        "target": TARGET,
        "meets_target": plain_s / spec_s >= TARGET,
        "prefix_cache": not args.no_prefix_cache,
        "rows": rows,
    }
    if not args.no_hf:
        hf_tps = sum(r["hf_tokens"] for r in rows) / sum(r["hf_s"] for r in rows)
        result.update(
            hf_tokens_per_s=hf_tps,
            plain_vs_hf=result["plain_tokens_per_s"] / hf_tps,
            spec_vs_hf=result["spec_tokens_per_s"] / hf_tps,
        )
    write_json(args.out, result)
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    """The benchmark's row from its JSON (printed by `main`, and a README table kind)."""
    draft = (
        "lookup (prompt + earlier outputs)"
        if result["draft"] == "lookup"
        else f"early exit after layer {result['draft_layer']}"
    )
    cache = "prefix KV cache on both sides" if result["prefix_cache"] else "every prompt prefilled in full"
    hf = (
        f"{result['plain_vs_hf']:.2f}× / {result['spec_vs_hf']:.2f}× ({result['hf_tokens_per_s']:.2f} tokens/s)"
        if "hf_tokens_per_s" in result
        else "–"
    )
    acceptance = "–" if result["acceptance_mean"] is None else f"{result['acceptance_mean']:.2f}"
    identical = sum(r["identical"] for r in result["rows"])
    lines = [
        "| setting | outputs identical | speed-up (total time) | median node | nodes/s plain → spec | "
        "tokens/s plain → spec | acceptance | tokens/s vs HF generate: plain / spec |",
        "|---|---|---|---|---|---|---|---|",
        f"| {draft}, n ≤ {result['n_draft']}, {cache} | {identical}/{result['nodes']} | "
        f"{result['speedup_total']:.2f}× | {result['speedup_median_node']:.2f}× | "
        f"{result['plain_nodes_per_s']:.3f} → {result['spec_nodes_per_s']:.3f} | "
        f"{result['plain_tokens_per_s']:.2f} → {result['spec_tokens_per_s']:.2f} | {acceptance} | {hf} |",
        "",
        f"{result['model']}, {result['threads']} thread(s), {result['device']}; target ≥ {result['target']}× "
        f"({'met' if result['meets_target'] else 'missed'}). " + machine_line(result),
    ]
    return "\n".join(lines) + "\n"


def hf_generate(model, tok, ids: list[int], max_new_tokens: int):
    """HF `generate`, greedy, stopping at the same string; returns (new token ids, None)."""
    x = torch.tensor([ids], device=model.device)
    out = model.generate(
        x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        stop_strings=["\n["],
        tokenizer=tok,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    return out[0, len(ids) :].tolist(), None
