"""Monte Carlo tree search over a world model and a search config, written out step by step.

One iteration: **select** (follow the UCT-best child down to a leaf), **expand** (compute the leaf's state and real
reward, create its children with their fast rewards), **simulate** (keep moving to the child with the best fast
reward, expanding as it goes, until a terminal node or the depth limit), **back-propagate** (append a return to
every node on the path). After `n_iters` iterations an output strategy picks the answer path.

- UCT(j) = Q_j + w_exp * sqrt(ln N_parent / max(1, N_j)); N = number of returns; Q = mean return, or the fast reward
  of a child not expanded yet (`uct_with_fast_reward`, the released code), else unvisited children come first.
- Returns: `sum_mean` (RAP / released code): node return = sum of the rewards from it down to the leaf.
  `refined` (paper Eq. 3): over the path [parent, node, ..., leaf] with values p_i, V = sum f(p_i - p_{i-1}) - lambda*n
  where f(d) = d if d >= 0 else 0.5 * max(d, -0.1) and n = nodes from the node to the leaf (our reading of the
  paper, which leaves p_i undefined: the node reward, or the fraction of goal atoms met).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol


class WorldModel(Protocol):
    def init_state(self) -> Any: ...
    def step(self, state: Any, action: Any) -> tuple[Any, dict]: ...  # next state, aux (e.g. goal_fraction)
    def is_terminal(self, state: Any) -> bool: ...


class SearchConfig(Protocol):
    def actions(self, state: Any) -> list: ...
    def fast_rewards(self, state: Any, actions: list) -> list[tuple[float, dict]]: ...  # batched, before stepping
    def reward(self, state: Any, action: Any, aux: dict, fast_parts: dict) -> tuple[float, dict]: ...


@dataclass(eq=False)
class Node:
    id: int
    parent: Node | None = None
    action: Any = None
    depth: int = 0
    state: Any = None  # None until expanded
    aux: dict = field(default_factory=dict)
    fast_reward: float = 0.0
    fast_parts: dict = field(default_factory=dict)
    reward: float = 0.0
    parts: dict = field(default_factory=dict)
    terminal: bool = False
    children: list[Node] | None = None
    returns: list[float] = field(default_factory=list)

    @property
    def visits(self) -> int:
        return len(self.returns)

    @property
    def q(self) -> float:
        return sum(self.returns) / len(self.returns) if self.returns else self.fast_reward


@dataclass
class MCTSSettings:
    n_iters: int = 10
    depth_limit: int = 6
    w_exp: float = 1.0
    uct_with_fast_reward: bool = True
    simulate: str = "max"  # max | random
    output: str = "max_reward"  # max_reward | follow_max | max_visit
    backprop: str = "sum_mean"  # sum_mean | refined
    bp_lambda: float = 0.1
    bp_value: str = "reward"  # reward | goal
    seed: int = 0


@dataclass
class SearchResult:
    path: list[Node]  # root first; empty when no terminal path was found
    root: Node
    nodes: list[Node]
    iterations: list[list[int]]  # node ids of each iteration's path


def uct(parent: Node, child: Node, w_exp: float, with_fast_reward: bool) -> float:
    if child.visits == 0 and not with_fast_reward:
        return math.inf
    explore = math.sqrt(math.log(parent.visits) / max(1, child.visits)) if parent.visits > 0 else 0.0
    return child.q + w_exp * explore


def refine_step(delta: float) -> float:
    """Paper Eq. 3's f: rises count fully, drops count half and are capped at -0.1."""
    return delta if delta >= 0 else 0.5 * max(delta, -0.1)


def refined_return(values: list[float], n_nodes: int, lam: float) -> float:
    """sum_i f(p_i - p_{i-1}) - lambda * n over a value sequence (parent first)."""
    return sum(refine_step(b - a) for a, b in zip(values, values[1:])) - lam * n_nodes


