"""`llmlab`: compose the config (Hydra), then run the selected runner in a fresh run directory.

    llmlab method=icl dataset=implicit/relation method.shots=8
    llmlab -m dataset=implicit/expression,implicit/bool method.shots=0,4,16 seed=0,1,2
    llmlab --cfg job model=qwen1.5-7b hardware=gpu      # print the composed config, load nothing
    llmlab report outputs/multirun/...                  # table + plot from finished runs

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

from llmlab.config import register_schemas
from llmlab.errors import LlmlabError
from llmlab.paths import conf_dir
from llmlab.registry import get_runner

register_schemas()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _job(cfg: DictConfig) -> float | None:
    """One job: set up hardware, seed, run directory and tracker; run the runner; record the outcome."""
    try:
        OmegaConf.resolve(cfg)
        missing = OmegaConf.missing_keys(cfg)
        if missing:
            raise LlmlabError(f"missing required value(s): {', '.join(sorted(missing))} (set them as key=value)")
        return _run(cfg)
    except LlmlabError as e:  # exit here: Hydra would otherwise log the failure on extra lines
        print(f"llmlab: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(cfg: DictConfig) -> float | None:
    from llmlab.hardware import seed_everything, setup_hardware
    from llmlab.runners.context import RunContext, execute
    from llmlab.tracking import RunDir, Tracker

    runner = get_runner(cfg.method.runner)
    hw = setup_hardware(cfg.hardware)
    seed_everything(cfg.seed)
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    run_dir = RunDir(cfg.output_dir, cfg, overrides)
    name = ",".join(overrides) or cfg.method.runner
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None  # one W&B group per sweep
    tracker = Tracker(cfg, run_dir, name=name, group=group, is_main=hw.is_main)
    result = execute(runner, cfg, RunContext(hw, run_dir, tracker))
    if hw.is_main:
        print(f"run directory: {run_dir.path}")
    return primary_metric(result)


def primary_metric(result: dict) -> float | None:
    """The first metric of the first variant, returned to Hydra sweepers (e.g. Optuna)."""
    for values in (result or {}).get("metrics", {}).values():
        for key, value in values.items():
            if key != "n":
                return value
    return None


def one_line(exc: BaseException) -> str:
    """A Hydra/OmegaConf/llmlab error as a single line: the message, its cause, and the key or options involved."""
    text = str(exc).split("\nConfig search path")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("To append")]
    msg = lines[0] if lines else type(exc).__name__
    if len(lines) > 1 and lines[1].startswith("Available options"):
        msg += f"; available: {', '.join(lines[2:])}"
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        clines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        key = next((ln.split(":", 1)[1].strip() for ln in clines if ln.startswith("full_key:")), None)
        msg = f"{clines[0]}" + (f" (key: {key})" if key else "") + f" [{msg}]"
    return msg


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from llmlab.report import main as report_main

        return report_main(sys.argv[2:])
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, so each is printed as one line
    try:
        _job()
    except (LlmlabError, HydraException, OmegaConfBaseException) as e:
        print(f"llmlab: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("llmlab: interrupted; finished items are kept, run again with the same hydra.run.dir to resume",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
