"""`python -m llmlab.analysis.mre_report DIR`: the MRE tables (information flow, verbalizer, ablation) and per-layer
flow curves from every `results.json` under DIR, averaged over seeds; writes `DIR/mre_report.md` and
`DIR/info_flow_<model>.png`."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from llmlab.analysis import bootstrap
from llmlab.analysis.mre_metrics import class_codes, macro_f1_statistic, micro_f1_statistic, wl_counts
from llmlab.errors import LlmlabError
from llmlab.io import atomic_write, read_rows
from llmlab.paths import safe_name

N_BOOT = 2000


def load(root: Path) -> dict[str, list[dict]]:
    runs = defaultdict(list)
    for path in sorted(root.rglob("results.json")):
        try:
            r = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise LlmlabError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
        if isinstance(r, dict) and r.get("runner") in ("info_flow", "verbalizer", "mre_ablation"):
            r["_dir"] = path.parent
            runs[r["runner"]].append(r)
    return runs


def grouped(runs: list[dict]) -> dict[tuple, list[dict]]:
    out = defaultdict(list)
    for r in runs:
        out[r["model"], r["dataset"]].append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in sorted(out.items())}


def items(run: dict, name: str = "predictions.jsonl", sub: str = "") -> list[dict]:
    """A run's kept per-item rows; an error naming the run if it kept none (they carry every interval)."""
    rows = read_rows(run["_dir"] / sub, name)
    if not rows:
        raise LlmlabError(f"{run['_dir'] / sub}: no {name} (per-item rows) kept; re-run it to report it")
    return rows


def ci(e: dict) -> str:
    return f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"


def paired(per_cond: dict[str, list[np.ndarray]], arm: str, ref: str, statistic=None) -> tuple[dict, dict, dict]:
    """Estimates of `arm`, `ref` and `arm − ref` from one set of two-level draws (same seeds and items)."""
    kw = {"statistic": statistic} if statistic else {}
    draws = bootstrap.resample({arm: per_cond[arm], ref: per_cond[ref]}, N_BOOT, **kw)
    a, r = bootstrap.point(per_cond[arm], **kw), bootstrap.point(per_cond[ref], **kw)
    out = []
    for samples, point in ((draws[arm], a), (draws[ref], r), (draws[arm] - draws[ref], a - r)):
        lo, hi = bootstrap.interval(samples)
        out.append({"mean": point, "lo": lo, "hi": hi})
    return out[0], out[1], out[2]


def signed(e: dict) -> str:
    return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"


def info_flow_table(runs: list[dict]) -> list[str]:
    head = ["acc gold WL", "acc shuffled WL", "acc no WL", "Δ gold log-prob, shuffled − gold"]
    flows = ["deep_S_wq", "deep_S_tq", "deep_S_rest", "shallow_S_tw", "shallow_S_rest"]
    lines = [
        "| model | dataset | seeds | queries | " + " | ".join(head + [f.replace("_S", " S") for f in flows]) + " |",
        "|" + "---|" * (4 + len(head) + len(flows)),
    ]
    for (model, ds), rs in grouped(runs).items():
        per = [items(r) for r in rs]

        def values(variant, key, per=per):
            return [np.array([x[key] for x in rows if x["variant"] == variant], dtype=float) for rows in per]

        cells = [ci(bootstrap.estimate(values(v, "accuracy"), N_BOOT)) for v in ("gold", "shuffled", "none")]
        cells.append(ci(bootstrap.estimate(values("shuffled", "gold_logprob_vs_gold"), N_BOOT)))
        cells += [f"{bootstrap.point(values('gold', f)):.2e}" for f in flows]
        lines.append(f"| {model} | {ds} | {len(rs)} | {rs[0]['n_queries']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Accuracy and the log-prob change (paired, same queries): mean over seeds [{bootstrap.METHOD}; "
        f"{N_BOOT} resamples]. Flows (gold WL): mean over seeds and queries of the per-layer saliency averaged over "
        "the shallow (first) or deep (last) third of the layers.",
    ]
    return lines