class MCTS:
    def __init__(self, world: WorldModel, search: SearchConfig, settings: MCTSSettings):
        self.world, self.search, self.s = world, search, settings
        self.rng = random.Random(settings.seed)
        self.nodes: list[Node] = []

    def new_node(self, **kw) -> Node:
        node = Node(id=len(self.nodes), **kw)
        self.nodes.append(node)
        return node

    def stops(self, node: Node) -> bool:
        return node.terminal or node.depth >= self.s.depth_limit

    # 1. select
    def select(self, root: Node) -> list[Node]:
        path, node = [root], root
        while node.children and not self.stops(node):
            node = max(node.children, key=lambda c: uct(node, c, self.s.w_exp, self.s.uct_with_fast_reward))
            path.append(node)
        return path

    # 2. expand
    def expand(self, node: Node) -> None:
        if node.state is None:
            node.state, node.aux = self.world.step(node.parent.state, node.action)
            node.reward, node.parts = self.search.reward(node.parent.state, node.action, node.aux, node.fast_parts)
            node.terminal = self.world.is_terminal(node.state)
        if self.stops(node) or node.children is not None:
            return
        actions = self.search.actions(node.state)
        scored = self.search.fast_rewards(node.state, actions)
        node.children = [
            self.new_node(parent=node, action=a, depth=node.depth + 1, fast_reward=r, fast_parts=p)
            for a, (r, p) in zip(actions, scored)
        ]

    # 3. simulate
    def simulate(self, path: list[Node]) -> list[Node]:
        node = path[-1]
        while True:
            self.expand(node)
            if self.stops(node) or not node.children:
                return path
            if self.s.simulate == "random":
                node = self.rng.choice(node.children)
            else:
                node = max(node.children, key=lambda c: c.fast_reward)
            path.append(node)

    # 4. back-propagate
    def backprop(self, path: list[Node]) -> None:
        if self.s.backprop == "sum_mean":
            total = 0.0
            for node in reversed(path):
                total += node.reward
                node.returns.append(total)
            return
        values = [n.aux.get("goal_fraction", 0.0) if self.s.bp_value == "goal" else n.reward for n in path]
        for j, node in enumerate(path):
            start = max(0, j - 1)
            node.returns.append(refined_return(values[start:], len(path) - j, self.s.bp_lambda))

    def run(self) -> SearchResult:
        if self.s.backprop not in ("sum_mean", "refined"):
            raise ValueError(f"backprop must be sum_mean or refined, got {self.s.backprop}")
        root = self.new_node(state=self.world.init_state())
        root.terminal = self.world.is_terminal(root.state)
        iterations = []
        for _ in range(self.s.n_iters):
            path = self.select(root)
            path = self.simulate(path)
            self.backprop(path)
            iterations.append([n.id for n in path])
        return SearchResult(self.answer(root), root, self.nodes, iterations)

    # output strategies
    def answer(self, root: Node) -> list[Node]:
        if self.s.output == "max_reward":
            best, path = self._max_reward(root)
            return path if best > -math.inf else []
        node, path = root, [root]
        while node.children:
            expanded = [c for c in node.children if c.state is not None]
            if not expanded:
                break
            key = (lambda c: c.visits) if self.s.output == "max_visit" else (lambda c: c.q)
            node = max(expanded, key=key)
            path.append(node)
        return path if path[-1].terminal or path[-1].depth >= self.s.depth_limit else []

    def _max_reward(self, node: Node) -> tuple[float, list[Node]]:
        """The terminal path with the largest summed reward (depth-first over expanded nodes)."""
        if node.state is not None and self.stops(node) and node.parent is not None:
            return node.reward, [node]
        best, best_path = -math.inf, []
        for child in node.children or []:
            if child.state is None:
                continue
            value, sub = self._max_reward(child)
            if value + node.reward > best and sub:
                best, best_path = value + node.reward, [node, *sub]
        return best, best_path


def dump_tree(result: SearchResult, describe=None) -> dict:
    """A JSON-ready tree: one flat record per node (parent id, action, rewards, returns), plus iteration paths."""
    describe = describe or (lambda n: {})
    nodes = []
    for n in result.nodes:
        nodes.append(
            {
                "id": n.id,
                "parent": n.parent.id if n.parent else None,
                "depth": n.depth,
                "action": None if n.action is None else str(n.action),
                "expanded": n.state is not None,
                "terminal": n.terminal,
                "fast_reward": n.fast_reward,
                "fast_parts": n.fast_parts,
                "reward": n.reward,
                "parts": n.parts,
                "visits": n.visits,
                "q": n.q,
                "returns": n.returns,
                **describe(n),
            }
        )
    return {"answer": [n.id for n in result.path], "iterations": result.iterations, "nodes": nodes}
