"""Checkpoints for exact resume: `checkpoints/step-NNNNNN/` holds the trainable weights (`trainable.safetensors`),
the optimiser, scheduler and RNG states with the step (`state.pt`, loaded weights-only) and the training signature
(`signature.json`: what must not change between a checkpoint and the run that resumes from it).

Each is written into a temporary directory of the writing process's own and published with one atomic rename, so
`resume` only ever sees complete checkpoints; one that cannot be read (truncated or foreign files) is skipped, with a
notice, for the one before it. Several ranks (`llmlab.distributed`): rank 0 alone writes (full tensors,
single-process layout), every rank loads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from llmlab import distributed
from llmlab.errors import LlmlabError
from llmlab.io import notice


def save_checkpoint(root: Path, step: int, model, opt, sched, signature: dict, keep: int = 0) -> None:
    """Write everything needed to continue exactly into a temporary directory of this process's own, then publish it
    with one atomic rename; then delete all but the newest `keep` checkpoints (0: keep all). Several ranks: all call
    this (FSDP gathers the shards), rank 0 writes."""
    trainable = distributed.trainable_state(model)
    optimizer = distributed.optimizer_state(model, opt)
    if distributed.rank() != 0:
        return
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))  # unique: processes never share one
    try:
        save_file(trainable, tmp / "trainable.safetensors")
        np_state = np.random.get_state()
        torch.save(
            {
                "step": step,
                "optimizer": optimizer,
                "scheduler": sched.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "python": random.getstate(),
                    "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                },
            },
            tmp / "state.pt",
        )
        (tmp / "signature.json").write_text(json.dumps(signature, sort_keys=True))
        tmp.chmod(0o755)
        shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise  # else another process published this step first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only if something failed
    if keep:
        for old in sorted(root.glob("step-*"))[:-keep]:  # zero-padded steps: name order is step order
            shutil.rmtree(old, ignore_errors=True)


def save_interrupted(root: Path, step: int, saved: int, model, opt, sched, signature: dict, keep: int = 0) -> None:
    """After a Ctrl-C / SIGTERM between optimiser steps: checkpoint `step` unless the newest checkpoint (of step
    `saved`) is that one or the weights are not finite. Not under FSDP: gathering the shards needs every rank, and the
    ranks may stop at different steps."""
    if step <= saved or distributed.is_fsdp(model):
        return
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return
    save_checkpoint(root, step, model, opt, sched, signature, keep)
    if distributed.rank() == 0:
        notice(f"interrupted after step {step}: checkpointed it in {root}")


class _Unreadable(Exception):
    """A checkpoint file that is missing, truncated or foreign (the message: the file and the reason, one line)."""


def resume(root: Path, model, opt, sched, signature: dict) -> int:
    """Load the newest usable checkpoint under `root` (every rank loads it); its step, or 0 when there is none. An
    unreadable one is skipped with a notice, for the one before it; a changed config is refused."""
    ckpts = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
    for ckpt in ckpts:
        try:
            weights, state = read_checkpoint(ckpt, model, opt, sched, signature)
        except _Unreadable as e:
            notice(f"skipping checkpoint {ckpt}: {e}")
            continue
        distributed.load_trainable(model, weights)
        distributed.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        return state["step"]
    if ckpts:
        raise LlmlabError(
            f"cannot resume: none of the {len(ckpts)} checkpoint(s) in {root} can be read (see above); "
            "move them away or use method.resume=never"
        )
    return 0


def read_checkpoint(ckpt: Path, model, opt, sched, signature: dict) -> tuple[dict, dict]:
    """The trainable weights and the training state of `ckpt`, all read and checked against the model, optimiser and
    scheduler before any of it is applied. A changed config raises `LlmlabError`; a missing, truncated or foreign file
    `_Unreadable`."""
    saved = _read(ckpt / "signature.json", lambda p: _json_object(p.read_text()))
    changed = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
    if changed:
        raise LlmlabError(
            f"cannot resume from {ckpt}: the config changed {', '.join(changed)} "
            "(use a new run directory or method.resume=never)"
        )
    weights = _read(ckpt / "trainable.safetensors", lambda p: _check_weights(load_file(p), model))
    state = _read(ckpt / "state.pt", lambda p: _check_state(torch.load(p, weights_only=True), ckpt, opt, sched))
    return weights, state


def _read(path: Path, load):
    """`load(path)`, any failure of it as `_Unreadable`."""
    try:
        return load(path)
    except FileNotFoundError as e:
        raise _Unreadable(f"{path.name} is missing") from e
    except Exception as e:  # noqa: BLE001 - json, safetensors and torch each raise their own errors for bad bytes
        if "Weights only load failed" in str(e):
            raise _Unreadable(f"{path.name} holds objects other than tensors (unpickling them could run code)") from e
        lines = str(e).strip().splitlines()
        raise _Unreadable(f"{path.name}: {type(e).__name__}" + (f": {lines[0][:200]}" if lines else "")) from e


def _json_object(text: str) -> dict:
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _check_weights(weights: dict, model) -> dict:
    """`weights`, if they are the model's trainable parameters (the same names and shapes)."""
    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    if {n: tuple(t.shape) for n, t in weights.items()} != expected:
        raise ValueError("the tensors are not this model's trainable parameters")
    return weights


def _check_state(state: dict, ckpt: Path, opt, sched) -> dict:
    """`state` (of `state.pt`) with the step as an int and the numpy RNG state rebuilt, if every part has the form
    `resume` applies (else an error)."""
    step = int(state["step"])
    if f"step-{step:06d}" != ckpt.name:
        raise ValueError(f"it holds step {step}")
    sizes = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
    if sizes != [len(g["params"]) for g in opt.param_groups] or not isinstance(state["optimizer"]["state"], dict):
        raise ValueError("the optimizer state is not this model's")
    if not isinstance(state["scheduler"], dict) or set(sched.state_dict()) - set(state["scheduler"]):
        raise ValueError("the scheduler state is incomplete")
    name, keys, *rest = state["rng"]["numpy"]
    rng = {**state["rng"], "numpy": (name, np.array(keys, dtype=np.uint32), *rest)}
    torch.Generator().set_state(rng["torch"])  # each raises on a state of the wrong form
    random.Random().setstate(rng["python"])
    np.random.RandomState().set_state(rng["numpy"])
    return {**state, "step": step, "rng": rng}
