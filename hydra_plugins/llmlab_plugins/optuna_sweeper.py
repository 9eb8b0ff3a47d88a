"""`hydra/sweeper=optuna`: llmlab's Optuna sweeper (its code: llmlab.optuna_search), registered under the plugin's own
name. The plugin's `optuna` config carries a defaults list (the sampler), so a YAML file of the same name cannot
shadow it; llmlab stores its own `optuna` config instead, once Hydra has scanned (and so executed) every plugin module
in an order that depends on sys.path: from `ReplaceOptunaConfig.manipulate_search_path`, which Hydra calls after that.

Differences from the plugin's defaults: the study is stored in the sweep directory and resumes (`storage: null`
means sqlite:///<sweep dir>/optuna.db), the direction follows the runner's objective (llmlab/objectives.py), trials
run one batch of `n_jobs` = 1 at a time (raise it with a parallel launcher), the study is named `llmlab`.
Search space: `hydra.sweeper.params` or, on the command line, `key=choice(a,b)`, `key=range(1,5)`,
`key=interval(0.1,1)`, `key=tag(log,interval(1e-4,1e-2))`.
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    """hydra-optuna-sweeper with the study in the sweep directory, resumable, reporting its best trial."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,
        study_name: Any,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space: Any,
        custom_search_space: Any,
        params: Any,
    ) -> None:
        from llmlab.optuna_search import OptunaSearch  # optuna is imported only when a search runs

        self.sweeper = OptunaSearch(
            sampler,
            direction,
            storage,
            study_name,
            n_trials,
            n_jobs,
            max_failure_rate,
            search_space,
            custom_search_space,
            params,
        )


@dataclass
class LlmlabOptunaConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.llmlab_plugins.optuna_sweeper.OptunaSweeper"
    direction: Any = "${llmlab.objective_direction:${method.runner}}"  # minimize | maximize | a list (multi-objective)
    storage: Any = None  # None: sqlite:///<sweep dir>/optuna.db
    study_name: Any = "llmlab"
    n_trials: int = 20  # completed trials wanted; a resumed search runs only the missing ones
    n_jobs: int = 1  # trials launched together: with hydra/launcher=slurm or joblib, how many run at once


def store() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=LlmlabOptunaConf, provider="llmlab")


class ReplaceOptunaConfig(SearchPathPlugin):
    """Adds no search path: its hook runs after the plugin scan, late enough to replace the plugin's `optuna`."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        store()


store()
