"""`python -m llmlab.analysis.mre_report DIR`: the MRE tables (information flow, verbalizer, ablation) and per-layer
flow curves from every `results.json` under DIR, averaged over seeds; writes `DIR/mre_report.md` and
`DIR/info_flow_<model>.png`."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from llmlab.errors import LlmlabError
from llmlab.io import atomic_write
from llmlab.paths import safe_name


def load(root: Path) -> dict[str, list[dict]]:
    runs = defaultdict(list)
    for path in sorted(root.rglob("results.json")):
        try:
            r = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise LlmlabError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
        if isinstance(r, dict) and r.get("runner") in ("info_flow", "verbalizer", "mre_ablation"):
            runs[r["runner"]].append(r)
    return runs


def ms(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if xs else "–"


def grouped(runs: list[dict]) -> dict[tuple, list[dict]]:
    out = defaultdict(list)
    for r in runs:
        out[r["model"], r["dataset"]].append(r)
    return dict(sorted(out.items()))


def info_flow_table(runs: list[dict]) -> list[str]:
    lines = [
        "| model | dataset | seeds | n | acc gold | acc shuffled | acc no-WL | Δlogp shuffled | deep S_wq | "
        "deep S_tq | deep S_rest | shallow S_tw | shallow S_rest |",
        "|" + "---|" * 13,
    ]
    for (model, ds), rs in grouped(runs).items():

        def third(cond, flow, k, rs=rs):
            vals = [
                r["conditions"][cond]["flows"][flow]["thirds"][k]
                for r in rs
                if cond in r["conditions"] and r["conditions"][cond]["flows"].get(flow)
            ]
            return [v for v in vals if v is not None]

        def acc(cond, rs=rs):
            return [r["conditions"][cond]["tl_accuracy"] for r in rs if cond in r["conditions"]]

        dlp = [
            r["conditions"]["shuffled"]["delta_vs_gold"]["gold_logprob"] for r in rs if "shuffled" in r["conditions"]
        ]
        cells = [ms(acc("gold")), ms(acc("shuffled")), ms(acc("none")), ms(dlp)]
        cells += [
            f"{np.mean(v):.2e}" if v else "–"
            for v in (
                third("gold", "S_wq", 2),
                third("gold", "S_tq", 2),
                third("gold", "S_rest", 2),
                third("gold", "S_tw", 0),
                third("gold", "S_rest", 0),
            )
        ]
        lines.append(f"| {model} | {ds} | {len(rs)} | {rs[0]['n_queries']} | " + " | ".join(cells) + " |")
    return lines


def verbalizer_table(runs: list[dict]) -> list[str]:
    lines = ["| model | dataset | shots | seeds | n | baseline macro-F1 | KV macro-F1 | Δ |", "|" + "---|" * 8]
    wins = defaultdict(lambda: [0, 0])
    for (model, ds), rs in grouped(runs).items():
        for shots in sorted({row["shots"] for r in rs for row in r["table"]}):
            rows = [row for r in rs for row in r["table"] if row["shots"] == shots]
            b, k = [x["baseline"]["macro_f1"] for x in rows], [x["kv"]["macro_f1"] for x in rows]
            d = float(np.mean(k) - np.mean(b))
            wins[model, shots][0] += d > 0
            wins[model, shots][1] += 1
            lines.append(
                f"| {model} | {ds} | {shots} | {len(rows)} | {rs[0]['n_test']} | {ms(b)} | {ms(k)} | {d:+.3f} |"
            )
    lines += [
        "",
        "KV > baseline (mean over seeds), datasets: "
        + "; ".join(f"{m} k={s}: {w}/{n}" for (m, s), (w, n) in sorted(wins.items())),
    ]
    return lines


def ablation_table(runs: list[dict]) -> list[str]:
    conds = [
        "tl_only",
        "tl_plus_wli",
        "tl_plus_wli_shuffled",
        "tl_neutral",
        "wl_only",
        "wl_plus_tli",
        "wl_plus_tli_shuffled",
        "wl_neutral",
        "joint",
    ]
    lines = ["| model | dataset | seeds | " + " | ".join(conds) + " | ΔTL | ΔWL |", "|" + "---|" * (len(conds) + 5)]
    for (model, ds), rs in grouped(runs).items():
        cells = []
        for c in conds:
            key = "wl_f1" if c.startswith("wl") else "tl_macro_f1"
            vals = [r["conditions"][c][key] for r in rs if c in r["conditions"]]
            cells.append(ms(vals))
        dtl = [r["deltas"].get("tl_plus_wli-tl_only") for r in rs]
        dwl = [r["deltas"].get("wl_plus_tli-wl_only") for r in rs]
        lines.append(f"| {model} | {ds} | {len(rs)} | " + " | ".join(cells) + f" | {ms(dtl)} | {ms(dwl)} |")
    lines.append("")
    lines.append("Cells: TL macro-F1 for tl_* and joint, WL micro-F1 for wl_*; mean ± std over seeds.")
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
