"""Several processes (issue #8) on the CPU: 2 gloo ranks under torchrun, launched by the real CLI, follow the
single-process loss trajectory with the same global batch; one run directory, written by rank 0 alone.

Tolerance: the ranks compute the same sums in another order (half-batch matmuls, then an all-reduce), so float32
rounding differs by a few ulps per step; over these few steps the measured relative gap in loss and gradient norm is
<= 2e-7. RTOL = 1e-5 leaves a 50x margin, while a real fault (no gradient sync, a rank training on the wrong rows, a
loss or gradient scaled by the world size) moves the loss or the logged gradient norm by 1e-3 or more.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlab.distributed import micro_split
from llmlab.errors import LlmlabError
from tests.helpers import LM_SHAPE, run_cli, runner_setup

RTOL = 1e-5
PRETRAIN = [
    *LM_SHAPE,
    "method.max_steps=4",
    "method.save_every=2",
    "method.warmup_steps=2",
    "method.lr=3e-3",
    "method.eval_every=100",
    "method.log_every=1",
    "method.eval_blocks=4",
    "method.eval_lengths=[1]",
    "method.sink_metrics=false",
]
FINETUNE = [
    "method=finetune",
    "dataset=implicit/bool",
    "method.lr=3e-3",
    "method.warmup_steps=1",
    "method.micro_batch_size=1",
    "method.grad_accum=4",
    "method.max_steps=3",
    "method.save_every=2",
]
CLI = ["hardware=cpu", "hardware.threads=1", "logger=none"]
TINY_DATA = ["model=tiny-random", "dataset.n_test=10", "dataset.n_icl_pool=50", "dataset.n_train_ft=20"]


def curve(run_dir: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["train/loss"], r["train/grad_norm"]) for r in rows if "train/loss" in r]


def assert_same_trajectory(two: list, one: list) -> None:
    assert len(two) == len(one)
    for (loss2, norm2), (loss1, norm1) in zip(two, one):
        assert loss2 == pytest.approx(loss1, rel=RTOL) and norm2 == pytest.approx(norm1, rel=RTOL)


def reference(tmp_path: Path, runner, *overrides: str) -> list:
    """The single-process trajectory, in this process (the same runner code; saves two interpreter starts)."""
    cfg, ctx = runner_setup(tmp_path / "one", *overrides)
    runner.run(cfg, ctx)
    return curve(ctx.run_dir.path)


def files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize("micro,accum,world", [(4, 2, 2), (1, 4, 2), (6, 1, 3), (2, 3, 2), (3, 1, 1)])
def test_the_ranks_share_each_global_batch_exactly_once(micro, accum, world):
    shares = [micro_split(micro, accum, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # every rank runs as many micro-steps (collectives stay in step)
    seen = sorted((j, row) for share in shares for j, rows in share for row in rows)
    assert seen == [(j, row) for j in range(accum) for row in range(micro)]


def test_what_cannot_run_on_several_processes_is_refused_before_launching():
    with pytest.raises(LlmlabError, match="does not split over 2 processes"):
        micro_split(3, 3, 0, 2)
    out = run_cli(*CLI, "method=icl", "hardware.nproc=2")
    assert out.returncode == 2 and "only method=pretrain and method=finetune" in out.stderr


@pytest.fixture
def one_rank_group():
    """A gloo process group of one rank in this process (FSDP's code paths without other processes)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    yield
    dist.destroy_process_group()


def test_fsdp_trains_and_checkpoints_like_one_process(tmp_path, one_rank_group):
    """FSDP (sharded over one rank) follows the plain model, and its checkpoints (gathered) have the single-process
    layout: a plain run resumes from them and continues identically."""
    import torch
    from omegaconf import OmegaConf

    from llmlab import distributed
    from llmlab.config import LMArch
    from llmlab.hardware import Hardware
    from llmlab.models.lm import LM
    from llmlab.runners.pretrain import main_copy, next_token_logits, param_groups
    from llmlab.train.checkpoint import resume, save_checkpoint
    from llmlab.train.step import StepSettings, optimizer_step

    arch = OmegaConf.structured(LMArch(n_layer=2, d_model=32, n_head=2, ffn_hidden=64))
    data = torch.randint(0, 256, (8, 17), generator=torch.Generator().manual_seed(0))

    def train(strategy: str, steps: int, root: Path) -> tuple[list, dict]:
        torch.manual_seed(0)
        model = LM(arch, 256, 16)
        hw = Hardware(torch.device("cpu"), torch.float32, 0, 2, strategy)  # world 2: wrap even in this 1-rank group
        trained = distributed.wrap(model, hw) if strategy == "fsdp" else model
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        step, losses = resume(root, model, opt, sched, {}), []
        settings = StepSettings(device=torch.device("cpu"), clip=1.0, accum=2, max_grad_norm=1e4)
        while step < steps:
            micro = [((data[j * 4 : (j + 1) * 4],), 4 * 16) for j in range(2)]
            losses += map(float, optimizer_step(trained, opt, sched, micro, next_token_logits, settings, step=step + 1))
            step += 1
            save_checkpoint(root, step, model, opt, sched, {})
        return losses, main_copy(model, lambda: LM(arch, 256, 16)).state_dict()

    plain, plain_weights = train("none", 4, tmp_path / "plain")
    sharded, _ = train("fsdp", 2, tmp_path / "fsdp")
    assert sharded == pytest.approx(plain[:4], rel=RTOL)  # (loss, gradient norm) of steps 1, 2
    resumed, resumed_weights = train("none", 4, tmp_path / "fsdp")  # a plain run continues from FSDP's checkpoint
    assert resumed == pytest.approx(plain[4:], rel=RTOL)
    assert all(torch.allclose(resumed_weights[k], plain_weights[k], rtol=1e-4, atol=1e-6) for k in plain_weights)


def test_multi_gpu_composes():
    out = run_cli("--cfg", "job", "hardware=multi_gpu", "hardware.strategy=fsdp", "method=pretrain", "model=lm-tiny")
    assert out.returncode == 0, out.stderr
    assert "name: multi_gpu" in out.stdout and "strategy: fsdp" in out.stdout and "nproc:" in out.stdout


def test_only_rank_0_writes_the_run_directory(tmp_path, monkeypatch):
    from llmlab.run_dir import RunDir

    cfg, _ = runner_setup(tmp_path / "compose")
    monkeypatch.setenv("RANK", "1")
    run_dir = RunDir(tmp_path / "rank1", cfg)
    run_dir.log_metrics({"x": 1.0}, step=1)
    run_dir.finish("completed")
    assert not (tmp_path / "rank1").exists()


def test_pretrain_on_two_processes_follows_one_process(tmp_path, outputs):
    from llmlab.runners import pretrain

    cache = f"cache_dir={tmp_path / 'cache'}"
    one = reference(tmp_path, pretrain, *PRETRAIN, cache)
    out = run_cli(*CLI, *PRETRAIN, cache, "hardware.nproc=2")
    assert out.returncode == 0, out.stderr[-3000:]
    runs = [p for p in (outputs / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1 and out.stdout.count("run directory:") == 1  # the parent's directory, one rank reporting
    run = runs[0]
    assert_same_trajectory(curve(run), one)  # also: rank 1 appended no rows
    written = {
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "results.json",
        "model/config.json",
        "model/model.safetensors",
    }
    written |= {
        f"checkpoints/step-00000{s}/{f}"
        for s in (2, 4)
        for f in ("signature.json", "state.pt", "trainable.safetensors")
    }
    assert files(run) - {"cli.log", ".lock"} == written  # Hydra's (parent's) log and the run's claim aside
    results = json.loads((run / "results.json").read_text())
    assert results["timing"]["world_size"] == 2 and results["train_tokens"] == 4 * 4 * 2 * 32
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"


def test_finetune_on_two_processes_follows_one_process(tmp_path, outputs):
    from llmlab.runners import finetune

    one = reference(tmp_path, finetune, *FINETUNE)
    run = tmp_path / "two"
    out = run_cli(*CLI, *TINY_DATA, *FINETUNE, "hardware.nproc=2", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_trajectory(curve(run), one)  # micro-batches of 1 dealt round-robin: 2 of the 4 per rank
    assert {
        "model/config.json",
        "model/model.safetensors",
        "results.json",
        "checkpoints/step-000002/state.pt",
        "checkpoints/step-000003/state.pt",
    } <= files(run)
    assert json.loads((run / "results.json").read_text())["timing"]["world_size"] == 2
