"""Blocksworld as an MCTS problem: the rule world model (deterministic simulator, as the paper) and the search
config (legal actions, LLM-scored rewards from the few-shot action prompt and the self-evaluation prompt).

Prompt state follows the released code: the shown state is refreshed every two actions; after an odd action the
prompt shows the previous (hand-empty) state and writes the pending action after `[PLAN]`. The few-shot block moves
on with depth (demonstrations advanced by two actions per two steps).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from llmlab.blocksworld.domain import (
    Action,
    Problem,
    applicable,
    apply,
    goal_fraction,
    goal_reached,
    legal_actions,
)
from llmlab.blocksworld.text import (
    action_text,
    fewshot_prefix,
    problem_texts,
    query_text,
    self_eval_prompt,
    state_text,
)
from llmlab.search.rewards import RewardModel


@dataclass(frozen=True)
class BWState:
    atoms: frozenset
    step: int  # actions taken
    shown: frozenset  # the state written in the prompt (hand-empty, refreshed every two actions)
    pending: str | None  # the odd action written after [PLAN]


class RuleWorld:
    """Deterministic transitions; terminal when the goal holds or `depth_limit` actions are taken. `narrate`
    (optional) is called per transition with (state text, action text) and its dict is kept in the node's aux
    (the LLM world model's generated [CHANGE] text, its timing)."""

    def __init__(self, problem: Problem, depth_limit: int, narrate: Callable[[str, str], dict] | None = None):
        self.problem, self.depth_limit, self.narrate = problem, depth_limit, narrate

    def init_state(self) -> BWState:
        return BWState(self.problem.init, 0, self.problem.init, None)

    def step(self, state: BWState, action: Action) -> tuple[BWState, dict]:
        if not applicable(state.atoms, action):
            raise ValueError(f"illegal action {action} in search")
        atoms = apply(state.atoms, action)
        step = state.step + 1
        nxt = (
            BWState(atoms, step, atoms, None)
            if step % 2 == 0
            else BWState(atoms, step, state.atoms, action_text(action))
        )
        aux = {
            "goal_reached": goal_reached(atoms, self.problem.goal),
            "goal_fraction": goal_fraction(atoms, self.problem.goal),
        }
        if self.narrate is not None:
            aux.update(self.narrate(state_text(state.atoms), action_text(action)))
        return nxt, aux

    def is_terminal(self, state: BWState) -> bool:
        return goal_reached(state.atoms, self.problem.goal) or state.step >= self.depth_limit


class BWSearch:
    """Legal actions and their rewards (fast: LLM components; real: + the goal term)."""

    def __init__(self, problem: Problem, intro: str, demos: list[dict], self_eval: str, rewards: RewardModel):
        self.problem, self.intro, self.demos, self.self_eval, self.rewards = problem, intro, demos, self_eval, rewards
        self.goal_text = problem_texts(problem)[1]
        self._prefixes: dict[int, str] = {}

    def prefix(self, step: int) -> str:
        """The few-shot block for a node after `step` actions."""
        j = step // 2
        if j not in self._prefixes:
            self._prefixes[j] = fewshot_prefix(self.intro, self.demos, advance=j)
        return self._prefixes[j]

    def context(self, state: BWState) -> str:
        pending = [state.pending] if state.pending else []
        return self.prefix(state.step) + query_text(state_text(state.shown), self.goal_text, pending)

    def actions(self, state: BWState) -> list[Action]:
        return legal_actions(state.atoms, self.problem.blocks)

    def fast_rewards(self, state: BWState, actions: list[Action]) -> list[tuple[float, dict]]:
        texts = [action_text(a) for a in actions]
        shown = state_text(state.shown)
        se = [self_eval_prompt(self.self_eval, shown, self.goal_text, t) for t in texts]
        return self.rewards.fast(self.context(state), se, texts)

    def reward(self, state: BWState, action: Action, aux: dict, fast_parts: dict) -> tuple[float, dict]:
        return self.rewards.real(fast_parts, aux["goal_reached"], aux["goal_fraction"])


def random_rollout_samples(search: BWSearch, steps: int, rng: random.Random) -> list[dict]:
    """Raw reward components of every legal action along one random legal rollout (prior statistics)."""
    samples = []
    state = BWState(search.problem.init, 0, search.problem.init, None)
    world = RuleWorld(search.problem, steps)
    for _ in range(steps):
        actions = search.actions(state)
        texts = [action_text(a) for a in actions]
        shown = state_text(state.shown)
        se = [self_eval_prompt(search.self_eval, shown, search.goal_text, t) for t in texts]
        samples.extend(search.rewards.raw(search.context(state), se, texts))
        state, _ = world.step(state, rng.choice(actions))
    return samples