def verbalizer_table(runs: list[dict]) -> list[str]:
    lines = [
        "| model | dataset | shots | seeds | n | baseline macro-F1 | KV macro-F1 | Δ KV − baseline |",
        "|" + "---|" * 8,
    ]
    wins = defaultdict(lambda: [0, 0, 0])
    for (model, ds), rs in grouped(runs).items():
        per = [(r["labels"], items(r)) for r in rs]
        stat = macro_f1_statistic(len(rs[0]["labels"]))
        for shots in sorted({row["shots"] for r in rs for row in r["table"]}):
            codes = {
                arm: [
                    class_codes(
                        *zip(*[(x["gold"], x["pred"]) for x in rows if (x["shots"], x["arm"]) == (shots, arm)]), labels
                    )
                    for labels, rows in per
                ]
                for arm in ("kv", "baseline")
            }
            kv, base, delta = paired(codes, "kv", "baseline", stat)
            w = wins[model, shots]
            w[0], w[1], w[2] = w[0] + (delta["mean"] > 0), w[1] + (delta["lo"] > 0), w[2] + 1
            lines.append(
                f"| {model} | {ds} | {shots} | {len(rs)} | {rs[0]['n_test']} | {ci(base)} | {ci(kv)} | "
                f"{signed(delta)} |"
            )
    lines += [
        "",
        f"Macro-F1 over the test items of each seed, mean over seeds [{bootstrap.METHOD}, the macro-F1 recomputed on "
        f"each draw; {N_BOOT} resamples]; Δ paired (same draws). KV > baseline (point), and with the interval above "
        "0, datasets: " + "; ".join(f"{m} k={s}: {a}/{n} ({b}/{n})" for (m, s), (a, b, n) in sorted(wins.items())),
    ]
    return lines


def ablation_labels(run: dict) -> list[str]:
    """The TL classes of an ablation run: as recorded, else (runs before they were) every class its TL conditions'
    items hold as gold or prediction (the same classes where each occurs at least once)."""
    if run.get("labels"):
        return list(run["labels"])
    found = {
        x[k]
        for c in run["conditions"]
        if ABLATION.get(c, ("wl",))[0] == "tl"
        for x in items(run, sub=c)
        for k in ("gold_tl", "tl")
        if x[k] is not None
    }
    return sorted(found)


ABLATION = {  # condition: (level, reference for its paired Δ)
    "tl_only": ("tl", None),
    "tl_plus_wli": ("tl", "tl_only"),
    "tl_plus_wli_shuffled": ("tl", "tl_only"),
    "tl_neutral": ("tl", "tl_only"),
    "wl_only": ("wl", None),
    "wl_plus_tli": ("wl", "wl_only"),
    "wl_plus_tli_shuffled": ("wl", "wl_only"),
    "wl_neutral": ("wl", "wl_only"),
    "joint": ("tl", "tl_only"),
}


def ablation_items(run: dict, cond: str, level: str, labels: list[str]) -> np.ndarray:
    """One condition's test items of one seed: class codes (TL) or per-example WL counts."""
    rows = items(run, sub=cond)
    if level == "tl":
        return class_codes([x["gold_tl"] for x in rows], [x["tl"] for x in rows], labels)
    return wl_counts([x["gold_wl"] for x in rows], [x["wl"] for x in rows])


