"""What a sweeper optimises: each runner's primary metric and whether higher or lower is better (issue #16).

A runner states its objective where it is registered, `@register_runner(..., objective=(metric, direction))`
(llmlab.registry). A job returns `objective(results)` to Hydra (llmlab.cli.primary_metric): that metric of the first
variant of results["metrics"], else of the top level (metric None: the first one there); `hydra/sweeper=optuna`
minimises or maximises it as `direction(runner)` says (conf/hydra/sweeper/optuna.yaml), unless
`hydra.sweeper.direction` is given. Runners without an objective return their first metric, with no direction.
"""

from __future__ import annotations

from typing import Any

from llmlab.errors import LlmlabError
from llmlab.registry import RUNNERS, Objective


def stated(runner: str | None) -> Objective | None:
    """The (metric, direction) `runner` registered, or None."""
    entry = RUNNERS.get(runner or "")
    return entry.objective if entry else None


def metric_name(runner: str | None) -> str | None:
    return (stated(runner) or (None, ""))[0]


def direction(runner: str) -> str:
    """`minimize` or `maximize` for `runner`'s objective; an error for a runner that states none."""
    spec = stated(runner)
    if spec is None:
        known = ", ".join(sorted(name for name, entry in RUNNERS.items() if entry.objective))
        raise LlmlabError(
            f"method.runner={runner} states no sweep objective (runners that do: {known}); set "
            "hydra.sweeper.direction=minimize or maximize"
        )
    return spec[1]


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
