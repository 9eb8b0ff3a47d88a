"""A picture of one MCTS search tree from its dump (`trees/<id>.json` of `method=mcts|mcts_rap|sc_mcts`).

    python -m llmlab.analysis.mcts_tree RUN_DIR/trees/<id>.json OUT.png

Nodes sit at their depth (rows) in depth-first order (columns); each is labelled with its action and `visits / Q`.
Expanded nodes are blue, candidates that were scored but never expanded grey, the answer path red.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llmlab.errors import LlmlabError
from llmlab.figures import save_figure


def layout(nodes: list[dict]) -> dict[int, tuple[float, int]]:
    """(x, depth) per node id: leaves take consecutive columns in depth-first order, a parent sits over its children."""
    children: dict[int | None, list[int]] = {}
    for n in nodes:
        children.setdefault(n["parent"], []).append(n["id"])
    depth = {n["id"]: n["depth"] for n in nodes}
    pos: dict[int, tuple[float, int]] = {}
    next_leaf = 0

    def place(node: int) -> float:
        nonlocal next_leaf
        kids = children.get(node, [])
        if not kids:
            x = float(next_leaf)
            next_leaf += 1
        else:
            xs = [place(k) for k in kids]
            x = (xs[0] + xs[-1]) / 2
        pos[node] = (x, depth[node])
        return x

    for root in children.get(None, []):
        place(root)
    return pos


def label(node: dict) -> str:
    action = node["action"]
    if action is None:
        text = "root"
    else:
        parts = action.strip("()").replace("'", "").split(", ")
        text = " ".join(parts)
    return f"{text}\n{node['visits']} / {node['q']:.2g}" if node["visits"] else text


def plot_tree(tree: dict, path: Path, title: str = "") -> Path:
    """Draw `tree` (a `dump_tree` record) into `path` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = tree.get("nodes")
    if not nodes:
        raise LlmlabError(f"{title or 'tree'}: no nodes to draw")
    pos = layout(nodes)
    answer = set(tree.get("answer", []))
    width = max(x for x, _ in pos.values()) + 1
    height = max(d for _, d in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(min(40.0, 1.6 + 1.5 * width), 1.2 + 1.3 * height))
    for n in nodes:
        if n["parent"] is not None:
            (x0, y0), (x1, y1) = pos[n["parent"]], pos[n["id"]]
            on_path = n["id"] in answer and n["parent"] in answer
            ax.plot([x0, x1], [-y0, -y1], color="tab:red" if on_path else "0.7", lw=2 if on_path else 1, zorder=1)
    for n in nodes:
        x, y = pos[n["id"]]
        color = "tab:red" if n["id"] in answer else "tab:blue" if n["expanded"] else "0.75"
        ax.scatter([x], [-y], s=60, color=color, zorder=2)
        ax.annotate(label(n), (x, -y), textcoords="offset points", xytext=(0, -10), ha="center", va="top", fontsize=7)
    ax.set_title(title or f"MCTS tree: {len(nodes)} nodes, {len(tree.get('iterations', []))} iterations", fontsize=9)
    ax.set_xlim(-0.8, width - 0.2)
    ax.set_ylim(-height + 0.2, 0.6)
    ax.axis("off")
    save_figure(fig, path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m llmlab.analysis.mcts_tree TREE.json OUT.png", file=sys.stderr)
        return 2
    src = Path(args[0])
    try:
        tree = json.loads(src.read_text())
        plot_tree(tree, Path(args[1]), title=f"{src.parent.parent.name}/{src.stem}")
    except (OSError, ValueError, LlmlabError, KeyError, TypeError) as e:
        print(f"mcts_tree: error: {src}: {e}", file=sys.stderr)
        return 2
    print(args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
