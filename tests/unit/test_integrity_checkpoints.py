"""Run integrity of training: unreadable checkpoints and adapters, per-process temporary names, interruptions,
metrics after a resume, stale GGUF conversions."""

from __future__ import annotations

import json
import os
import signal
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmlab import interrupts
from llmlab.errors import LlmlabError
from llmlab.hardware import Hardware
from llmlab.models import loading
from llmlab.runners import finetune, pretrain
from llmlab.train import checkpoint
from tests.helpers import SIX_STEPS_FT, SIX_STEPS_LM, compose, runner_setup

CPU = Hardware(torch.device("cpu"), torch.float32)
SIGNATURE = {"model": "linear"}


# ---- resume(): newest to oldest, past unreadable checkpoints ---------------------------------------------------------


def tiny_training(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def weights_of(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(model, weights: dict) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


@pytest.fixture
def two_checkpoints(tmp_path):
    """Checkpoints of steps 1 and 2 of a tiny model under tmp_path/ckpt, and the weights after each step."""
    root, (model, opt, sched), weights = tmp_path / "ckpt", tiny_training(), {}
    for step in (1, 2):
        model(torch.ones(2, 4)).square().sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        checkpoint.save_checkpoint(root, step, model, opt, sched, SIGNATURE)
        weights[step] = weights_of(model)
    return root, weights


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


CORRUPT = {
    "pickle_weights_only_refuses": lambda d: torch.save({"step": 2, "x": Fraction(1, 3)}, d / "state.pt"),
    "truncated_state": lambda d: truncate(d / "state.pt"),
    "truncated_weights": lambda d: truncate(d / "trainable.safetensors"),
    "foreign_weights": lambda d: save_file({"other.weight": torch.zeros(2)}, d / "trainable.safetensors"),
    "garbled_signature": lambda d: (d / "signature.json").write_bytes(b"\x00\xff{not json"),
    "signature_not_an_object": lambda d: (d / "signature.json").write_text("[]"),
    "missing_state": lambda d: (d / "state.pt").unlink(),
    "empty_directory": lambda d: [f.unlink() for f in d.iterdir()],
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_resume_skips_an_unreadable_newest_checkpoint_with_one_notice(two_checkpoints, kind, capsys):
    root, weights = two_checkpoints
    CORRUPT[kind](root / "step-000002")
    model, opt, sched = tiny_training(seed=1)
    assert checkpoint.resume(root, model, opt, sched, SIGNATURE) == 1
    assert same_weights(model, weights[1]) and opt.state_dict()["state"][0]["step"] == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("llmlab: ") and "step-000002" in line


def test_no_readable_checkpoint_is_a_one_line_refusal_and_the_model_is_untouched(two_checkpoints, capsys):
    root, _ = two_checkpoints
    CORRUPT["truncated_weights"](root / "step-000002")
    CORRUPT["pickle_weights_only_refuses"](root / "step-000001")  # the weights of step 1 read fine, its state not
    model, opt, sched = tiny_training(seed=1)
    before = weights_of(model)
    with pytest.raises(LlmlabError, match="none of the 2 checkpoint") as info:
        checkpoint.resume(root, model, opt, sched, SIGNATURE)
    assert "\n" not in str(info.value) and len(capsys.readouterr().err.splitlines()) == 2
    assert same_weights(model, before) and not opt.state_dict()["state"] and sched.last_epoch == 0


def test_no_checkpoint_starts_at_zero_and_a_changed_config_is_still_refused(two_checkpoints, tmp_path):
    model, opt, sched = tiny_training()
    (tmp_path / "none" / ".tmp-step-000003-abcd1234").mkdir(parents=True)  # a dead run's temporary directory
    assert checkpoint.resume(tmp_path / "none", model, opt, sched, SIGNATURE) == 0
    root, _ = two_checkpoints
    with pytest.raises(LlmlabError, match="config changed model"):
        checkpoint.resume(root, model, opt, sched, {"model": "other"})


def test_pretrain_resumes_from_the_newest_readable_checkpoint(tmp_path, capsys):
    cfg, ctx = runner_setup(tmp_path, *SIX_STEPS_LM, f"cache_dir={tmp_path / 'cache'}")
    pretrain.run(cfg, ctx)
    ckpts = ctx.run_dir.file("checkpoints")
    reference = (ckpts / "step-000006" / "trainable.safetensors").read_bytes()
    CORRUPT["pickle_weights_only_refuses"](ckpts / "step-000006")
    CORRUPT["truncated_weights"](ckpts / "step-000004")
    capsys.readouterr()
    assert pretrain.run(cfg, ctx)["steps"] == 6  # from step 2
    notices = [ln for ln in capsys.readouterr().err.splitlines() if "skipping checkpoint" in ln]
    assert len(notices) == 2 and "step-000006" in notices[0] and "step-000004" in notices[1]
    assert (ckpts / "step-000006" / "trainable.safetensors").read_bytes() == reference
    assert logged_steps(ctx.run_dir) == list(range(1, 7))


# ---- LoRA adapters: one-line refusals -------------------------------------------------------------------------------


def adapter_model_cfg(adapter: Path):
    return compose(["model=tiny-random", f"model.adapter={adapter}"]).model


@pytest.fixture
def adapter(tmp_path) -> Path:
    """A LoRA adapter of the tiny random model, as a finetune run saves it."""
    from peft import LoraConfig, get_peft_model

    base, _ = loading.load_model(compose(["model=tiny-random"]).model, CPU, tmp_path, reuse=False)
    path = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(path)
    return path


def pickled_weights(path: Path) -> None:
    weights = path / "adapter_model.safetensors"
    torch.save(load_file(weights), path / "adapter_model.bin")
    weights.unlink()


BAD_ADAPTERS = {
    "pickled_bin": (pickled_weights, "adapter_model.safetensors"),
    "no_weights": (lambda p: (p / "adapter_model.safetensors").unlink(), "adapter_model.safetensors"),
    "garbled_config": (lambda p: (p / "adapter_config.json").write_bytes(b'{"r": 2,\xff'), "cannot be loaded"),
    "truncated_weights": (lambda p: truncate(p / "adapter_model.safetensors"), "cannot be loaded"),
}


@pytest.mark.parametrize("kind", list(BAD_ADAPTERS))
def test_a_bad_adapter_is_a_one_line_refusal(adapter, tmp_path, kind):
    spoil, needle = BAD_ADAPTERS[kind]
    spoil(adapter)
    with pytest.raises(LlmlabError, match=needle) as info:
        loading.load_model(adapter_model_cfg(adapter), CPU, tmp_path, reuse=False)
    assert "\n" not in str(info.value) and "model.adapter" in str(info.value)


def test_a_good_adapter_still_loads(adapter, tmp_path):
    model, _ = loading.load_model(adapter_model_cfg(adapter), CPU, tmp_path, reuse=False)
    assert not any("lora_" in name for name, _ in model.named_parameters())  # merged


# ---- temporary names: per process -----------------------------------------------------------------------------------


def test_checkpoints_leave_other_processes_temporary_directories_alone(two_checkpoints, monkeypatch):
    root, _ = two_checkpoints
    other = root / ".tmp-step-000003"  # another process writing step 3 (the fixed name of the old code)
    other.mkdir()
    (other / "state.pt").write_bytes(b"half written")
    model, opt, sched = tiny_training()
    checkpoint.save_checkpoint(root, 3, model, opt, sched, SIGNATURE)
    assert (other / "state.pt").read_bytes() == b"half written"
    assert sorted(p.name for p in root.iterdir()) == [".tmp-step-000003", "step-000001", "step-000002", "step-000003"]

    def disk_full(*args):
        raise OSError("no space left")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(root, 4, model, opt, sched, SIGNATURE)
    assert sorted(p.name for p in root.iterdir()) == [".tmp-step-000003", "step-000001", "step-000002", "step-000003"]


def test_the_final_model_leaves_another_process_temporary_directory_alone(tmp_path):
    class Saver:
        def save_pretrained(self, path, **kwargs):
            (Path(path) / "config.json").write_text("{}")

    other = tmp_path / ".model.tmp"  # the fixed name of the old code
    other.mkdir()
    (other / "weights").write_text("another run's")
    finetune.save_final(tmp_path / "model", Saver(), Saver(), "none")
    assert (other / "weights").read_text() == "another run's" and (tmp_path / "model" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.tmp", "model"]


# ---- interruptions and metrics ---------------------------------------------------------------------------------------

RUNNERS = {"pretrain": (pretrain, SIX_STEPS_LM), "finetune": (finetune, SIX_STEPS_FT)}


def setup(tmp_path, runner: str):
    return runner_setup(tmp_path, *RUNNERS[runner][1], f"cache_dir={tmp_path.parent / 'cache'}")


def logged_steps(run_dir) -> list[int]:
    return [
        r["step"] for r in map(json.loads, run_dir.file("metrics.jsonl").read_text().splitlines()) if "train/loss" in r
    ]


def final_weights(ctx) -> dict:
    return load_file(ctx.run_dir.file("checkpoints") / "step-000006" / "trainable.safetensors")


def during_step(monkeypatch, runner: str, at: int, action) -> None:
    """Run `action()` at the start of optimiser step `at` (1-based) of `runner`."""
    module, _ = RUNNERS[runner]
    real, calls = module.optimizer_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "optimizer_step", step)


@pytest.fixture
def signals_installed():
    """`interrupts.install()` for the test, the previous handlers back afterwards."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


@pytest.mark.parametrize(
    ("runner", "signame"), [("pretrain", "SIGTERM"), ("pretrain", "SIGINT"), ("finetune", "SIGTERM")]
)
def test_a_signal_ends_the_run_after_the_step_with_a_checkpoint_and_resume_is_exact(
    tmp_path, monkeypatch, signals_installed, runner, signame
):
    signum = getattr(signal, signame)
    cfg, ctx = setup(tmp_path / "a", runner)
    RUNNERS[runner][0].run(cfg, ctx)

    cfg2, ctx2 = setup(tmp_path / "b", runner)
    during_step(monkeypatch, runner, 3, lambda: os.kill(os.getpid(), signum))
    with pytest.raises(interrupts.Terminated if signum == signal.SIGTERM else KeyboardInterrupt):
        RUNNERS[runner][0].run(cfg2, ctx2)
    ckpts = ctx2.run_dir.file("checkpoints")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000003"]
    monkeypatch.undo()
    assert RUNNERS[runner][0].run(cfg2, ctx2)["steps"] == 6
    reference, resumed = final_weights(ctx), final_weights(ctx2)
    assert reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert logged_steps(ctx2.run_dir) == list(range(1, 7))


def test_a_signal_during_a_checkpoint_save_is_raised_after_the_step_and_resume_is_exact(
    tmp_path, monkeypatch, signals_installed
):
    cfg, ctx = setup(tmp_path / "a", "pretrain")
    pretrain.run(cfg, ctx)
    cfg2, ctx2 = setup(tmp_path / "b", "pretrain")
    real, writes = checkpoint.save_file, []

    def save_signalled(*args, **kwargs):  # SIGTERM in the middle of writing step 4's checkpoint
        if "step-000004" in str(args[1]):
            writes.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_signalled)
    with pytest.raises(interrupts.Terminated):
        pretrain.run(cfg2, ctx2)
    ckpts = ctx2.run_dir.file("checkpoints")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000004"]
    assert writes == [1]  # the save in progress finished; it was not cut off and written again
    monkeypatch.undo()
    assert pretrain.run(cfg2, ctx2)["steps"] == 6
    reference, resumed = final_weights(ctx), final_weights(ctx2)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


@pytest.mark.parametrize(("runner", "killed_at"), [("pretrain", 2), ("pretrain", 6), ("finetune", 6)])
def test_each_step_is_logged_once_after_a_kill_and_resume(tmp_path, monkeypatch, runner, killed_at):
    cfg, ctx = setup(tmp_path / "run", runner)

    def killed():
        raise RuntimeError("killed")  # like SIGKILL: no checkpoint on the way out

    during_step(monkeypatch, runner, killed_at, killed)
    with pytest.raises(RuntimeError, match="killed"):
        RUNNERS[runner][0].run(cfg, ctx)
    assert logged_steps(ctx.run_dir) == list(range(1, killed_at))  # steps after the checkpoint (2 or 4) included
    monkeypatch.undo()
    RUNNERS[runner][0].run(cfg, ctx)
    assert logged_steps(ctx.run_dir) == list(range(1, 7))


# ---- GGUF conversion: stale temporary directories --------------------------------------------------------------------


def test_a_conversion_removes_the_stale_temporary_directories_of_its_model_only(tmp_path, monkeypatch):
    class Fake:
        config = SimpleNamespace()

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        def save_pretrained(self, path):
            (Path(path) / "model.safetensors").write_bytes(b"weights")

    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(loading, "gguf_path", lambda cfg, scratch: gguf)
    monkeypatch.setattr(loading, "AutoTokenizer", Fake)
    monkeypatch.setattr(loading, "AutoModelForCausalLM", Fake)
    cfg = compose(["model=smollm2-135m"]).model
    models = tmp_path / "cache" / "models"
    stale = models / f".{cfg.name}-k1ll3d_x"  # a conversion killed midway
    other_tmp = models / f".{cfg.name}-big-ab12cd34"  # a live conversion of model '<name>-big'
    other_model = models / f".{cfg.name}-zz"  # a (strangely named) converted model, with its lock file
    for d in (stale, other_tmp, other_model):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"partial")
    (models / f"..{cfg.name}-zz.lock").touch()
    out = loading.ensure_converted(cfg, tmp_path / "cache")
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert not stale.exists() and other_tmp.is_dir() and other_model.is_dir()
