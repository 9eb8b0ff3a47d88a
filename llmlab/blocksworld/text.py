"""PlanBench-style text for Blocksworld: states, goals and actions in words, model text back to actions, and the
few-shot prompts (CoT / MCTS action prompt, self-evaluation, world-model update)."""

from __future__ import annotations

import re

from llmlab.blocksworld.domain import ARITY, Action, Atom, Problem, State

COLOURS = {
    "a": "red",
    "b": "blue",
    "c": "orange",
    "d": "yellow",
    "e": "white",
    "f": "magenta",
    "g": "black",
    "h": "cyan",
    "i": "green",
    "j": "violet",
    "k": "silver",
    "l": "gold",
}
LETTERS = {colour: letter for letter, colour in COLOURS.items()}
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS.values()) + r")\b")


def block(letter: str) -> str:
    return f"the {COLOURS.get(letter, letter)} block"


def atom_text(atom: Atom) -> str:
    pred, *args = atom
    if pred == "on":
        return f"{block(args[0])} is on top of {block(args[1])}"
    if pred == "ontable":
        return f"{block(args[0])} is on the table"
    if pred == "clear":
        return f"{block(args[0])} is clear"
    if pred == "holding":
        return f"the hand is holding {block(args[0])}"
    return "the hand is empty"


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def state_text(state: State | frozenset) -> str:
    """Atoms sorted as PlanBench sorts them (by "predicate args"), joined "a, b and c"; no final period."""
    return join([atom_text(a) for a in sorted(state, key=lambda a: " ".join(a))])


def action_text(action: Action) -> str:
    op, *args = action
    if op == "pick-up":
        return f"pick up {block(args[0])}"
    if op == "put-down":
        return f"put down {block(args[0])}"
    if op == "stack":
        return f"stack {block(args[0])} on top of {block(args[1])}"
    return f"unstack {block(args[0])} from on top of {block(args[1])}"


def parse_action(line: str) -> Action | None:
    """One line of model text as an action, or None when it names no action (or the wrong number of blocks).
    Colours outside the 12 PlanBench ones are not blocks; blocks absent from the problem are left to the validator."""
    text = line.lower()
    if "unstack" in text:
        op = "unstack"
    elif "stack" in text:
        op = "stack"
    elif "pick up" in text or "pick-up" in text:
        op = "pick-up"
    elif "put down" in text or "put-down" in text:
        op = "put-down"
    else:
        return None
    args = [LETTERS[c] for c in _COLOUR_RE.findall(text)]
    return (op, *args) if len(args) == ARITY[op] else None


def parse_plan(text: str) -> list[Action | None]:
    """Model text (after `[PLAN]`) as a plan: lines up to the first `[` tag (e.g. `[PLAN END]`); each non-empty line
    is one step, `None` where it matches no action (the validator then fails the plan at that step)."""
    body = text.split("[", 1)[0]
    return [parse_action(line) for line in body.splitlines() if line.strip()]


# ---------------------------------------------------------------- prompts

