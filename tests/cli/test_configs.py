"""Every config in conf/ composes and validates; every experiment config is exercised."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmlab.paths import conf_dir
from tests.helpers import TINY, compose, run_cli

GROUPS = ["model", "dataset", "method", "hardware", "logger"]


def options(group: str) -> list[str]:
    root = conf_dir() / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


EXPERIMENTS = options("experiment")
# Overrides that make each experiment a seconds-long smoke run on the tiny model. A new experiment config must be
# added here, or test_every_experiment_is_exercised fails.
EXPERIMENT_SMOKE = {
    "stablemask": [
        "model=lm-tiny",
        "seed=0",
        "model.lm.n_layer=1",
        "model.lm.d_model=32",
        "model.lm.n_head=2",
        "model.lm.ffn_hidden=64",
        "dataset.block_size=32",
        "method.micro_batch_size=2",
        "method.max_steps=2",
        "method.eval_blocks=2",
        "method.eval_lengths=[1]",
        "method.sink_blocks=1",
    ],
    "rwkv": [
        "model=rwkv4-tiny",
        "seed=0",
        "model.rwkv.n_layer=1",
        "model.rwkv.d_model=32",
        "model.rwkv.ffn_hidden=64",
        "dataset.block_size=32",
        "method.micro_batch_size=2",
        "method.max_steps=2",
        "method.eval_blocks=2",
        "method.eval_lengths=[1]",
        "method.sink_blocks=1",
    ],
    "icl_implicit": ["dataset=implicit/bool,implicit/parity", "method.shots=0,2", "seed=0", "method.limit=2"],
    "icl_vs_ft": [
        "method.tasks=[bool]",
        "method.shots=[0,1]",
        "method.report_k=1",
        "method.seeds=[0]",
        "method.run_arms=[lora]",
        "method.arms.lora.max_steps=1",
        "method.arms.lora.grad_accum=1",
        "method.icl.limit=2",
        "dataset.n_train_ft=4",
        "dataset.n_icl_pool=10",
        "method.bootstrap=50",
    ],
    "sc_mcts": [
        "method=sc_mcts",
        "dataset=blocksworld/generated",
        "dataset.options.n=1",
        "method.n_iters=2",
        "method.amateur.layer=1",
        "method.reward.prior_problems=1",
        "seed=0",
    ],
    "mre": [
        "method=info_flow,verbalizer,mre_ablation",
        "dataset=mre/scpos_adj",
        "seed=0",
        "method.limit=2",
        "dataset.n_test=4",
        "dataset.n_train_ft=8",
        "dataset.n_icl_pool=2",
    ],
}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose([f"{group}={option}"])
    OmegaConf.to_container(cfg.get(group), resolve=False, throw_on_missing=False)
    assert cfg[group] is not None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.method.runner


def test_every_experiment_is_exercised():
    assert set(EXPERIMENT_SMOKE) == set(EXPERIMENTS), "add smoke overrides for every conf/experiment/*.yaml"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_through_the_cli(experiment, outputs):
    sweep = outputs / experiment
    res = run_cli(
        f"experiment={experiment}",
        *TINY,
        *EXPERIMENT_SMOKE[experiment],
        f"hydra.sweep.dir={sweep}",
        f"hydra.run.dir={sweep}",
    )  # whichever the experiment uses (multirun sweep or one run)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list(Path(sweep).rglob("results.json"))) >= 1


def test_defaults_are_the_embedded_model_and_icl():
    cfg = compose([])
    assert cfg.model.name == "smollm2-135m" and cfg.model.source == "pypi_gguf"
    assert cfg.method.runner == "icl" and cfg.logger.mode in ("offline", "disabled")
    assert not cfg.model.trust_remote_code


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.foo=1", "Key 'foo' not in 'ModelConfig'"),
        ("method.shots=abc", "could not be converted to Integer"),
        ("method.nonsense=1", "Key 'nonsense' not in 'ICLConfig'"),
        ("seeed=1", "Key 'seeed' not in 'RootConfig'"),
        ("hardware.threads=many", "could not be converted to Integer"),
    ],
)
def test_typos_and_wrong_types_fail_at_compose_time(override, needle):
    with pytest.raises(Exception) as info:
        compose([override])
    assert needle in str(info.value) + str(info.value.__cause__)
