"""Information flow between word-level (WL) and text-level (TL) labels (`method=info_flow`, MRE spec 2.3).

Prompt (one demonstration per TL class, drawn per query with a seeded RNG, in random order):
`Review: <x>\nWords: <span>=<label>; ...\nSentiment: <tl>\n\n` ... `Review: <x_q>\nWords: <gold WL>\nSentiment:`
("Text:"/"Topic:" for topic datasets). Token sets: T = text tokens of every block, W = the `Words:` contents,
P = the demonstrations' TL label tokens, q = the prediction position. Per layer and example the runner averages the
saliency `I_l(i, j)` (llmlab.analysis.saliency) over the pair sets

    S_tw: i in W, j in T (same block)     S_wq: i = q, j in W (query)     S_tq: i = q, j in T (query)
    S_pq: i = q, j in P                   S_wp: i in P, j in W (same demo)  S_rest: every other causal pair

then reports mean and std over queries, shares per layer and shallow/middle/deep thirds. Conditions: `gold` WL in
the query, `shuffled` (the WL line of another test query) and `none` (no Words line in the query); for each, TL
accuracy and mean gold log-prob over the label words, and its change against gold (same queries). Per query and
condition, `predictions.jsonl` keeps those values and the reported flow thirds, so `llmlab report` gives them
intervals over seeds and queries (no test is run inside one run: a few queries are not one).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from omegaconf import DictConfig

from llmlab.analysis.saliency import attention_saliency, flow_means
from llmlab.config import InfoFlowConfig
from llmlab.data.mre.loader import MreData, load_mre
from llmlab.data.mre.prompts import key_words, label_first_tokens, words_line
from llmlab.errors import LlmlabError
from llmlab.io import write_json, write_jsonl
from llmlab.models.loading import load_model
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult
from llmlab.seeding import make_rng

FLOWS = ("S_tw", "S_wq", "S_tq", "S_pq", "S_wp", "S_rest")


def build_prompt(data: MreData, query: dict, demos: list[dict], words: str | None) -> tuple[str, list[tuple]]:
    """The prompt string and its segments `(kind, block, start, end)` in characters; kind is T, W or P."""
    text_key, label_key = key_words(data)
    parts, segs, pos = [], [], 0

    def add(s: str, kind: str | None = None, block: int = -1):
        nonlocal pos
        if kind:
            segs.append((kind, block, pos, pos + len(s)))
        parts.append(s)
        pos += len(s)

    for b, d in enumerate(demos):
        add(f"{text_key}: ")
        add(d["text"], "T", b)
        add("\nWords: ")
        add(words_line(d["wl"]), "W", b)
        add(f"\n{label_key}: ")
        add(d["tl"], "P", b)
        add("\n\n")
    q = len(demos)
    add(f"{text_key}: ")
    add(query["text"], "T", q)
    if words is not None:
        add("\nWords: ")
        add(words, "W", q)
    add(f"\n{label_key}:")
    return "".join(parts), segs


def pair_masks(n: int, token_sets: dict[tuple[str, int], list[int]], query_block: int) -> dict[str, torch.Tensor]:
    """Boolean `[n, n]` masks of the flows' (i, j) pairs for a sequence of `n` tokens with prediction at n - 1."""
    q = n - 1
    masks = {f: torch.zeros(n, n, dtype=torch.bool) for f in FLOWS}
    blocks = {b for _, b in token_sets}
    for b in blocks:
        t, w, p = (token_sets.get((k, b), []) for k in "TWP")
        if w and t:
            masks["S_tw"][torch.tensor(w)[:, None], torch.tensor(t)[None, :]] = True
        if p and w:
            masks["S_wp"][torch.tensor(p)[:, None], torch.tensor(w)[None, :]] = True
        if b != query_block and p:
            masks["S_pq"][q, p] = True
    masks["S_wq"][q, token_sets.get(("W", query_block), [])] = True
    masks["S_tq"][q, token_sets.get(("T", query_block), [])] = True
    causal = torch.ones(n, n, dtype=torch.bool).tril(-1)
    named = torch.zeros(n, n, dtype=torch.bool)
    for f in FLOWS[:-1]:
        masks[f] &= causal
        named |= masks[f]
    masks["S_rest"] = causal & ~named
    return masks


def tokenize(tok, prompt: str, segs: list[tuple]) -> tuple[list[int], dict[tuple[str, int], list[int]]]:
    enc = tok(prompt, add_special_tokens=True, return_offsets_mapping=True)
    sets: dict[tuple[str, int], list[int]] = {}
    for t, (a, b) in enumerate(enc.offset_mapping):
        if b <= a:
            continue  # special tokens
        for kind, block, s, e in segs:
            if a < e and b > s:
                sets.setdefault((kind, block), []).append(t)
                break
    return list(enc.input_ids), sets


def draw_demos(data: MreData, seed: int, index: int, per_class: int) -> list[dict]:
    return data.demos(make_rng(seed, "mre-info-flow-demos", index), per_class)


def summarize_flows(per_example: list[dict[str, list]]) -> dict:
    """Mean and std over queries per layer, shallow/middle/deep thirds of the mean, share of the total per layer."""
    out = {}
    for f in FLOWS:
        vals = np.array([[np.nan if v is None else v for v in ex[f]] for ex in per_example], dtype=float)
        if np.isnan(vals).all():
            out[f] = None
            continue
        mean, std = np.nanmean(vals, 0), np.nanstd(vals, 0)
        thirds = [float(np.mean(part)) if len(part) else None for part in np.array_split(mean, 3)]
        out[f] = {"mean": mean.tolist(), "std": std.tolist(), "thirds": thirds}
    total = sum(np.array(out[f]["mean"]) for f in FLOWS if out[f])
    for f in FLOWS:
        if out[f]:
            out[f]["share"] = (np.array(out[f]["mean"]) / np.where(total > 0, total, 1)).tolist()
    return out


