"""hydra/sweeper=optuna (conf/hydra/sweeper/optuna.yaml): hydra-optuna-sweeper with a study that outlives its process.

- The study is stored in the sweep directory (`sqlite:///<sweep>/optuna.db`) unless `hydra.sweeper.storage` is given,
  so the same command with `resume=auto` (which reuses the sweep directory) loads it and runs only the trials still
  missing: `n_trials` counts completed trials, a trial that was running when the search stopped is marked failed and
  its parameters are tried again first, and new trials get job numbers after the existing ones (a job directory is
  never reused for other parameters).
- Each trial's value is the runner's objective (llmlab.objectives); the direction follows the runner unless set.
- At the end the best trial is reported: a line on stderr and `<sweep>/optimization_results.yaml` (its parameters,
  value, metric, trial number and run directory).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from llmlab.io import notice
from llmlab.objectives import metric_name

log = logging.getLogger(__name__)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class OptunaSearch(OptunaSweeperImpl):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweep_path = Path(str(config.hydra.sweep.dir)).absolute()
        if self.storage is None:
            self.sweep_path.mkdir(parents=True, exist_ok=True)
            self.storage = f"sqlite:///{self.sweep_path / 'optuna.db'}"
        self.study_name = self.study_name or "llmlab"

    def sweep(self, arguments: list[str]) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "study created / loaded" lines; ours say more
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, directions=self._get_directions(), load_if_exists=True
        )
        for trial in study.trials:
            if trial.state == TrialState.RUNNING:  # its process is gone: retry the same parameters
                study.tell(trial.number, state=TrialState.FAIL)
                study.enqueue_trial(dict(trial.params))
                notice(f"optuna: trial #{trial.number} did not finish; running its parameters again")
        trials = study.trials
        done = sum(t.state in DONE for t in trials)
        if done:
            notice(
                f"optuna: study '{self.study_name}' has {done} finished trial(s); running "
                f"{max(0, self.n_trials - done)} more"
            )
        self.n_trials = max(0, self.n_trials - done)
        ran = sum(t.state != TrialState.WAITING for t in trials)
        used = [int(p.name) for p in self.sweep_path.glob("[0-9]*") if p.name.isdigit()]
        self.job_idx = max([ran, *(n + 1 for n in used)])  # trial number == job number while nothing collides
        super().sweep(arguments)
        self._report(optuna.load_study(study_name=self.study_name, storage=self.storage))

    def _report(self, study: optuna.Study) -> None:
        if len(study.directions) != 1:
            return
        best = study.best_trial
        runner = OmegaConf.select(self.config, "method.runner", default=None)
        metric = metric_name(runner) or "objective"
        run_dir = self._run_dir(best.params)
        direction = study.direction.name.lower()
        completed = sum(t.state == TrialState.COMPLETE for t in study.trials)
        params = ", ".join(f"{k}={v}" for k, v in best.params.items())
        shown = f"; run directory {run_dir}" if run_dir else ""
        notice(
            f"optuna: best of {completed} trials: #{best.number} {metric}={best.value:.6g} ({direction}) with "
            f"{params}{shown}"
        )
        results = {
            "name": "optuna",
            "best_params": dict(best.params),
            "best_value": best.value,
            "best_trial": best.number,
            "metric": metric,
            "direction": direction,
            "run_dir": str(run_dir) if run_dir else None,
            "completed_trials": completed,
            "storage": self.storage,
            "study_name": self.study_name,
        }
        (self.sweep_path / "optimization_results.yaml").write_text(yaml.safe_dump(results, sort_keys=False))

    def _run_dir(self, params: dict[str, Any]) -> Path | None:
        """The job directory whose overrides hold `params` (the trial's run)."""
        wanted = {f"{k}={v}" for k, v in params.items()}
        for path in sorted(self.sweep_path.glob("*/.hydra/overrides.yaml")):
            try:
                overrides = set(yaml.safe_load(path.read_text()) or [])
            except (OSError, yaml.YAMLError):
                continue
            if wanted <= overrides:
                return path.parent.parent
        return None