def ablation_table(runs: list[dict]) -> list[str]:
    lines = ["| model | dataset | condition | seeds | n | F1 per seed | F1 | Δ vs reference |", "|" + "---|" * 8]
    for (model, ds), rs in grouped(runs).items():
        labels = ablation_labels(rs[0])
        for cond, (level, ref) in ABLATION.items():
            for lvl in ("tl", "wl") if cond == "joint" else (level,):
                ref = {"tl": "tl_only", "wl": "wl_only"}[lvl] if cond == "joint" else ref
                seeds = [r for r in rs if cond in r["conditions"] and (ref is None or ref in r["conditions"])]
                if not seeds:
                    continue
                stat = macro_f1_statistic(len(labels)) if lvl == "tl" else micro_f1_statistic
                per = {c: [ablation_items(r, c, lvl, labels) for r in seeds] for c in (cond, ref) if c}
                if ref:
                    arm, _, delta = paired(per, cond, ref, stat)
                    versus = f"{signed(delta)} vs {ref}"
                else:
                    arm, versus = bootstrap.estimate(per[cond], N_BOOT, statistic=stat), "–"
                name = f"joint ({lvl.upper()})" if cond == "joint" else cond
                each = " / ".join(f"{stat(x[None])[0]:.3f}" for x in per[cond])
                lines.append(
                    f"| {model} | {ds} | {name} | {len(seeds)} | {seeds[0]['n_test']} | {each} | {ci(arm)} | {versus} |"
                )
    lines += [
        "",
        "F1: TL macro-F1 (tl_* and joint's TL) or WL micro-F1 (wl_* and joint's WL) over each seed's test items (per "
        "seed in seed order), "
        f"mean over the seeds that ran both the condition and its reference [{bootstrap.METHOD}, the F1 recomputed "
        f"on each draw; {N_BOOT} resamples]; Δ paired against the single-level model of the same level (same seeds "
        "and test items).",
    ]
    return lines


def plot(runs: list[dict], root: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmlab.figures import save_figure

    paths = []
    for model in sorted({r["model"] for r in runs}):
        groups = {ds: rs for (m, ds), rs in grouped(runs).items() if m == model}
        fig, axes = plt.subplots(1, len(groups), figsize=(3.8 * len(groups), 3.3), squeeze=False)
        for ax, (ds, rs) in zip(axes[0], groups.items()):
            for cond, style in (("gold", "-"), ("shuffled", "--")):
                for color, flow in enumerate(("S_wq", "S_tq", "S_tw", "S_pq", "S_rest")):
                    curves = [
                        r["conditions"][cond]["flows"][flow]["mean"]
                        for r in rs
                        if cond in r["conditions"] and r["conditions"][cond]["flows"].get(flow)
                    ]
                    if curves:
                        ax.plot(np.mean(curves, 0), style, label=f"{flow} {cond}", color=f"C{color}")
            ax.set_title(ds, fontsize=9)
            ax.set_yscale("log")
            ax.set_xlabel("layer")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("mean saliency (gold solid, shuffled dashed)")
        axes[0][-1].legend(fontsize=6)
        path = root / safe_name(f"info_flow_{str(model).replace('/', '_')}.png", "model name")
        save_figure(fig, path)
        paths.append(str(path))
    return paths


def report(root: str | Path) -> str:
    root = Path(root)
    runs = load(root)
    if not runs:
        raise LlmlabError(f"{root}: no MRE results.json (info_flow / verbalizer / mre_ablation) found")
    parts = [f"# MRE report ({root})", ""]
    if runs["info_flow"]:
        parts += [
            "## Information flow (per-layer saliency thirds, gold WL)",
            "",
            *info_flow_table(runs["info_flow"]),
            "",
            *[f"![]({Path(p).name})" for p in plot(runs["info_flow"], root)],
            "",
        ]
    if runs["verbalizer"]:
        parts += ["## Verbalizer (TL macro-F1)", "", *verbalizer_table(runs["verbalizer"]), ""]
    if runs["mre_ablation"]:
        parts += ["## Fine-tuning ablation", "", *ablation_table(runs["mre_ablation"]), ""]
    text = "\n".join(parts)
    atomic_write(root / "mre_report.md", text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m llmlab.analysis.mre_report DIR", file=sys.stderr)
        return 2
    try:
        print(report(argv[0]))
    except LlmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
