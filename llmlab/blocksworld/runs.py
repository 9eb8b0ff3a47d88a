"""What the Blocksworld runners share: seeded demonstrations, per-problem resumable records, accuracy summaries."""

from __future__ import annotations

import json
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.io import resume_jsonl, write_json, write_jsonl
from llmlab.seeding import make_rng


def draw_shots(pool: list[dict], shots: int, seed: int, problem_id: str) -> list[dict]:
    """`shots` demonstrations drawn without replacement, seeded per problem (reproducible prompts and caches)."""
    if shots > len(pool):
        raise LlmlabError(f"method.shots={shots} is larger than the demonstration pool ({len(pool)})")
    rng = make_rng(seed, "blocksworld-demos", problem_id)
    return [pool[j] for j in rng.sample(range(len(pool)), shots)]


def load_done(path: Path) -> dict[str, dict]:
    """Records of problems finished by an earlier (interrupted) run in the same directory."""
    return {r["id"]: r for r in resume_jsonl(path)}


def append(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def summarize(records: list[dict]) -> dict:
    """Accuracy first (the CLI's primary metric), then counts and means of the numeric timing fields."""
    n = len(records)
    out: dict = {"accuracy": sum(bool(r["correct"]) for r in records) / n if n else 0.0, "n": n}
    for key in ("wall_s", "s_per_node", "n_expanded", "gen_tokens", "acceptance"):
        vals = [r[key] for r in records if r.get(key) is not None]
        if vals:
            out[f"mean_{key}"] = sum(vals) / len(vals)
    return out


def finish(ctx, dataset: str, records: list[dict], results: dict, partial: Path) -> dict:
    """End of a Blocksworld run: predictions and results written, the partial file removed, the metrics logged."""
    write_jsonl(ctx.run_dir.file("predictions.jsonl"), records)
    write_json(ctx.run_dir.file("results.json"), results)
    partial.unlink(missing_ok=True)
    ctx.log_final({f"{dataset}/{k}": v for k, v in results["metrics"][dataset].items()})
    return results
