"""One optimiser step: gradient accumulation over micro-batches, token-normalised cross-entropy, clipping and an
optional watchdog, the same for every rank count (`llmlab.distributed`: DDP or FSDP).

A micro-batch is `(tensors, count)`: the tensors go to the device and into `forward(model, *tensors)`, which returns
logits and next-token targets (IGNORE where no loss is taken); the summed cross-entropy is divided by `count`, the
target tokens of the whole global micro-batch, so the ranks' shares add up to the single-process loss.

Nothing in a step waits for the device: the loss and the gradient norm stay tensors until the caller reads them (at
its log steps), except that the watchdog, when on, reads one flag per step to stop before the update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmlab import distributed
from llmlab.errors import LlmlabError
from llmlab.train import speed

IGNORE = -100  # target of a position without loss (cross-entropy's ignore_index)


@dataclass(frozen=True, kw_only=True)
class StepSettings:
    """How each optimiser step runs: on `device`, the forward/backward under autocast to `amp` (None: as stored),
    gradients clipped to norm `clip`, `accum` global micro-batches per step shared by `world` ranks. `max_grad_norm`
    (None: off) is the watchdog: a non-finite loss or gradient norm, or a norm above it, stops the run before the
    update. `compile`: the cross-entropy compiled (the model is compiled by the caller, `speed.compiled`);
    `fused_ce`: liger-kernel's cross-entropy instead (CUDA)."""

    device: torch.device
    clip: float
    accum: int = 1
    world: int = 1
    amp: torch.dtype | None = None
    max_grad_norm: float | None = None
    compile: bool = False
    fused_ce: bool = False

    def __post_init__(self):
        if not isinstance(self.device, torch.device):
            raise LlmlabError(f"step settings: device must be a torch.device, got {self.device!r}")
        if not self.clip > 0:  # also NaN
            raise LlmlabError(f"step settings: clip must be > 0, got {self.clip!r}")
        for name in ("accum", "world"):
            if getattr(self, name) < 1:
                raise LlmlabError(f"step settings: {name} must be >= 1, got {getattr(self, name)!r}")
        if self.amp is not None and not self.amp.is_floating_point:
            raise LlmlabError(f"step settings: amp must be a floating dtype or None, got {self.amp!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise LlmlabError(f"step settings: max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")


def optimizer_step(
    model,
    opt,
    sched,
    micro_batches: list[tuple[tuple[torch.Tensor, ...], int]],
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    settings: StepSettings,
    *,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimiser step number `step` (1-based) over this rank's `micro_batches` (its share of `settings.accum` global
    micro-batches). Returns the mean micro-batch loss (over all ranks; float64) and the gradient norm before
    clipping as 0-d tensors on the device (`float()` reads them, waiting for the device). With the watchdog on, stops
    (LlmlabError) before updating anything when either is out of bounds (the same decision on every rank)."""
    opt.zero_grad(set_to_none=True)
    loss_fn = _loss_fn(settings)
    loss_sum = torch.zeros((), dtype=torch.float64, device=settings.device)
    for i, (tensors, count) in enumerate(micro_batches):
        tensors = [t.to(settings.device, non_blocking=True) for t in tensors]
        with distributed.grad_sync(model, i == len(micro_batches) - 1):  # synchronise on the last micro-step only
            with torch.autocast(settings.device.type, dtype=settings.amp, enabled=settings.amp is not None):
                logits, targets = forward(model, *tensors)
            loss = loss_fn(logits, targets) / count
            del logits  # freed before the backward pass
            (loss * settings.world / settings.accum).backward()  # DDP / FSDP average the ranks' gradients: x world
        loss_sum += loss.detach().double()  # float64, as a Python float sum of the losses
    loss_value = distributed.all_reduce_sum(loss_sum / settings.accum)
    grad_norm = distributed.clip_grad_norm([p for p in model.parameters() if p.requires_grad], settings.clip)
    limit = settings.max_grad_norm
    if limit is not None:
        healthy = torch.isfinite(loss_value) & torch.isfinite(grad_norm) & (grad_norm.double() <= limit)
        if not healthy.item():  # the step's one wait for the device
            raise LlmlabError(
                f"watchdog: step {step} has loss {float(loss_value):.4g} and gradient norm {float(grad_norm):.4g} "
                f"(limit {limit:g}); stopped without updating or checkpointing (lower method.lr)"
            )
    opt.step()
    sched.step()
    return loss_value, grad_norm


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy in fp32 over the positions whose target is not IGNORE."""
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )


def fused_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`cross_entropy_sum` by liger-kernel's Triton kernel (it writes the gradient into the fp32 logits in the
    forward pass: no second logits-sized buffer)."""
    from liger_kernel.transformers.functional import liger_cross_entropy

    return liger_cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten().contiguous(), ignore_index=IGNORE, reduction="sum"
    )


def _loss_fn(settings: StepSettings) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if settings.fused_ce:
        return fused_cross_entropy_sum
    return speed.compiled(cross_entropy_sum, settings.compile)  # compiled once: dynamo caches by code object
