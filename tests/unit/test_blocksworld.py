"""Blocksworld: PDDL parsing, simulator, text, plan parsing/validation, generator, split loading, CoT runner."""

from __future__ import annotations

import json
import shutil

import pytest
from datasets import Dataset

from llmlab.blocksworld.data import data_root, load_blocksworld, load_split
from llmlab.blocksworld.domain import (
    apply,
    generate_problems,
    legal_actions,
    optimal_plan,
    parse_pddl,
    parse_pddl_plan,
    validate,
)
from llmlab.blocksworld.text import action_text, parse_action, parse_plan, problem_texts
from llmlab.config import BlocksworldDatasetConfig, GeneratedBlocksworldDatasetConfig, GeneratedBlocksworldOptions
from llmlab.errors import LlmlabError
from tests.helpers import SHARED, runner_setup

BW = SHARED / "data" / "blocksworld"
needs_shared = pytest.mark.skipif(not (BW / "llm-reasoners").is_dir(), reason="shared Blocksworld data absent")

PDDL = """(define (problem BW-rand-4)
(:domain blocksworld-4ops)
(:objects a b c d )
(:init (handempty) (ontable a) (on b c) (on c a) (ontable d) (clear b) (clear d))
(:goal (and (on b d) (on c a))))"""


def test_pddl_and_planbench_text():
    p = parse_pddl(PDDL, "x")
    assert p.blocks == ("a", "b", "c", "d") and ("on", "b", "c") in p.init
    init, goal = problem_texts(p)
    assert init == (
        "the blue block is clear, the yellow block is clear, the hand is empty, the blue block is on top "
        "of the orange block, the orange block is on top of the red block, the red block is on the table "
        "and the yellow block is on the table"
    )
    assert goal == "the blue block is on top of the yellow block and the orange block is on top of the red block"
    plan = parse_pddl_plan("(unstack b c)\n(stack b d)\n", p.blocks)
    assert validate(p, plan).valid
    assert [action_text(a) for a in plan] == [
        "unstack the blue block from on top of the orange block",
        "stack the blue block on top of the yellow block",
    ]


def test_simulator_preconditions():
    p = parse_pddl(PDDL)
    assert sorted(legal_actions(p.init, p.blocks)) == [("pick-up", "d"), ("unstack", "b", "c")]
    s = apply(p.init, ("unstack", "b", "c"))
    assert ("holding", "b") in s and ("clear", "c") in s and ("handempty",) not in s
    assert sorted(legal_actions(s, p.blocks)) == [("put-down", "b"), ("stack", "b", "c"), ("stack", "b", "d")]


@pytest.mark.parametrize(
    "text,needle",
    [
        (PDDL.replace("(:goal (and (on b d) (on c a)))", ""), "missing section(s) goal"),
        (PDDL.replace("(on b c)", "(on b z)"), "bad init atom"),
        (PDDL.replace("(on b d) (on c a)", "(on b d) (on d b)"), "goal unreachable"),
        (PDDL.replace("(on b d) (on c a)", "(on b d) (on c d)"), "goal unreachable"),
    ],
)
def test_bad_pddl_is_one_line_error(text, needle):
    with pytest.raises(LlmlabError) as info:
        parse_pddl(text, "bad.pddl")
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "plan,needle", [("(pick-up z)", "unknown block"), ("(fly a)", "unknown action"), ("(stack a)", "unknown action")]
)
def test_bad_gold_plan_is_one_line_error(plan, needle):
    with pytest.raises(LlmlabError) as info:
        parse_pddl_plan(plan, ("a", "b"), "split.json item 0")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_model_text_matching_no_action_is_a_failed_step():
    p = parse_pddl(PDDL)
    plan = parse_plan("I will think first\nunstack the blue block from on top of the orange block\n[PLAN END]\nx")
    assert plan == [None, ("unstack", "b", "c")]
    v = validate(p, plan)
    assert not v.valid and v.reason == "step 1 is not an action"
    assert parse_action("pick up the purple block") is None  # not a PlanBench colour
    assert parse_action("stack the red block") is None  # wrong arity
    v = validate(p, parse_plan("pick up the gold block\n"))
    assert not v.valid and "unknown block" in v.reason
    assert parse_plan("") == [] and not validate(p, []).valid


def test_generator_gives_solvable_problems_of_the_requested_length():
    for steps in (2, 4, 6):
        made = generate_problems(4, steps, seed=3)
        assert made == generate_problems(4, steps, seed=3)  # seeded
        for problem, plan in made:
            assert len(plan) == steps and validate(problem, plan).valid
            assert len(optimal_plan(problem)) == steps


