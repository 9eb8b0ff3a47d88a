"""The training core (`llmlab.train`): step settings, gradient accumulation, the watchdog, interrupted checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmlab.errors import LlmlabError
from llmlab.train.checkpoint import resume, save_checkpoint, save_interrupted
from llmlab.train.step import StepSettings, optimizer_step

CPU = torch.device("cpu")
BLOCKS = torch.randint(0, 16, (4, 9), generator=torch.Generator().manual_seed(0))  # 4 blocks of 8 tokens + 1


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def next_tokens(model, blocks):
    return model(blocks[:, :-1]), blocks[:, 1:]


def step(*args, **kwargs) -> tuple[float, float]:
    """`optimizer_step`, its (loss, gradient norm) read back."""
    loss, norm = optimizer_step(*args, **kwargs)
    assert loss.dim() == norm.dim() == 0 and loss.dtype == torch.float64  # tensors: the step does not read them
    return float(loss), float(norm)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("clip", 0.0),
        ("clip", float("nan")),
        ("accum", 0),
        ("world", 0),
        ("amp", torch.long),
        ("max_grad_norm", 0.0),
        ("device", "cpu"),
    ],
)
def test_step_settings_refuse_nonsense(field, value):
    with pytest.raises(LlmlabError, match=f"step settings: {field}"):
        StepSettings(**{"device": CPU, "clip": 1.0, field: value})


def test_step_settings_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        StepSettings(CPU, 1.0)  # positional arguments: the habit this object replaces
    settings = StepSettings(device=CPU, clip=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.accum = 2


def test_two_accumulated_micro_batches_make_the_step_of_one_batch():
    whole, opt, sched = tiny()
    one = step(whole, opt, sched, [((BLOCKS,), 32)], next_tokens, StepSettings(device=CPU, clip=1.0), step=1)
    split, opt, sched = tiny()
    halves = [((BLOCKS[:2],), 16), ((BLOCKS[2:],), 16)]  # each normalised by its own global micro-batch's tokens
    two = step(split, opt, sched, halves, next_tokens, StepSettings(device=CPU, clip=1.0, accum=2), step=1)
    assert two == pytest.approx(one, rel=1e-6)  # (loss, gradient norm)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole.parameters(), split.parameters()))
    wrong, opt, sched = tiny()  # accum not matching the micro-batches: the loss is halved
    loss, _ = step(wrong, opt, sched, halves, next_tokens, StepSettings(device=CPU, clip=1.0), step=1)
    assert loss == pytest.approx(2 * one[0], rel=1e-6)


def test_the_watchdog_stops_before_the_update_and_is_off_by_default():
    model, opt, sched = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    guarded = StepSettings(device=CPU, clip=1.0, max_grad_norm=1e-6)
    with pytest.raises(LlmlabError, match=r"watchdog: step 7 .* \(limit 1e-06\)") as info:
        optimizer_step(model, opt, sched, [((BLOCKS,), 32)], next_tokens, guarded, step=7)
    assert "\n" not in str(info.value) and sched.last_epoch == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    optimizer_step(model, opt, sched, [((BLOCKS,), 32)], next_tokens, StepSettings(device=CPU, clip=1.0), step=7)
    assert sched.last_epoch == 1 and not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_an_interrupted_run_checkpoints_only_a_new_healthy_step(tmp_path, capsys):
    model, opt, sched = tiny()
    save_interrupted(tmp_path, 4, 4, model, opt, sched, {})  # step 4 is the newest checkpoint already
    assert not tmp_path.joinpath("step-000004").exists()
    save_interrupted(tmp_path, 5, 4, model, opt, sched, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005"]
    assert "interrupted after step 5" in capsys.readouterr().err
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    save_interrupted(tmp_path, 6, 5, model, opt, sched, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000005"]


def test_only_the_newest_checkpoints_are_kept_and_the_newest_resumes(tmp_path):
    model, opt, sched = tiny()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path / "all", step, model, opt, sched, {})
        save_checkpoint(tmp_path / "two", step, model, opt, sched, {}, keep=2)
    assert len(list((tmp_path / "all").iterdir())) == 4
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["step-000003", "step-000004"]
    save_interrupted(tmp_path / "two", 5, 4, model, opt, sched, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["step-000004", "step-000005"]
    assert resume(tmp_path / "two", model, opt, sched, {}) == 5
