"""Runner registry: a method's `runner` name selects a function `run(cfg, ctx) -> dict` and the schema of its config.

Entries are lazy ("module:function") so composing a config or a dry run imports no runner code.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from llmlab.config import (
    CircuitShiftConfig,
    CoTConfig,
    FinetuneConfig,
    ICLConfig,
    IclVsFtConfig,
    InfoFlowConfig,
    LMMetricsConfig,
    MCTSConfig,
    MethodConfig,
    MreAblationConfig,
    PositionProbeConfig,
    PretrainConfig,
    VerbalizerConfig,
)
from llmlab.errors import LlmlabError


@dataclass(frozen=True)
class RunnerEntry:
    target: str  # "package.module:function"
    schema: type[MethodConfig]


RUNNERS: dict[str, RunnerEntry] = {}


def register_runner(name: str, target: str, schema: type[MethodConfig]) -> None:
    """Register a runner; method YAMLs validate against its schema by listing `/schema/method/<name>@_here_`."""
    from hydra.core.config_store import ConfigStore

    RUNNERS[name] = RunnerEntry(target, schema)
    ConfigStore.instance().store(group="schema/method", name=name, node=schema)


def get_runner(name: str) -> Callable:
    """The runner function for `name`; an unknown name lists the registered ones."""
    if name not in RUNNERS:
        close = difflib.get_close_matches(name, RUNNERS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LlmlabError(f"unknown runner '{name}'{hint}; registered runners: {', '.join(sorted(RUNNERS))}")
    module, _, attr = RUNNERS[name].target.partition(":")
    return getattr(importlib.import_module(module), attr)


register_runner("icl", "llmlab.runners.icl:run", ICLConfig)
register_runner("finetune", "llmlab.runners.finetune:run", FinetuneConfig)
register_runner("icl_vs_ft", "llmlab.runners.icl_vs_ft:run", IclVsFtConfig)
register_runner("circuit_shift", "llmlab.runners.circuit_shift:run", CircuitShiftConfig)
register_runner("pretrain", "llmlab.runners.pretrain:run", PretrainConfig)
register_runner("lm_metrics", "llmlab.runners.lm_metrics:run", LMMetricsConfig)
register_runner("position_probe", "llmlab.runners.position_probe:run", PositionProbeConfig)
register_runner("info_flow", "llmlab.runners.info_flow:run", InfoFlowConfig)
register_runner("verbalizer", "llmlab.runners.verbalizer:run", VerbalizerConfig)
register_runner("mre_ablation", "llmlab.runners.mre_ablation:run", MreAblationConfig)
register_runner("cot", "llmlab.runners.cot:run", CoTConfig)
register_runner("mcts", "llmlab.runners.mcts:run", MCTSConfig)
