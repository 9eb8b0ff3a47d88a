"""`llmlab`: compose the config (Hydra), then run the selected runner in a fresh run directory.

    llmlab method=icl dataset=implicit/relation method.shots=8
    llmlab -m dataset=implicit/expression,implicit/bool method.shots=0,4,16 seed=0,1,2
    llmlab --cfg job model=qwen1.5-7b hardware=gpu      # print the composed config, load nothing
    llmlab report outputs/multirun/...                  # table + plot from finished runs
    llmlab plan model=qwen1.5-7b method=finetune hardware=gpu   # memory per GPU; DDP or FSDP

Bad input (unknown group option or key, wrong type, missing file or model) is reported as one line, exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmlab import interrupts
from llmlab.config import InvalidConfig, validate_config
from llmlab.errors import LlmlabError
from llmlab.hydra_errors import one_line, raised_by_hydra, sweep_hint
from llmlab.launch import failure_summary, finished_result, resume_overrides
from llmlab.paths import conf_dir
from llmlab.registry import get_runner, register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _job(cfg: DictConfig) -> float | None:
    """One job: set up hardware, seed, run directory and tracker; run the runner; record the outcome."""
    with interrupts.deferred():  # torch's import swallows an interruption of numpy's and goes on with numpy half
        import torch  # noqa: F401  imported (a later crash, exit 1): a signal there is raised once the import is done
    try:
        validate_config(cfg)  # a sweep's job checks its own values (a single run did, before its directory was made)
        OmegaConf.resolve(cfg)
        if cfg.model.source == "shape" and not cfg.model.name.endswith("+random-init"):
            cfg.model.name += "+random-init"  # its results must not pass for the pretrained model's
        missing = OmegaConf.missing_keys(cfg)
        if missing:
            raise LlmlabError(f"missing required value(s): {', '.join(sorted(missing))} (set them as key=value)")
        done = finished_result(cfg)  # resume=auto: a job whose run directory completed is not run again
        if done is not None:
            return primary_metric(done)
        from llmlab.distributed import job_tasks, processes_to_launch

        nproc = processes_to_launch(cfg.hardware)
        if nproc > 1 or job_tasks()[0] > 1:  # issue #8: `nproc` torchrun ranks (on each SLURM task) share its run dir
            return _relaunch(cfg, nproc)
        return _run(cfg)
    except LlmlabError as e:  # exit here: Hydra would otherwise log the failure on extra lines
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # recorded by llmlab.launch.JobCallback: the sweep goes on and lists its failures at the end
        print(f"llmlab: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(cfg: DictConfig) -> float | None:
    from llmlab.hardware import setup_hardware
    from llmlab.run_context import RunContext, execute
    from llmlab.run_dir import RunDir
    from llmlab.seeding import seed_everything
    from llmlab.tracking import Tracker

    runner = get_runner(cfg.method.runner)
    hw = setup_hardware(cfg.hardware)
    seed_everything(cfg.seed)
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    run_dir = RunDir(cfg.output_dir, cfg, overrides, fresh=not named_dir(hc))
    try:  # from here on the run directory records how the run ended, whenever that is
        if hw.is_main:
            OmegaConf.update(cfg, "output_dir", str(run_dir.path))
            save_hydra_files(run_dir.path, cfg, hc)
            say(plan(cfg, hw, run_dir.path))
        name = ",".join(overrides) or cfg.method.runner
        group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None  # one W&B group per sweep
        tracker = Tracker(cfg, run_dir, name=name, group=group, is_main=hw.is_main)
    except BaseException as e:
        run_dir.finish("failed" if interrupts.interruption(e) is None else "interrupted")
        raise
    result = execute(runner, cfg, RunContext(hw, run_dir, tracker))
    if hw.is_main:
        say(f"run directory: {run_dir.path}")
    return primary_metric(result)


def plan(cfg: DictConfig, hw, path: Path) -> str:
    """The one line a run prints before it starts: what runs, on what, where it writes."""
    dtype = str(hw.dtype).removeprefix("torch.")
    return (
        f"llmlab: {cfg.method.runner} · model {cfg.model.name} · dataset {cfg.dataset.name} · seed {cfg.seed} · "
        f"{hw.device.type} {dtype} · writing to {path}"
    )


def named_dir(hc) -> bool:
    """Whether this job's directory was named on the command line (`hydra.run.dir`, `hydra.sweep.dir`, as
    `resume=auto` does): a resume target, not a fresh directory named by the clock."""
    key = "hydra.sweep.dir" if hc.mode == RunMode.MULTIRUN else "hydra.run.dir"
    return any(o.split("=", 1)[0].lstrip("+") == key for o in hc.overrides.hydra)


def save_hydra_files(path: Path, cfg: DictConfig, hc) -> None:
    """`.hydra/` (composed config, Hydra's config, the overrides), written by this job into the directory it claimed
    (conf/config.yaml turns Hydra's own copy off: two jobs of the same second would write it into one directory)."""
    from llmlab.io import atomic_write

    atomic_write(path / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write(path / ".hydra" / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))
    atomic_write(path / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task))))


