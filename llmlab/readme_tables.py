"""Report tables generated from committed raw results, and the check that they are current.

A table in `experiments/<paper>/README.md` sits between two marker comments that name how it is made:

    <!-- table: runs results/icl_implicit_smollm2 -->            `llmlab report` over the runs in that folder
    <!-- table: icl_vs_ft results/gemma3-270m -->                the ICL-vs-FT comparison of one experiment run
    <!-- table: paired results/s2 arm=attention ref=softmax by=position metrics=val_loss,ppl@8x/ppl@1x -->
                                                                 arms compared seed by seed (pretraining runs)
    <!-- table: circuit_shift results/circuit_shift_smollm2 -->  circuit-shift runs with their noise floor
    <!-- table: mre results/verbalizer_smollm2 part=verbalizer --> an MRE table (info_flow, verbalizer, ablation)
    <!-- table: bench results/bench_cpu/wkv.json -->             a benchmark's tables from its kept JSON
    ...generated text...
    <!-- /table -->

Paths are relative to the README's folder. `llmlab report --readme DIR` rewrites every marked table of DIR's README
from its results; `llmlab report --check ROOT` regenerates them in memory and fails, naming each table, where the
committed text differs, and also where a markdown table is neither generated nor marked just above it
`<!-- legacy table: raw results not kept -->` (measured before results were kept) or `<!-- text table -->` (words,
not measurements).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from llmlab import runs_table
from llmlab.errors import LlmlabError

MARKED = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
LEGACY = "<!-- legacy table: raw results not kept -->"
TEXT = "<!-- text table -->"  # a table of words (where the code is, claims), not of measured numbers
SEPARATOR = re.compile(r"^\|\s*:?-{3,}")


def render_runs(base: Path, folder: str) -> str:
    runs, _ = runs_table.load_runs(base / folder)
    if not runs:
        raise LlmlabError(f"{base / folder}: no finished runs")
    keys, rows = runs_table.aggregate(runs)
    return runs_table.markdown(keys, rows) + f"\n{runs_table.method_note(runs)}\n"


def render_icl_vs_ft(base: Path, folder: str) -> str:
    from llmlab.analysis import bootstrap
    from llmlab.analysis import icl_vs_ft as analysis

    root = base / folder
    cfg = OmegaConf.load(root / "config.yaml")
    m = cfg.method
    planned = (list(m.seeds), list(m.run_arms))

    def done(seed: int, rel: str) -> bool:
        return all((root / f"seed-{seed}" / rel.format(task=t) / "results.json").is_file() for t in m.tasks)

    # the seeds and arms finished so far: every ICL step of a seed, and arms finished in every such seed
    m.run_arms = [a for a in m.run_arms if any(done(s, f"ft/{a}/eval/{{task}}") for s in m.seeds)]
    m.seeds = [
        s
        for s in m.seeds
        if all(done(s, f"icl/{{task}}/k-{k}") for k in m.shots)
        and all(done(s, f"ft/{a}/eval/{{task}}") for a in m.run_arms)
    ]
    if not m.seeds or not m.run_arms:
        raise LlmlabError(f"{root}: no seed has finished its ICL steps and a fine-tuning arm yet")
    cells = analysis.compare(root, m, list(cfg.dataset.variants))
    verdict = analysis.verdict(cells, m.report_k)
    partial = (list(m.seeds), list(m.run_arms)) != planned
    saved = root / "comparison.json"  # written by the experiment once every planned step is in
    if not partial and saved.is_file():
        kept = json.loads(saved.read_text(encoding="utf-8"))
        if kept.get("verdict") != verdict or kept.get("seeds") != list(m.seeds):
            raise LlmlabError(f"{saved}: its verdict differs from what the step results under {root} give")
    table = analysis.markdown(cells, list(m.shots), list(m.run_arms), m.report_k, cfg.model.name, m.metric)
    if partial:
        verdict["outcome"] = (
            f"preliminary: {verdict['outcome']} (seeds {list(m.seeds)} and arms {list(m.run_arms)}"
            f" of the pre-registered {planned[0]} and {planned[1]})"
        )
    return (
        table + f"\nSeeds {list(m.seeds)}; {cfg.dataset.n_test} items per task, variant and seed; metric "
        f"`{m.metric}`; intervals: {bootstrap.METHOD} ({m.bootstrap} resamples); deltas and gaps resample "
        "both conditions with the same draws (paired: every condition of a seed is scored on the same items).\n\n"
        f"Verdict (spec 6.3, pattern sets{', ' + verdict['gap_key'] if verdict.get('gap_key') else ''}): "
        f"**{verdict['outcome']}**"
        f" — rule: {verdict.get('rule', verdict.get('why', ''))}\n"
    )


def render_paired(base: Path, folder: str, arm: str, ref: str, by: str, metrics: str) -> str:
    """Arms compared seed by seed: for each `by` group and metric, the mean of every arm and the paired difference
    (arm − `ref` on the same seed) with a 95% Student t interval over seeds. A metric `a/b` is the ratio of two."""
    runs, _ = runs_table.load_runs(base / folder)
    if not runs:
        raise LlmlabError(f"{base / folder}: no finished runs")

    def value(run: dict, metric: str) -> float:
        values = next(iter(run["metrics"].values()))
        num, _, den = metric.partition("/")
        return values[num] / values[den] if den else values[num]

    arms = sorted({r[arm] for r in runs} - {ref})
    head = [by, "metric", f"{ref}", *arms, *(f"Δ {a} − {ref} [95% t, seeds]" for a in arms), "seeds with Δ < 0"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in sorted({r[by] for r in runs}):
        sub = [r for r in runs if r[by] == group]
        seeds = sorted({r["seed"] for r in sub if r[arm] == ref})
        for metric in metrics.split(","):
            at = {(r[arm], r["seed"]): value(r, metric) for r in sub}
            cells = [f"{sum(at[ref, s] for s in seeds) / len(seeds):.4f}"]
            cells += [f"{sum(at[a, s] for s in seeds) / len(seeds):.4f}" for a in arms]
            wins = []
            for a in arms:
                diffs = [at[a, s] - at[ref, s] for s in seeds if (a, s) in at]
                mean = sum(diffs) / len(diffs)
                sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5 if len(diffs) > 1 else 0.0
                half = runs_table.t95(len(diffs) - 1) * sd / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
                cells.append(f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]")
                wins.append(f"{sum(d < 0 for d in diffs)}/{len(diffs)}")
            lines.append(f"| {group} | {metric} | " + " | ".join(cells + [", ".join(wins)]) + " |")
    return (
        "\n".join(lines) + f"\n\nValues: mean over seeds {seeds}; Δ: the paired difference on the same seed (same data "
        "order and validation blocks), mean with a 95% Student t interval over seeds (no items: one number per run)."
        "\n"
    )


def render_circuit_shift(base: Path, folder: str) -> str:
    """Circuit-shift runs (one per task and seed): each condition's pair accuracy, logit differences, circuit size and
    largest components, the shift of B<k> and F0 from B0 per component and metric, the half-split noise floor and the
    run's own check; with several seeds of a task, also the verdict over seeds
    (`llmlab.analysis.circuit_shift.across_seeds`, from the runs' kept per-pair `scores.npz`)."""
    from llmlab.analysis import circuit_shift

    found = []  # (results, per-pair scores or None where the run kept no scores.npz)
    for path in sorted((base / folder).rglob("results.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        if run.get("runner") == "circuit_shift":
            npz = path.parent / "scores.npz"
            found.append((run, circuit_shift.load_scores(npz) if npz.is_file() else None, npz))
    if not found:
        raise LlmlabError(f"{base / folder}: no finished circuit-shift runs")
    found.sort(key=lambda f: (f[0]["task"], f[0]["seed"]))
    runs = [r for r, _, _ in found]
    parts, metrics = circuit_shift.KINDS, circuit_shift.METRICS
    head = ["task", "seed", "condition", "pair accuracy", "mean LD clean / corrupt", "circuit heads / MLPs"]
    head += [f"{p}: 1−Jaccard / TV / 1−ρ" for p in parts] + ["largest heads / MLP"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, scores, _ in found:
        top = circuit_shift.largest(scores) if scores is not None else {}
        for name, cond in run["conditions"].items():
            shift = run["shift"].get(name)
            cells = [
                run["task"],
                str(run["seed"]),
                name,
                f"{cond['accuracy']:.3f}",
                f"{cond['mean_ld_clean']:.2f} / {cond['mean_ld_corrupt']:.2f}",
                f"{cond['circuit_size']['heads']} / {cond['circuit_size']['mlps']}",
            ]
            cells += [" / ".join(f"{shift[p][m]:.3f}" for m in metrics) if shift else "–" for p in parts]
            cells.append(top.get(name, "–"))
            lines.append("| " + " | ".join(cells) + " |")
        floor = run["noise_floor"]
        cells = [run["task"], str(run["seed"]), "noise floor", "–", "–", "–"]
        cells += [" / ".join(f"{floor[p][m]:.3f}" for m in metrics) for p in parts] + ["–"]
        lines.append("| " + " | ".join(cells) + " |")
    checks = "; ".join(
        f"{r['task']} seed {r['seed']}: paper_consistent {r['check']['paper_consistent']}, "
        f"supporting {r['check']['supporting']}"
        for r in runs
    )
    text = (
        "\n".join(lines) + f"\n\nSeeds {sorted({r['seed'] for r in runs})}, {runs[0]['n_pairs']} pairs per task and "
        "seed; shifts are from B0; the noise floor is the shift between the B0 circuits of two disjoint halves of the "
        "pairs; largest: the 3 heads and the MLP with the largest |mean score| (layer L, head H, from 0; from the "
        f"run's scores.npz). Each run's check ({runs[0]['check']['rule']}): {checks}.\n"
    )
    by_task: dict[str, list] = {}
    for run, scores, npz in found:
        by_task.setdefault(run["task"], []).append((run, scores, npz))
    several = [seeds for seeds in by_task.values() if len(seeds) > 1]
    for _, scores, npz in (f for seeds in several for f in seeds):
        if scores is None:
            raise LlmlabError(f"{npz}: missing; the verdict over seeds needs each run's per-pair scores.npz")
    if several:
        text += "\n" + across_seeds_table(
            [circuit_shift.across_seeds([(r, s) for r, s, _ in seeds]) for seeds in several]
        )
    return text


def across_seeds_table(verdicts: list[dict]) -> str:
    """The verdict over seeds per task: every kind and metric's shifts, floors, paired difference and pass."""
    from llmlab.analysis.circuit_shift import COLUMNS

    def spread(values: list[float]) -> str:
        return f"{sum(values) / len(values):.3f} ({min(values):.3f}–{max(values):.3f})"

    names = {"jaccard": "1−Jaccard", "tv": "TV", "spearman": "1−ρ"}
    head = ["task", "over seeds"] + [f"{k}: {names[x]}" for k, x in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for v in verdicts:
        bk, task = v["condition"], v["task"]
        floors = v["noise_floor"]
        checks = [v["checks"][f"{k}/{x}"] for k, x in COLUMNS]
        rows = {
            f"shift({bk})": [spread(v["shift"][bk][k][x]) for k, x in COLUMNS],
            "shift(F0)": [spread(v["shift"]["F0"][k][x]) for k, x in COLUMNS],
            f"{bk} − F0 [95%]": [f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]" for c in checks],
            "floor: halves": [spread(floors["halves"][k][x]) for k, x in COLUMNS],
            "floor: between seeds": [f"{floors['between_seeds'][k][x]:.3f}" for k, x in COLUMNS],
            "passes": ["yes" if c["passes"] else "no" for c in checks],
        }
        lines += [f"| {task} | {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
        acc, diff = v["accuracy"], v["accuracy_diff"]
        means = ", ".join(f"{c} {sum(a) / len(a):.3f}" for c, a in acc.items())
        notes.append(
            f"{task} (seeds {v['seeds']}): pair accuracy {means}; acc({bk}) − acc(F0) {diff['diff']:+.3f} "
            f"[{diff['lo']:+.3f}, {diff['hi']:+.3f}]; supporting {v['supporting']}, paper_consistent "
            f"{v['paper_consistent']}"
        )
    return (
        "\n".join(lines) + "\n\nOver seeds: mean (min–max) of the seeds' values; the difference's interval is a paired "
        f"two-level bootstrap (seeds, then pairs; {len(verdicts[0]['seeds'])} seeds). Rule: {verdicts[0]['rule']}. "
        + "; ".join(notes)
        + ".\n"
    )


def render_mre(base: Path, folder: str, part: str) -> str:
    """An MRE table (`part`: info_flow, verbalizer or ablation) of the runs in `folder`, from their per-item rows."""
    from llmlab.analysis import mre_report

    tables = {
        "info_flow": ("info_flow", mre_report.info_flow_table),
        "verbalizer": ("verbalizer", mre_report.verbalizer_table),
        "ablation": ("mre_ablation", mre_report.ablation_table),
    }
    if part not in tables:
        raise LlmlabError(f"mre table part '{part}': expected one of {', '.join(tables)}")
    runner, table = tables[part]
    runs = mre_report.load(base / folder)[runner]
    if not runs:
        raise LlmlabError(f"{base / folder}: no finished {runner} runs")
    return "\n".join(table(runs)) + "\n"


def render_bench(base: Path, path: str) -> str:
    """A benchmark's tables from its kept JSON (its `benchmark` field, else the file name, names the benchmark), by
    the benchmark's `markdown`."""
    import importlib

    from llmlab.bench import BENCHMARKS

    file = base / path
    result = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    name = result.get("benchmark", file.stem) if isinstance(result, dict) else None
    if name not in BENCHMARKS:
        raise LlmlabError(f"{file}: expected the JSON of one of the benchmarks {', '.join(BENCHMARKS)}")
    module = importlib.import_module(BENCHMARKS[name])
    if not hasattr(module, "markdown"):
        raise LlmlabError(f"benchmark '{name}' has no markdown() to render its JSON")
    return module.markdown(result)


KINDS: dict[str, Callable[..., str]] = {
    "runs": render_runs,
    "icl_vs_ft": render_icl_vs_ft,
    "paired": render_paired,
    "circuit_shift": render_circuit_shift,
    "mre": render_mre,
    "bench": render_bench,
}


def render(spec: str, base: Path) -> str:
    kind, *args = shlex.split(spec)
    options = dict(a.split("=", 1) for a in args[1:] if "=" in a)
    if kind not in KINDS or not args or len(options) != len(args) - 1:
        raise LlmlabError(f"table '{spec}': expected '<{'|'.join(KINDS)}> <results folder> [key=value ...]'")
    try:
        return KINDS[kind](base, args[0], **options)
    except TypeError as e:  # options the kind does not take, or misses
        raise LlmlabError(f"table '{spec}': {e}") from None


def refreshed(readme: Path) -> str:
    """The README's text with every marked table regenerated."""
    text = readme.read_text(encoding="utf-8")
    return MARKED.sub(lambda mt: mt.group(1) + render(mt.group("spec"), readme.parent) + mt.group(4), text)


def write(folder: str | Path) -> list[str]:
    """Rewrite the marked tables of `folder/README.md`; the names of the tables."""
    from llmlab.io import atomic_write

    readme = Path(folder) / "README.md"
    if not readme.is_file():
        raise LlmlabError(f"{readme}: no such file")
    atomic_write(readme, refreshed(readme))
    return [mt.group("spec") for mt in MARKED.finditer(readme.read_text(encoding="utf-8"))]


def check(root: str | Path) -> list[str]:
    """Problems of every README under `root`: stale generated tables, tables neither generated nor marked legacy."""
    readmes = [Path(root)] if Path(root).is_file() else sorted(Path(root).rglob("README.md"))
    problems = []
    for readme in readmes:
        text = readme.read_text(encoding="utf-8")
        for mt in MARKED.finditer(text):
            try:
                fresh = render(mt.group("spec"), readme.parent)
            except (LlmlabError, OSError) as e:
                problems.append(f"{readme}: table '{mt.group('spec')}' cannot be generated: {e}")
                continue
            if fresh != mt.group("body"):
                problems.append(
                    f"{readme}: table '{mt.group('spec')}' differs from its results "
                    "(run `llmlab report --readme " + str(readme.parent) + "`)"
                )
        problems += [
            f"{readme}:{line}: a table typed by hand (generate it, or mark it '{LEGACY}')"
            for line in unmarked_tables(text)
        ]
    return problems


def unmarked_tables(text: str) -> list[int]:
    """Line numbers where a markdown table starts outside generated blocks without a legacy marker above it."""
    spans = [(m.start(), m.end()) for m in MARKED.finditer(text)]
    lines = text.splitlines(keepends=True)
    out, offset = [], 0
    for i, line in enumerate(lines):
        starts = line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))
        if (
            starts
            and i + 1 < len(lines)
            and SEPARATOR.match(lines[i + 1])
            and not any(a <= offset < b for a, b in spans)
        ):
            above = "".join(lines[max(0, i - 3) : i])
            if LEGACY not in above and TEXT not in above:
                out.append(i + 1)
        offset += len(line)
    return out
