"""Blocksworld splits as `datasets.Dataset`s, and the prompt material (intro, demonstration pool, self-evaluation and
world-update templates) that goes with each split.

Layout of the data folder (`dataset.path`; default: `shared/data/blocksworld` next to the repository):
`llm-reasoners/data/split_v{1,2}/split_v{1,2}_step_N_data.json` (hard / easy),
`llm-reasoners/data/full_data/step_N.json`, `llm-reasoners/prompts/pool_prompt_v1.json` (hard) and
`pool_prompt_v2_step_N.json` (easy), `planbench/generated_basic*/`.
`source: blocksworld_generated` makes problems with the seeded generator instead (no files needed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from llmlab.blocksworld.domain import (
    Problem,
    apply,
    generate_problems,
    parse_pddl_plan,
    read_pddl,
    validate,
)
from llmlab.blocksworld.text import (
    BUILTIN_INTRO,
    BUILTIN_SELF_EVAL,
    action_text,
    problem_texts,
    state_text,
)
from llmlab.config import BlocksworldDatasetConfig, DatasetConfig, GeneratedBlocksworldDatasetConfig
from llmlab.data.sources import loader
from llmlab.errors import LlmlabError
from llmlab.paths import REPO_ROOT

DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data" / "blocksworld"
PLANBENCH_PREFIX = "LLMs-Planning/llm_planning_analysis/instances/blocksworld/"
MODES = {"easy": "split_v2", "hard": "split_v1", "full": "full_data"}


@dataclass
class Prompts:
    intro: str
    pool: list[dict]  # demonstrations: init, goal, plan ("\n...[PLAN END]\n"), states (after every 2 actions)
    self_eval: str
    templates: dict  # world_update_{pickup,unstack,putdown,stack}


def data_root(path: str | None) -> Path:
    root = Path(path).expanduser() if path else DEFAULT_ROOT
    if not (root / "llm-reasoners").is_dir():
        raise LlmlabError(
            f"blocksworld data not found at {root} (no llm-reasoners/ in it); set "
            "dataset.path=<folder with llm-reasoners/ and planbench/>"
        )
    return root


def split_file(root: Path, mode: str, step: int) -> Path:
    if not isinstance(mode, str) or mode not in MODES:
        raise LlmlabError(f"blocksworld mode '{mode}' is unknown; choose {', '.join(MODES)}")
    data = root / "llm-reasoners" / "data"
    path = (
        data / "full_data" / f"step_{step}.json"
        if mode == "full"
        else data / MODES[mode] / f"{MODES[mode]}_step_{step}_data.json"
    )
    if not path.is_file():
        raise LlmlabError(f"blocksworld split file {path} does not exist (mode={mode}, step={step})")
    return path


def instance_path(root: Path, name: str) -> Path:
    """A split's instance path (relative to a PlanBench checkout) in this folder's `planbench/`."""
    rel = Path(name.removeprefix(PLANBENCH_PREFIX))
    if rel.is_absolute() or ".." in rel.parts or not name.isprintable():
        raise LlmlabError(f"blocksworld instance path {name!r} is not a plain path inside the data folder's planbench/")
    return root / "planbench" / rel


def read_json(path: Path, what: str):
    """A JSON data file; bad JSON or bytes that are not UTF-8 are a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise LlmlabError(f"{what} {path} is not valid JSON: {str(e).splitlines()[0]}") from None


def problem_row(problem: Problem, plan: list, row_id: str, instance: str) -> dict:
    init, goal = problem_texts(problem)
    return {
        "id": row_id,
        "instance": instance,
        "blocks": list(problem.blocks),
        "init": sorted(" ".join(a) for a in problem.init),
        "goal": sorted(" ".join(a) for a in problem.goal),
        "gold_plan": ["(" + " ".join(a) + ")" for a in plan],
        "n_steps": len(plan),
        "init_text": init,
        "goal_text": goal,
    }


def row_problem(row: dict) -> Problem:
    return Problem(
        row["id"],
        tuple(row["blocks"]),
        frozenset(tuple(a.split()) for a in row["init"]),
        frozenset(tuple(a.split()) for a in row["goal"]),
    )


def load_split(root: Path, mode: str, step: int, check: bool = True) -> Dataset:
    """One split file: a row per problem (parsed PDDL, gold plan, texts). `check` validates every gold plan."""
    path = split_file(root, mode, step)
    items = read_json(path, "blocksworld split file")
    if not isinstance(items, list):
        raise LlmlabError(f"blocksworld split file {path}: expected a JSON list, got {type(items).__name__}")
    rows = []
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item[:2])):
            raise LlmlabError(f"{path.name} item {i}: expected [instance_path, gold_plan, n_steps], got {item!r:.80}")
        instance, gold, n_steps = item
        problem = read_pddl(instance_path(root, instance))
        plan = parse_pddl_plan(gold, problem.blocks, f"{path.name} item {i}")
        if check:
            verdict = validate(problem, plan)
            if not verdict.valid:
                raise LlmlabError(f"{path.name} item {i}: gold plan invalid ({verdict.reason})")
        rows.append(problem_row(problem, plan, f"{mode}-s{step}-{i}", instance.removeprefix(PLANBENCH_PREFIX)))
    return Dataset.from_list(rows)