def query_thirds(flows: dict[str, list]) -> dict[str, float | None]:
    """One query's reported flows: the deep-third mean of S_wq, S_tq, S_rest and the shallow-third one of S_tw,
    S_rest (their means over queries are the run's thirds when no layer is empty)."""
    out = {}
    for part, names in ((2, ("S_wq", "S_tq", "S_rest")), (0, ("S_tw", "S_rest"))):
        for f in names:
            layers = np.array_split(np.array([np.nan if v is None else v for v in flows[f]], dtype=float), 3)[part]
            out[f"{('shallow', 'middle', 'deep')[part]}_{f}"] = None if np.isnan(layers).all() else float(layers.mean())
    return out


@register_runner("info_flow", schema=InfoFlowConfig)
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m = cfg.method
    if "gold" not in m.conditions:  # its entries are checked with the config (llmlab.config)
        raise LlmlabError(f"method.conditions must include gold, got {list(m.conditions)}")
    data = load_mre(cfg.dataset, cfg.seed)
    model, tok = load_model(cfg.model, ctx.hw, cfg.cache_dir, "eager", cfg.seed)
    queries = data.test[: m.limit]
    if len(queries) < 2 and "shuffled" in m.conditions:
        raise LlmlabError("the shuffled condition needs at least 2 test queries")
    text_key, label_key = key_words(data)
    shared, label_ids = label_first_tokens(tok, f"{text_key}: x\n{label_key}:", data.labels)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    t0 = time.perf_counter()
    results: dict = {
        "runner": "info_flow",
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "n_queries": len(queries),
        "labels": data.labels,
        "skipped_lines": data.skipped,
        "manifest": data.manifest,
        "conditions": {},
    }
    per_query_logp, rows = {}, []
    for cond in m.conditions:
        seqs, sets, gold = [], [], []
        for i, qrow in enumerate(queries):
            words = {
                "gold": words_line(qrow["wl"]),
                "shuffled": words_line(queries[(i + 1) % len(queries)]["wl"]),
                "none": None,
            }[cond]
            prompt, segs = build_prompt(data, qrow, draw_demos(data, cfg.seed, i, m.demos_per_class), words)
            ids, token_sets = tokenize(tok, prompt, segs)
            seqs.append(ids + shared)
            sets.append(token_sets)
            gold.append(data.labels.index(qrow["tl"]))
        maps, logp = attention_saliency(model, seqs, label_ids, gold, m.batch_size, pad)
        flows = [
            flow_means(s, pair_masks(len(seq), ts, len(data.labels) * m.demos_per_class))
            for s, seq, ts in zip(maps, seqs, sets)
        ]
        gold_lp = logp[torch.arange(len(gold)), torch.tensor(gold)].numpy()
        per_query_logp[cond] = gold_lp
        correct = (logp.argmax(-1) == torch.tensor(gold)).tolist()
        for i, (flow, ok, lp) in enumerate(zip(flows, correct, gold_lp.tolist())):
            rows.append({"variant": cond, "query": i, "accuracy": ok, "gold_logprob": lp, **query_thirds(flow)})
        results["conditions"][cond] = {
            "tl_accuracy": float(np.mean(correct)),
            "gold_logprob": float(gold_lp.mean()),
            "mean_tokens": float(np.mean([len(s) for s in seqs])),
            "flows": summarize_flows(flows),
        }
    for cond in m.conditions:
        if cond != "gold":
            diff = per_query_logp[cond] - per_query_logp["gold"]
            acc = {c: results["conditions"][c]["tl_accuracy"] for c in (cond, "gold")}
            results["conditions"][cond]["delta_vs_gold"] = {
                "tl_accuracy": acc[cond] - acc["gold"],
                "gold_logprob": float(diff.mean()),
            }
            for row in rows:
                if row["variant"] == cond:
                    row["gold_logprob_vs_gold"] = float(diff[row["query"]])
    results["metrics"] = {}  # per condition: the means of the rows' values, for `llmlab report`
    for cond in m.conditions:
        rs = [r for r in rows if r["variant"] == cond]
        keys = [k for k in rs[0] if k not in ("variant", "query") and all(r[k] is not None for r in rs)]
        results["metrics"][cond] = {k: float(np.mean([r[k] for r in rs])) for k in keys} | {"n": len(rs)}
    write_jsonl(ctx.run_dir.file("predictions.jsonl"), rows)
    results["timing"] = {"saliency_s": time.perf_counter() - t0}
    results["plot"] = plot_flows(results, ctx.run_dir.file("info_flow.png"))
    write_json(ctx.run_dir.file("results.json"), results)
    flat = {
        f"{c}/{k}": v
        for c, r in results["conditions"].items()
        for k, v in r.items()
        if isinstance(v, float) and math.isfinite(v)
    }
    ctx.log_final(flat)
    return results


def plot_flows(results: dict, path) -> str:
    """Per-layer flow curves, one panel per condition (solid); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmlab.figures import save_figure

    conds = results["conditions"]
    fig, axes = plt.subplots(1, len(conds), figsize=(4.2 * len(conds), 3.4), squeeze=False)
    for ax, (cond, r) in zip(axes[0], conds.items()):
        for f, v in r["flows"].items():
            if v:
                ax.plot(range(len(v["mean"])), v["mean"], marker=".", label=f)
        ax.set_title(f"{results['dataset']} / {cond} (acc {r['tl_accuracy']:.2f})", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean saliency")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{results['model']} seed {results['seed']}", fontsize=9)
    save_figure(fig, path)
    return str(path)
