"""Report tables generated from committed raw results, and the check that they are current.

A table in `experiments/<paper>/README.md` sits between two marker comments that name how it is made:

    <!-- table: runs results/icl_implicit_smollm2 -->            `llmlab report` over the runs in that folder
    <!-- table: icl_vs_ft results/gemma3-270m -->                the ICL-vs-FT comparison of one experiment run
    ...generated text...
    <!-- /table -->

Paths are relative to the README's folder. `llmlab report --readme DIR` rewrites every marked table of DIR's README
from its results; `llmlab report --check ROOT` regenerates them in memory and fails, naming each table, where the
committed text differs, and also where a markdown table is neither generated nor marked just above it
`<!-- legacy table: raw results not kept -->` (measured before results were kept) or `<!-- text table -->` (words,
not measurements).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from llmlab.errors import LlmlabError

MARKED = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
LEGACY = "<!-- legacy table: raw results not kept -->"
TEXT = "<!-- text table -->"  # a table of words (where the code is, claims), not of measured numbers
SEPARATOR = re.compile(r"^\|\s*:?-{3,}")


def render_runs(base: Path, folder: str) -> str:
    from llmlab import report

    runs, _ = report.load_runs(base / folder)
    if not runs:
        raise LlmlabError(f"{base / folder}: no finished runs")
    keys, rows = report.aggregate(runs)
    return report.markdown(keys, rows) + f"\n{report.method_note(runs)}\n"


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
        f"Verdict (spec 6.3, pattern sets, {verdict.get('gap_key', '')}): **{verdict['outcome']}**"
        f" — rule: {verdict.get('rule', verdict.get('why', ''))}\n"
    )


KINDS: dict[str, Callable[[Path, str], str]] = {"runs": render_runs, "icl_vs_ft": render_icl_vs_ft}


def render(spec: str, base: Path) -> str:
    kind, *args = shlex.split(spec)
    if kind not in KINDS or len(args) != 1:
        raise LlmlabError(f"table '{spec}': expected '<{'|'.join(KINDS)}> <results folder>'")
    return KINDS[kind](base, args[0])


def refreshed(readme: Path) -> str:
    """The README's text with every marked table regenerated."""
    text = readme.read_text(encoding="utf-8")
    return MARKED.sub(lambda mt: mt.group(1) + render(mt.group("spec"), readme.parent) + mt.group(4), text)


def write(folder: str | Path) -> list[str]:
    """Rewrite the marked tables of `folder/README.md`; the names of the tables."""
    from llmlab.tracking import atomic_write

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
