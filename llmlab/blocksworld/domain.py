"""The 4-operator Blocksworld domain: states as sets of ground atoms, actions with STRIPS preconditions and effects,
PDDL instance parsing, plan validation, an optimal BFS planner and a seeded problem generator.

Atoms are tuples: ("on", "b", "c"), ("ontable", "a"), ("clear", "a"), ("holding", "a"), ("handempty",).
Actions are tuples: ("pick-up", x), ("put-down", x), ("stack", x, y), ("unstack", x, y).
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from llmlab.errors import LlmlabError

Atom = tuple[str, ...]
Action = tuple[str, ...]
State = frozenset  # of Atom
ARITY = {"pick-up": 1, "put-down": 1, "stack": 2, "unstack": 2}
PREDICATES = {"on": 2, "ontable": 1, "clear": 1, "holding": 1, "handempty": 0}


@dataclass(frozen=True)
class Problem:
    name: str
    blocks: tuple[str, ...]
    init: State
    goal: frozenset  # of ("on", x, y) atoms (PlanBench goals use only `on`)


# ---------------------------------------------------------------- simulator


def preconditions(action: Action) -> list[Atom]:
    op, *args = action
    if op == "pick-up":
        return [("clear", args[0]), ("ontable", args[0]), ("handempty",)]
    if op == "put-down":
        return [("holding", args[0])]
    if op == "stack":
        return [("clear", args[1]), ("holding", args[0])]
    if op == "unstack":
        return [("on", args[0], args[1]), ("clear", args[0]), ("handempty",)]
    raise LlmlabError(f"unknown blocksworld action '{op}'; choose pick-up, put-down, stack, unstack")


def effects(action: Action) -> tuple[list[Atom], list[Atom]]:
    """(added atoms, deleted atoms) of `action`."""
    op, *args = action
    x = args[0]
    if op == "pick-up":
        return [("holding", x)], [("clear", x), ("ontable", x), ("handempty",)]
    if op == "put-down":
        return [("clear", x), ("handempty",), ("ontable", x)], [("holding", x)]
    if op == "stack":
        return [("handempty",), ("clear", x), ("on", x, args[1])], [("clear", args[1]), ("holding", x)]
    return [("holding", x), ("clear", args[1])], [("on", x, args[1]), ("clear", x), ("handempty",)]  # unstack


def applicable(state: State, action: Action) -> bool:
    return all(atom in state for atom in preconditions(action))


def apply(state: State, action: Action) -> State:
    """The successor state; the caller checks `applicable` first."""
    add, delete = effects(action)
    return frozenset((set(state) - set(delete)) | set(add))


def legal_actions(state: State, blocks: tuple[str, ...]) -> list[Action]:
    """Every applicable action, in a fixed order (block order of the problem)."""
    held = [a[1] for a in state if a[0] == "holding"]
    clear = [b for b in blocks if ("clear", b) in state]
    if held:
        h = held[0]
        return [("put-down", h)] + [("stack", h, c) for c in clear if c != h]
    out = []
    for b in clear:
        if ("ontable", b) in state:
            out.append(("pick-up", b))
        else:
            below = next(a[2] for a in state if a[0] == "on" and a[1] == b)
            out.append(("unstack", b, below))
    return out


def goal_reached(state: State, goal: frozenset) -> bool:
    return goal <= state


def goal_fraction(state: State, goal: frozenset) -> float:
    return sum(atom in state for atom in goal) / len(goal) if goal else 1.0


@dataclass
class Verdict:
    valid: bool
    reason: str  # "" when valid
    n_executed: int  # actions applied before the first failure
    final: State


def validate(problem: Problem, plan: list[Action | None]) -> Verdict:
    """VAL semantics: every action's preconditions hold in turn and the goal holds in the final state. A `None` step
    (model text that matched no action) makes the plan invalid."""
    state = problem.init
    for i, action in enumerate(plan):
        if action is None:
            return Verdict(False, f"step {i + 1} is not an action", i, state)
        unknown = [b for b in action[1:] if b not in problem.blocks]
        if unknown:
            return Verdict(False, f"step {i + 1} names unknown block(s) {unknown}", i, state)
        if not applicable(state, action):
            return Verdict(False, f"step {i + 1} {format_action(action)}: preconditions do not hold", i, state)
        state = apply(state, action)
    if not goal_reached(state, problem.goal):
        return Verdict(False, "goal not reached", len(plan), state)
    return Verdict(True, "", len(plan), state)


def format_action(action: Action) -> str:
    return "(" + " ".join(action) + ")"


# ---------------------------------------------------------------- PDDL

_SECTION = re.compile(r"\(:(objects|init|goal)(.*?)(?=\(:|\Z)", re.S)
_ATOM = re.compile(r"\(\s*([a-z-]+)((?:\s+[a-z0-9_-]+)*)\s*\)")
_COMMENT = re.compile(r";[^\n]*")  # PDDL comments run from ';' to the end of the line


def parse_pddl(text: str, name: str = "problem") -> Problem:
    """A PlanBench problem file: objects, init atoms, goal atoms (a conjunction of `on`); `;` comments ignored."""
    text = _COMMENT.sub("", text.lower())
    sections = {key: body for key, body in _SECTION.findall(text)}
    if set(sections) != {"objects", "init", "goal"}:
        missing = sorted({"objects", "init", "goal"} - set(sections))
        raise LlmlabError(f"PDDL '{name}' does not parse: missing section(s) {', '.join(missing)}")
    blocks = tuple(sections["objects"].replace(")", " ").split())
    if not blocks:
        raise LlmlabError(f"PDDL '{name}' does not parse: no objects")

    def atoms(body: str, where: str) -> frozenset:
        out = set()
        for pred, args in _ATOM.findall(body):
            if pred == "and":
                continue
            args = tuple(args.split())
            if PREDICATES.get(pred) != len(args) or any(a not in blocks for a in args):
                raise LlmlabError(f"PDDL '{name}' does not parse: bad {where} atom ({pred} {' '.join(args)})")
            out.add((pred, *args))
        return frozenset(out)

    init, goal = atoms(sections["init"], "init"), atoms(sections["goal"], "goal")
    if not goal or any(a[0] != "on" for a in goal):
        raise LlmlabError(f"PDDL '{name}': the goal must be a non-empty conjunction of (on x y) atoms")
    problem = Problem(name, blocks, init, goal)
    check_consistent(problem)
    return problem


def read_pddl(path: str | Path) -> Problem:
    path = Path(path)
    if not path.is_file():
        raise LlmlabError(f"blocksworld instance {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LlmlabError(f"blocksworld instance {path} is not UTF-8 text") from None
    return parse_pddl(text, path.name)


def parse_pddl_plan(text: str, blocks: tuple[str, ...], name: str = "plan") -> list[Action]:
    """A gold plan in PDDL form, `(unstack b c)` one per line; an unknown action or block is an error."""
    plan = []
    for line in text.strip().splitlines():
        parts = line.strip().strip("()").split()
        if not parts:
            continue
        op, args = parts[0].lower(), tuple(p.lower() for p in parts[1:])
        if ARITY.get(op) != len(args):
            raise LlmlabError(f"{name}: unknown action {line.strip()!r} (choose pick-up, put-down, stack, unstack)")
        unknown = [a for a in args if a not in blocks]
        if unknown:
            raise LlmlabError(f"{name}: {line.strip()!r} names unknown block(s) {unknown} (blocks: {list(blocks)})")
        plan.append((op, *args))
    return plan


def check_consistent(problem: Problem) -> None:
    """The goal `on` atoms must describe towers: no block on itself or on two blocks, no two blocks on one, no cycle.
    Otherwise no plan can reach it."""
    above: dict[str, str] = {}
    below: dict[str, str] = {}
    for _, x, y in problem.goal:
        if x == y or x in above or y in below:
            raise LlmlabError(f"problem '{problem.name}': goal unreachable (conflicting atom (on {x} {y}))")
        above[x], below[y] = y, x
    for start in above:
        seen, cur = set(), start
        while cur in above:
            if cur in seen:
                raise LlmlabError(f"problem '{problem.name}': goal unreachable (the on atoms form a cycle)")
            seen.add(cur)
            cur = above[cur]


# ---------------------------------------------------------------- planning and generation


def optimal_plan(problem: Problem, max_states: int = 200_000) -> list[Action]:
    """A shortest plan by breadth-first search (5 blocks: under 1,000 reachable states)."""
    check_consistent(problem)
    start = problem.init
    parent: dict[State, tuple[State, Action] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if goal_reached(state, problem.goal):
            plan = []
            while parent[state] is not None:
                state, action = parent[state]  # type: ignore[misc]
                plan.append(action)
            return plan[::-1]
        for action in legal_actions(state, problem.blocks):
            nxt = apply(state, action)
            if nxt not in parent:
                parent[nxt] = (state, action)
                queue.append(nxt)
        if len(parent) > max_states:
            break
    raise LlmlabError(f"problem '{problem.name}': goal unreachable from the initial state")


def random_towers(blocks: tuple[str, ...], rng: random.Random) -> State:
    """A random hand-empty configuration: a random order of the blocks cut into random towers."""
    order = list(blocks)
    rng.shuffle(order)
    atoms: set[Atom] = {("handempty",)}
    tower: list[str] = []
    for b in order:
        if tower and rng.random() < 0.5:
            atoms.add(("on", b, tower[-1]))
            atoms.discard(("clear", tower[-1]))
        else:
            atoms.add(("ontable", b))
            tower = []
        tower.append(b)
        atoms.add(("clear", b))
    return frozenset(atoms)


def generate_problems(
    n: int, steps: int, seed: int, n_blocks: tuple[int, ...] = (3, 4, 5), max_tries: int = 100_000
) -> list[tuple[Problem, list[Action]]]:
    """`n` random problems whose optimal plan has exactly `steps` actions, each with that plan (BFS). Goal = a random
    non-empty subset of a random target configuration's `on` atoms that does not hold initially."""
    rng = random.Random(f"blocksworld-gen-{seed}-{steps}")
    out: list[tuple[Problem, list[Action]]] = []
    seen = set()
    for _ in range(max_tries):
        if len(out) == n:
            return out
        k = rng.choice(n_blocks)
        blocks = tuple("abcdefghijkl"[:k])
        init, target = random_towers(blocks, rng), random_towers(blocks, rng)
        ons = sorted(a for a in target if a[0] == "on" and a not in init)
        if not ons:
            continue
        goal = frozenset(rng.sample(ons, rng.randint(1, len(ons))))
        if (init, goal) in seen:
            continue
        seen.add((init, goal))
        problem = Problem(f"gen-{seed}-{steps}-{len(out)}", blocks, init, goal)
        plan = optimal_plan(problem)
        if len(plan) == steps:
            out.append((problem, plan))
    raise LlmlabError(f"could not generate {n} problems of optimal length {steps} with {n_blocks} blocks")