def test_generated_dataset_needs_no_files():
    options = GeneratedBlocksworldOptions(step=4, n=3, pool=4)
    cfg = GeneratedBlocksworldDatasetConfig(name="g", source="blocksworld_generated", options=options)
    data, prompts = load_blocksworld(cfg, seed=0)
    assert isinstance(data, Dataset) and len(data) == 3 and len(prompts.pool) == 4
    assert all(r["n_steps"] == 4 for r in data) and prompts.pool[0]["plan"].endswith("[PLAN END]\n")


@needs_shared
def test_every_gold_plan_validates_and_splits_have_their_sizes():
    root = data_root(None)
    sizes = {"easy": [37, 76, 145, 143, 103, 36], "hard": [45, 84, 152, 151, 112, 46]}
    for mode, expected in sizes.items():
        for step, n in zip((2, 4, 6, 8, 10, 12), expected):
            data = load_split(root, mode, step)  # raises on any invalid gold plan
            assert isinstance(data, Dataset) and len(data) == n and set(data["n_steps"]) == {step}
    assert sum(len(load_split(root, "full", s)) for s in range(2, 17, 2)) == 602


@needs_shared
def test_mutated_gold_plans_fail():
    data = load_split(data_root(None), "easy", 4)
    from llmlab.blocksworld.data import row_problem

    for row in data.select(range(20)):
        p = row_problem(row)
        plan = parse_pddl_plan("\n".join(row["gold_plan"]), p.blocks)
        assert len(optimal_plan(p)) == len(plan)  # gold plans are optimal
        for i in range(len(plan)):
            assert not validate(p, plan[:i] + plan[i + 1 :]).valid  # removed (shorter than optimal)
        for i in range(len(plan) - 1):
            swapped = plan[:i] + [plan[i + 1], plan[i]] + plan[i + 2 :]
            assert not validate(p, swapped).valid  # swapped neighbours
        illegal = [("stack", plan[0][1], plan[0][1])] + plan[1:]
        assert not validate(p, illegal).valid  # made illegal


@needs_shared
def test_dataset_path_reads_a_users_copy(tmp_path):
    copy = tmp_path / "bw"
    (copy / "llm-reasoners" / "data" / "split_v2").mkdir(parents=True)
    (copy / "llm-reasoners" / "prompts").mkdir(parents=True)
    src = BW / "llm-reasoners"
    items = json.loads((src / "data/split_v2/split_v2_step_2_data.json").read_text())[:3]
    (copy / "llm-reasoners/data/split_v2/split_v2_step_2_data.json").write_text(json.dumps(items))
    shutil.copy(src / "prompts/pool_prompt_v2_step_2.json", copy / "llm-reasoners/prompts")
    for path, _, _ in items:
        rel = path.split("blocksworld/", 1)[1]
        (copy / "planbench" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(BW / "planbench" / rel, copy / "planbench" / rel)
    cfg = BlocksworldDatasetConfig(name="mine", source="blocksworld", path=str(copy))
    data, prompts = load_blocksworld(cfg, 0)
    assert len(data) == 3 and len(prompts.pool) == 10
    with pytest.raises(LlmlabError, match="blocksworld data not found"):
        load_blocksworld(BlocksworldDatasetConfig(name="x", source="blocksworld", path=str(tmp_path / "nope")), 0)
    (copy / "planbench" / items[0][0].split("blocksworld/", 1)[1]).write_text("(define (problem x))")
    with pytest.raises(LlmlabError, match="does not parse"):
        load_blocksworld(cfg, 0)


def test_cot_runner_end_to_end_and_resume(tmp_path, monkeypatch):
    from llmlab.runners import cot

    args = ("method=cot", "dataset=blocksworld/generated", "dataset.options.n=3", "method.max_new_tokens=12")
    cfg, ctx = runner_setup(tmp_path, *args)
    calls = []
    real_greedy = cot.greedy

    def flaky(model, ids, stop, prefix=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while solving the second problem
        return real_greedy(model, ids, stop)

    monkeypatch.setattr(cot, "greedy", flaky)
    with pytest.raises(KeyboardInterrupt):
        cot.run(cfg, ctx)
    assert len((tmp_path / "run" / "problems.partial.jsonl").read_text().splitlines()) == 1
    calls.clear()
    monkeypatch.setattr(cot, "greedy", lambda *a: (calls.append(1), real_greedy(*a))[1])
    result = cot.run(cfg, ctx)
    assert len(calls) == 2  # resumed at the second problem
    m = result["metrics"]["blocksworld/generated"]
    assert m["n"] == 3 and 0.0 <= m["accuracy"] <= 1.0
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["gen-s2-0", "gen-s2-1", "gen-s2-2"]


@needs_shared
def test_cot_runner_on_a_planbench_split(tmp_path):
    from llmlab.runners import cot

    cfg, ctx = runner_setup(
        tmp_path, "method=cot", "dataset=blocksworld/step_2", "method.limit=1", "method.max_new_tokens=4"
    )
    result = cot.run(cfg, ctx)
    assert result["metrics"]["blocksworld/step_2"]["n"] == 1