def say(text: str) -> None:
    """Print to stdout; a closed stdout (`llmlab ... | head -1`) is not an error of the run: further output is
    dropped."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again


def _relaunch(cfg: DictConfig, nproc: int) -> float | None:
    """Run this job as `nproc` ranks under torchrun: the same overrides, this job's run directory (a multirun job
    relaunches itself into its own). Returns the primary metric of the results rank 0 wrote."""
    import json
    import subprocess

    from llmlab.distributed import check_launch, hydra_value, ignore_preemption_warning, torchrun_command

    check_launch(cfg, nproc)
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN and cfg.logger.group is None:  # one W&B group per sweep, as in one process
        overrides.append(f"logger.group={hydra_value(Path(hc.sweep.dir).name)}")
    proc = subprocess.Popen(
        torchrun_command(nproc, overrides, hc.runtime.output_dir),
        cwd=hc.runtime.cwd,
        preexec_fn=ignore_preemption_warning,
    )
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # the ranks got the signal too: let them record it
        proc.wait()
        raise
    if code != 0:  # an error, not an exit: in a sweep the other jobs go on (llmlab.launch.JobCallback)
        raise LlmlabError(f"torchrun exited with code {code} ({nproc} ranks); the ranks' errors are above")
    results = Path(hc.runtime.output_dir) / "results.json"
    return primary_metric(json.loads(results.read_text())) if results.is_file() else None


def primary_metric(result: dict) -> float | None:
    """The runner's objective (llmlab.objectives: which metric, minimised or maximised), returned to Hydra sweepers
    (e.g. Optuna)."""
    from llmlab.objectives import objective

    return objective(result)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from llmlab.report import main as report_main

        return report_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "plan":
        from llmlab.memory_plan import main as plan_main

        return plan_main(sys.argv[2:])
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, so each is printed as one line
    interrupts.install()  # SIGTERM (schedulers, preemption) is handled like Ctrl-C
    try:
        sys.argv += resume_overrides(sys.argv[1:])  # resume=auto: the newest unfinished run directory of this command
        with failure_summary(), interrupts.unmasked():  # multirun: failed jobs are listed at the end, exit code 1
            _job()
    except (LlmlabError, HydraException, OmegaConfBaseException, InvalidConfig) as e:
        msg = one_line(e)
        print(f"llmlab: error: {msg}{sweep_hint(msg, sys.argv[1:])}", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:  # Hydra's own command-line checks (e.g. --cfg with -m) raise plain ValueErrors
        if not raised_by_hydra(e):
            raise
        print(f"llmlab: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # e.g. a run directory that cannot be made (`hydra.run.dir=/proc/x`)
        paths = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        print(f"llmlab: error: {paths or type(e).__name__}: {e.strerror or one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (llmlab.interrupts)
        what = "terminated (SIGTERM)" if isinstance(e, interrupts.Terminated) else "interrupted"
        print(
            f"llmlab: {what}; finished work is kept, run the same command with resume=auto to resume", file=sys.stderr
        )
        sys.exit(interrupts.exit_code(e))


if __name__ == "__main__":
    main()
