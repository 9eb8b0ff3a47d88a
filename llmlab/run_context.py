"""What the CLI hands a runner besides its config, and the lifecycle of one run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from omegaconf import DictConfig

from llmlab import interrupts
from llmlab.hardware import Hardware
from llmlab.run_dir import RunDir
from llmlab.tracking import Tracker


@dataclass
class RunContext:
    hw: Hardware
    run_dir: RunDir
    tracker: Tracker

    def log_final(self, metrics: dict) -> None:
        """A run's final metrics: to metrics.jsonl, the W&B history and the W&B summary."""
        self.run_dir.log_metrics(metrics)
        self.tracker.log(metrics)
        self.tracker.summary(metrics)


class RunResult(TypedDict, total=False):
    """What a runner returns: the contents of the results.json it wrote (runners add keys of their own)."""

    runner: str
    metrics: dict[str, dict[str, Any]]  # per variant: metric name -> value (the sweep objective reads the first)
    model: str
    dataset: str
    seed: int
    timing: dict[str, Any]


Runner = Callable[[DictConfig, RunContext], RunResult]  # the contract of every `run` (llmlab.registry)


def execute(runner: Runner, cfg: DictConfig, ctx: RunContext) -> RunResult:
    """Run `runner`, then close the tracker and record the outcome (completed / interrupted / failed) in meta.json."""
    status = "failed"
    try:
        with interrupts.unmasked():
            result = runner(cfg, ctx)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        with interrupts.deferred():  # a second signal must not skip the record of the outcome
            ctx.tracker.finish(exit_code=0 if status == "completed" else 1)
            ctx.run_dir.finish(status)
    return result
