"""What a sweeper optimises: each runner's primary metric and whether higher or lower is better (issue #16).

A job returns `objective(results)` to Hydra (llmlab.cli.primary_metric); `hydra/sweeper=optuna` minimises or maximises
it as `direction(runner)` says (conf/hydra/sweeper/optuna.yaml), unless `hydra.sweeper.direction` is given.

    runner          metric (first variant of results["metrics"], else top level)    direction
    icl             strict: exact-match accuracy of the generated answers           maximize
    pretrain        val_loss: validation loss (nats/token) after the last step      minimize
    finetune        final_loss: training loss of the last step (no held-out set)    minimize
    lm_metrics      ppl@1x: perplexity at the training context length               minimize
    icl_vs_ft       the first task/condition accuracy                               maximize
    position_probe  accuracy                                                        maximize
    cot, mcts       accuracy (Blocksworld plans solved)                             maximize

Other runners return their first metric, with no direction of their own.
"""

from __future__ import annotations

from typing import Any

from llmlab.errors import LlmlabError

# runner: (metric or None for the first one, direction)
OBJECTIVES: dict[str, tuple[str | None, str]] = {
    "icl": ("strict", "maximize"),
    "pretrain": ("val_loss", "minimize"),
    "finetune": ("final_loss", "minimize"),
    "lm_metrics": ("ppl@1x", "minimize"),
    "icl_vs_ft": (None, "maximize"),
    "position_probe": ("accuracy", "maximize"),
    "cot": ("accuracy", "maximize"),
    "mcts": ("accuracy", "maximize"),
}


def metric_name(runner: str | None) -> str | None:
    return OBJECTIVES.get(runner or "", (None, ""))[0]


def direction(runner: str) -> str:
    """`minimize` or `maximize` for `runner`'s objective; an error for a runner that states none."""
    if runner not in OBJECTIVES:
        known = ", ".join(sorted(OBJECTIVES))
        raise LlmlabError(
            f"method.runner={runner} states no sweep objective (runners that do: {known}); set "
            "hydra.sweeper.direction=minimize or maximize"
        )
    return OBJECTIVES[runner][1]


def objective(result: dict[str, Any] | None, runner: str | None = None) -> float | None:
    """The runner's primary metric in `result` (its results.json): the named metric of the first variant under
    "metrics" (or at the top level), else the first metric there; None when there is none."""
    result = result or {}
    name = metric_name(runner or result.get("runner"))
    variants = [v for v in (result.get("metrics") or {}).values() if isinstance(v, dict)]
    if name is not None:
        for values in variants[:1]:
            if isinstance(values.get(name), (int, float)):
                return values[name]
        if isinstance(result.get(name), (int, float)):
            return result[name]
    for values in variants[:1]:
        for key, value in values.items():
            if key != "n" and isinstance(value, (int, float)):
                return value
    return None
