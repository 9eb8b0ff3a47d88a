"""Resolve the `hardware` config into a device, a dtype, thread settings and this process's rank; under torchrun,
join the process group (`llmlab.distributed`): one device per rank (cuda:LOCAL_RANK), nccl on CUDA, gloo on the CPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab import distributed
from llmlab.config import HardwareConfig
from llmlab.errors import LlmlabError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world_size: int = 1
    strategy: str = "ddp"  # several processes: ddp (replicate the model) | fsdp (shard it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_hardware(cfg: HardwareConfig) -> Hardware:
    """Pick the device and dtype (`auto`: CUDA + bf16 when present, else CPU + fp32) and set the CPU thread count.
    Under torchrun with several ranks: device cuda:LOCAL_RANK on a GPU, and this rank joins the process group."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    rank, world, local_rank = distributed.env_ranks()
    device = torch.device(name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if cfg.dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
    elif cfg.dtype in DTYPES:
        dtype = DTYPES[cfg.dtype]
    else:
        raise LlmlabError(f"unknown hardware.dtype '{cfg.dtype}'; choose auto, {', '.join(DTYPES)}")
    if (cfg.threads or 0) > 0:  # null: torch's default (the range is checked with the config, llmlab.config)
        torch.set_num_threads(cfg.threads)
    strategy = getattr(cfg, "strategy", "ddp")
    distributed.check_strategy(strategy)
    if world > 1:
        distributed.init(device)
    return Hardware(device=device, dtype=dtype, rank=rank, world_size=world, strategy=strategy)


def check_device(name: str) -> None:
    """A one-line error unless `name` is cpu, cuda, cuda:N or mps, and available here."""
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists every backend it knows, most of which llmlab does not support
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise LlmlabError(f"unknown hardware.device '{name}'; choose auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LlmlabError(f"hardware.device={name} but no CUDA GPU is visible; use hardware=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise LlmlabError(f"hardware.device={name} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise LlmlabError(f"hardware.device={name} but MPS is not available here; use hardware=cpu")