def load_prompts(root: Path | None, mode: str, step: int) -> Prompts:
    name = f"pool_prompt_v2_step_{step}.json" if mode == "easy" else "pool_prompt_v1.json"
    path = root / "llm-reasoners" / "prompts" / name if root else None
    if path is None or not path.is_file():
        if root is not None:
            raise LlmlabError(f"blocksworld prompt file {path} does not exist")
        return Prompts(BUILTIN_INTRO, [], BUILTIN_SELF_EVAL, {})
    data = read_json(path, "blocksworld prompt file")
    keys = ("intro", "example_pool", "self-eval")
    if not isinstance(data, dict) or not all(k in data for k in keys):
        raise LlmlabError(f"blocksworld prompt file {path}: expected a JSON object with keys {', '.join(keys)}")
    return Prompts(
        data["intro"],
        data["example_pool"],
        data["self-eval"],
        {k: v for k, v in data.items() if k.startswith("world_update_")},
    )


def demo_from(problem: Problem, plan: list) -> dict:
    """A demonstration in the prompt files' format, from a problem and its plan."""
    init, goal = problem_texts(problem)
    states, state = [], problem.init
    for i, action in enumerate(plan):
        state = apply(state, action)
        if i % 2 == 1:
            states.append(state_text(state))
    return {
        "init": init,
        "goal": goal,
        "plan": "\n" + "".join(action_text(a) + "\n" for a in plan) + "[PLAN END]\n",
        "states": states,
    }


def load_blocksworld(cfg: DatasetConfig, seed: int) -> tuple[Dataset, Prompts]:
    """The test problems and prompts of a `dataset=blocksworld/...` config, read by the loader of its source."""
    return loader(cfg, "blocksworld")(cfg, seed)


def split_data(cfg: BlocksworldDatasetConfig, seed: int) -> tuple[Dataset, Prompts]:
    """A llm-reasoners split and its prompts from the data folder (`seed` is unused: the problems are fixed)."""
    opts = cfg.options
    step = int_option(opts, "step")
    root = data_root(cfg.path)
    return load_split(root, opts.mode, step, check=opts.check), load_prompts(root, opts.mode, step)


def generated_data(cfg: GeneratedBlocksworldDatasetConfig, seed: int) -> tuple[Dataset, Prompts]:
    """Problems and demonstrations of the seeded generator (seeded by `options.gen_seed`, else the run's seed)."""
    opts = cfg.options
    step, n, pool_n = int_option(opts, "step"), int_option(opts, "n"), int_option(opts, "pool")
    gen_seed = seed if opts.gen_seed is None else int_option(opts, "gen_seed")
    blocks = opts.blocks
    if (
        isinstance(blocks, str)
        or not isinstance(blocks, Sequence)
        or not blocks
        or not all(isinstance(b, int) and 2 <= b <= 12 for b in blocks)
    ):
        raise LlmlabError(f"dataset.options.blocks must be a list of block counts in [2, 12], got {blocks!r}")
    if not 1 <= step <= 4 * max(blocks):  # every block unstacked, put down, picked up and stacked at most once
        raise LlmlabError(
            f"dataset.options.step={step}: no problem with {max(blocks)} blocks has an optimal plan "
            f"of that length (1 to {4 * max(blocks)})"
        )
    made = generate_problems(n + pool_n, step, gen_seed, tuple(blocks))
    rows = [problem_row(p, plan, f"gen-s{step}-{i}", p.name) for i, (p, plan) in enumerate(made[:n])]
    if opts.prompts == "files":  # the PlanBench intro / self-eval / world-update texts
        root = data_root(cfg.path)
        prompts = load_prompts(root, "easy", step if prompt_file_exists(root, step) else 2)
    else:
        prompts = load_prompts(None, opts.mode, step)
    prompts.pool = [demo_from(p, plan) for p, plan in made[n:]]  # demonstrations of the same length
    return Dataset.from_list(rows), prompts


def int_option(opts: Any, key: str) -> int:
    """`dataset.options.<key>` as a non-negative int; anything else is a one-line error."""
    value = getattr(opts, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LlmlabError(f"dataset.options.{key} must be a non-negative integer, got {value!r}")
    return value


def prompt_file_exists(root: Path, step: int) -> bool:
    return (root / "llm-reasoners" / "prompts" / f"pool_prompt_v2_step_{step}.json").is_file()
