"""hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml): submitit's SLURM launcher, made safe for preemptible jobs.

In the launching process `launch()` submits one array task per job (`sbatch`) and waits for every task, also after
one has failed: a task that ends without a result (cancelled, out of time, node failure, too many requeues) becomes a
failed job of the sweep, listed at its end with its SLURM state and log file, like a job whose run raised.

In each job (`__call__`, on the compute node) llmlab's signal handling replaces submitit's:
- SIGTERM (`scancel`, `scontrol requeue`, a preemption without warning) and SIGINT interrupt the run as Ctrl-C does:
  the training step in progress finishes, a checkpoint of it is written, meta.json says `interrupted`, the job exits
  143 (130), and submitit writes no result: a requeued job runs again, a cancelled one is reported as cancelled.
- SIGUSR2, sent `signal_delay_s` before the time limit (`--signal=USR2@...`) or by `scancel --signal=USR2` as a
  preemption warning, does the same, then lets submitit requeue the job (at most `max_num_timeout` times for time
  limits): it pickles the same call again and runs `scontrol requeue`.
- A job that runs again after a requeue (SLURM_RESTART_COUNT > 0) reuses its run directory (the sweep directory is
  pinned as if given on the command line), so it continues from its last checkpoint, in the same W&B run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import OmegaConf, open_dict, read_write

from llmlab import interrupts
from llmlab.errors import LlmlabError

log = logging.getLogger(__name__)
_EXECUTOR_KEYS = ("submitit_folder", "max_num_timeout")  # given to the executor itself, not as sbatch parameters


def restart_count() -> int:
    """How often SLURM has restarted this job (requeue, preemption, node failure); 0 outside SLURM."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


class SlurmLauncher(SubmititSlurmLauncher):
    """submitit's SLURM launcher; see the module docstring for what it adds."""

    # ------------------------------------------------------------------------------------ in the job (compute node)

    def __call__(
        self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: dict
    ) -> JobReturn:
        submitit_usr2 = signal.getsignal(signal.SIGUSR2)  # checkpoint_and_try_requeue, installed by submitit
        interrupts.install()  # SIGINT, SIGTERM, SIGUSR2: raised between training steps, after a checkpoint
        if restart_count() > 0:
            self._pin_sweep_dir()
        try:
            with interrupts.unmasked():
                return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        except interrupts.Preempted:
            print(
                f"llmlab: job #{job_num} preempted or near its time limit (SIGUSR2): checkpointed, requeueing",
                flush=True,
            )
            if callable(submitit_usr2):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `scontrol requeue` sends one: we are leaving anyway
                submitit_usr2(signal.SIGUSR2, None)  # pickles this call again, requeues, exits (rank 0)
            raise SystemExit(interrupts.exit_code(interrupts.Preempted())) from None
        except KeyboardInterrupt as e:  # no result file: SLURM requeues the job, or reports it cancelled
            what = "SIGTERM" if isinstance(e, interrupts.Terminated) else "SIGINT"
            print(
                f"llmlab: job #{job_num} interrupted ({what}); it continues from its checkpoint when it runs again",
                flush=True,
            )
            raise SystemExit(interrupts.exit_code(e)) from None

    def _pin_sweep_dir(self) -> None:
        """Name the sweep directory on the (pickled) command line: the job's directory is then a resume target
        (llmlab.cli.named_dir), not a fresh one that would move to `<num>-1` next to the earlier attempt's."""
        from hydra.core.utils import setup_globals

        from llmlab.distributed import hydra_value

        assert self.config is not None
        setup_globals()  # Hydra's resolvers (`now`): the pickled config resolves to the cached, original timestamp
        sweep = str(self.config.hydra.sweep.dir)
        pinned = f"hydra.sweep.dir={hydra_value(sweep)}"
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            hydra_overrides = [
                o for o in self.config.hydra.overrides.hydra if not o.lstrip("+").startswith("hydra.sweep.dir=")
            ]
            self.config.hydra.overrides.hydra = [*hydra_overrides, pinned]

    # ------------------------------------------------------------------------------------ in the launching process

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=params["submitit_folder"], slurm_max_num_timeout=params["max_num_timeout"]
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the keys submitit takes without "slurm_"
        executor.update_parameters(
            **{k if k in shared else f"slurm_{k}": v for k, v in params.items() if k not in _EXECUTOR_KEYS}
        )
        sweep = Path(str(self.config.hydra.sweep.dir))
        sweep.mkdir(parents=True, exist_ok=True)
        log.info(f"SLURM sweep output dir: {sweep}")
        calls = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            calls.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*calls))
        log.info(f"submitted SLURM job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks)")
        return [self._outcome(job, call[2], call[0], sweep) for job, call in zip(jobs, calls)]

    def _outcome(self, job: Any, num: int, overrides: list[str], sweep: Path) -> JobReturn:
        """The job's JobReturn; one that ended without a result (cancelled, timed out, failed outside the run) as a
        failed JobReturn, also recorded in the sweep's job records (llmlab.launch.JobCallback) for its summary."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        try:
            return job.results()[0]
        except (UncompletedJobError, FailedJobError) as e:
            state = job.state
            detail = str(e).strip().splitlines()[-1] if isinstance(e, FailedJobError) and str(e).strip() else ""
            error = (
                f"SLURM job {job.job_id} ended {state} without a result"
                + (f" ({detail})" if detail else "")
                + f"; log: {job.paths.stderr}"
            )
        record = sweep / ".jobs" / f"{num}.json"
        if not record.exists():
            from llmlab.io import write_json

            write_json(
                record,
                {
                    "num": num,
                    "overrides": list(overrides),
                    "dir": str(sweep / str(num)),
                    "status": "failed",
                    "error": error,
                    "slurm_state": state,
                },
            )
        else:  # the run recorded its own outcome (e.g. it failed, then the job could not save its result)
            error = json.loads(record.read_text()).get("error") or error
        ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
        ret.return_value = LlmlabError(error)
        return ret