# Used when no PlanBench prompt file is at hand (generated problems without the shared data): our own wording.
BUILTIN_INTRO = (
    "I am moving blocks on a table. The actions are: pick up a block, unstack a block from on top of another block, "
    "put down a block, stack a block on top of another block.\n\nRules: I hold at most one block. I can pick up or "
    "unstack a block only when my hand is empty and the block is clear (nothing on it). I can pick up a block only "
    "from the table, and unstack a block only from the block it is on. I can put down or stack only the block I hold, "
    "and stack it only on a clear block. After putting down or stacking, my hand is empty.\n\n"
)
BUILTIN_SELF_EVAL = (
    BUILTIN_INTRO + "Judge whether the proposed action brings me closer to my goal.\n\n[STATEMENT]\nAs initial "
    "conditions I have that, the red block is clear, the blue block is clear, the hand is empty, the red block is on "
    "the table and the blue block is on the table.\nMy goal is to have that the red block is on top of the blue "
    "block.\n[ACTION]\npick up the red block\n[EVALUATION]\ngood\n\n[STATEMENT]\nAs initial conditions I have that, "
    "the red block is clear, the blue block is clear, the hand is empty, the red block is on the table and the blue "
    "block is on the table.\nMy goal is to have that the red block is on top of the blue block.\n[ACTION]\npick up the "
    "blue block\n[EVALUATION]\nbad\n\n[STATEMENT]\nAs initial conditions I have that, <init_state>\nMy goal is to "
    "<goals>\n[ACTION]\n<action>\n[EVALUATION]\n"
)
BUILTIN_WORLD_UPDATE = (
    "Describe how one action changes the blocks.\n\n[STATE 0] I have that, the red block is clear, the blue block is "
    "clear, the hand is empty, the red block is on the table and the blue block is on the table.\n[ACTION] Pick up "
    "the red block.\n[CHANGE] The hand was empty and is now holding the red block, the red block was on the table and "
    "is now in the hand, and the red block is no longer clear.\n\n[STATE 0] I have that, {}\n[ACTION] {}\n[CHANGE]"
)


def demo_text(init: str, goal: str, plan: str) -> str:
    """One demonstration; `plan` starts with a newline and ends with `[PLAN END]\\n` (the prompt files' format)."""
    return (
        f"[STATEMENT]\nAs initial conditions I have that, {init}.\nMy goal is to have that {goal}.\n\n"
        f"My plan is as follows:\n\n[PLAN]{plan}"
    )


def query_text(state: str, goal: str, actions: list[str] = ()) -> str:
    """The question after the demonstrations; `actions` already taken are written after `[PLAN]`."""
    return (
        f"\n[STATEMENT]\nAs initial conditions I have that, {state}.\nMy goal is to have that {goal}.\n\n"
        f"My plan is as follows:\n\n[PLAN]\n" + "".join(a + "\n" for a in actions)
    )


def advance_demo(demo: dict) -> dict:
    """A demonstration moved on by two gold actions (init = its next recorded state), as the MCTS prompt list does
    for deeper nodes; demonstrations with one state left stay as they are."""
    if len(demo["states"]) <= 1:
        return demo
    lines = demo["plan"].strip("\n").split("\n")
    return {
        "init": demo["states"][0],
        "goal": demo["goal"],
        "plan": "\n" + "\n".join(lines[2:]) + "\n",
        "states": demo["states"][1:],
    }


def fewshot_prefix(intro: str, demos: list[dict], advance: int = 0) -> str:
    """Domain intro + demonstrations (each advanced `advance` times by two actions)."""
    shown = []
    for demo in demos:
        for _ in range(advance):
            demo = advance_demo(demo)
        shown.append(demo_text(demo["init"], demo["goal"], demo["plan"]))
    return intro + "\n".join(shown)


def self_eval_prompt(template: str, state: str, goal: str, action: str) -> str:
    return (
        template.replace("<init_state>", state + ".")
        .replace("<goals>", f"have that {goal}.")
        .replace("<action>", action)
    )


def world_update_prompt(template: str, state: str, action: str) -> str:
    """The `[CHANGE]` prompt of the LLM world model (one node expansion = one greedy generation)."""
    sentence = action[0].upper() + action[1:] + "."
    return template.replace("{}", state + ".", 1).replace("{}", sentence, 1)


def update_template(templates: dict, action: Action) -> str:
    key = {
        "pick-up": "world_update_pickup",
        "put-down": "world_update_putdown",
        "stack": "world_update_stack",
        "unstack": "world_update_unstack",
    }[action[0]]
    return templates.get(key, BUILTIN_WORLD_UPDATE)


def problem_texts(problem: Problem) -> tuple[str, str]:
    """(initial state text, goal text) of a problem."""
    return state_text(problem.init), join([atom_text(a) for a in sorted(problem.goal, key=lambda a: " ".join(a))])
