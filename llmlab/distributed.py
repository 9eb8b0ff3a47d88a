"""Several training processes (issue #8): the torchrun launch, the process group, the batch split, DDP / FSDP and the
reductions the training loops need. Everything is a no-op in a single process.

Batch split: `method.micro_batch_size x method.grad_accum` is the GLOBAL batch of one optimiser step, whatever the
number of processes, so N processes follow the trajectory of one. Step s, micro-batch j is the same set of samples as
in one process; when micro_batch_size divides by the world size every rank takes its strided share of each micro-batch
(rows r, r + N, ...), otherwise whole micro-batches are dealt round-robin (rank r takes micro-batches r, r + N, ...;
grad_accum must then divide by N). The loss of a micro-batch is normalised by its GLOBAL token count, so every rank's
gradient adds up (DDP averages; the loss is scaled by N to undo that) to the single-process one.

Torch is imported inside the functions: the launching CLI process composes a config and starts torchrun, nothing more.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterable
from datetime import timedelta

from llmlab.errors import LlmlabError

STRATEGIES = ("ddp", "fsdp")
TIMEOUT = timedelta(minutes=30)  # a rank waits this long for the others (e.g. while rank 0 writes a checkpoint)
MULTI_PROCESS_RUNNERS = ("pretrain", "finetune")


# ---- launch (no torch) ----


def under_torchrun() -> bool:
    """This process was started by torchrun (or another launcher that sets RANK / LOCAL_RANK)."""
    return "RANK" in os.environ or "LOCAL_RANK" in os.environ


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) in a plain process."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def processes_to_launch(hw) -> int:
    """How many processes `hardware` asks for: `nproc`, 0 meaning every visible GPU (1 without one); 1 under torchrun.
    Torch (for the GPU count) is imported only when several processes may run on GPUs."""
    n, device = int(hw.nproc), str(hw.device)
    if under_torchrun():
        return 1
    if n == 1 or device == "cpu":
        return max(n, 1)
    if not device.startswith(("cuda", "auto")):
        raise LlmlabError(f"hardware.nproc={n} needs hardware.device cpu or cuda, got '{device}'")
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        if device.startswith("cuda"):
            raise LlmlabError(f"hardware={hw.name} asks for CUDA GPUs but none is visible; use hardware=cpu")
        return max(n, 1)  # auto on a machine without GPU: CPU processes
    if n > gpus:
        raise LlmlabError(f"hardware.nproc={n} but only {gpus} GPU(s) are visible")
    return n or gpus


def check_launch(cfg, nproc: int) -> None:
    """Refuse what several processes cannot run, before anything starts: other runners, an unknown strategy, a batch
    that does not split (over `nproc` processes on each of the SLURM job's tasks)."""
    runner = cfg.method.runner
    if runner not in MULTI_PROCESS_RUNNERS:
        raise LlmlabError(
            f"hardware.nproc={nproc}: only method=pretrain and method=finetune run on several "
            f"processes (got method.runner={runner}); use hardware.nproc=1"
        )
    check_strategy(cfg.hardware.strategy)
    check_split(cfg.method.micro_batch_size, cfg.method.grad_accum, nproc * job_tasks()[0])


def job_tasks() -> tuple[int, int]:
    """(tasks, this task's index) of the SLURM job step this process runs in (`srun`: hydra/launcher=slurm with
    `nodes` x `tasks_per_node` > 1, typically one task per node); (1, 0) outside one, or in a torchrun rank. Each task
    starts its own torchrun, and the torchruns of all tasks form one process group."""
    env = os.environ
    try:
        tasks = int(env.get("SLURM_STEP_NUM_TASKS") or 1)
        index = int(env.get("SLURM_PROCID") or 0)
    except ValueError:
        return 1, 0
    return (1, 0) if under_torchrun() or tasks < 2 else (tasks, index)


def _rendezvous(tasks: int, index: int) -> list[str]:
    """torchrun's arguments for one of `tasks` agents: a static rendezvous at the step's first host (task 0 hosts
    it), on MASTER_PORT or a port derived from the job id."""
    import subprocess

    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    try:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        hosts = []
    if not hosts:
        raise LlmlabError(f"cannot tell the first host of SLURM node list '{nodelist}' (scontrol show hostnames)")
    job = re.sub(r"\D", "", os.environ.get("SLURM_JOB_ID", "")) or "0"
    port = os.environ.get("MASTER_PORT") or str(20000 + int(job) % 20000)
    return ["--nnodes", str(tasks), "--node_rank", str(index), "--master_addr", hosts[0], "--master_port", port]


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise LlmlabError(f"hardware.strategy must be one of {', '.join(STRATEGIES)}, got '{strategy}'")


def hydra_value(text: str) -> str:
    """`text` as a Hydra override value: as is when plain, else single-quoted with escapes."""
    if re.fullmatch(r"[\w./@:+-]+", text):
        return text
    return "'" + text.replace("'", "\\'") + "'"


def ignore_preemption_warning() -> None:
    """For the torchrun agent (a `preexec_fn`): SIGUSR2 would kill it (the default action) while its ranks, which
    install their own handler (llmlab.interrupts), checkpoint and stop; the launching process waits for them."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def torchrun_command(nproc: int, overrides: Iterable[str], run_dir: str) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m llmlab.cli OVERRIDES hydra.run.dir=DIR`:
    every rank writes to the one directory the launching process chose; Hydra's `.hydra/` is written by that process
    only (`hydra.output_subdir=null` below). In a SLURM step of several tasks (nodes) `--standalone` becomes a
    rendezvous of all the tasks' torchruns (`job_tasks`): global rank = task x nproc + local rank."""
    tasks, index = job_tasks()
    where = _rendezvous(tasks, index) if tasks > 1 else ["--standalone"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        "--nproc_per_node",
        str(nproc),
        "-m",
        "llmlab.cli",
        *overrides,
        f"hydra.run.dir={hydra_value(run_dir)}",
        "hydra.output_subdir=null",
    ]


# ---- process group ----


def init(device) -> None:
    """Join the process group of this torchrun job (nccl on CUDA, gloo on the CPU); left at interpreter exit. When
    another rank fails, torchrun stops this one with SIGTERM: raised as SystemExit, so the run is recorded as failed."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.type == "cuda":
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    atexit.register(teardown)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def teardown() -> None:
    """Leave the process group (idempotent)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """A process group of more than one rank is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


def _reduce(value, op: str):
    import torch
    import torch.distributed as dist

    if isinstance(value, torch.Tensor):  # reduced where it lives, without waiting for the device
        t = value.detach().to(torch.float64).reshape(1).clone()
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return t[0]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return float(t.item())


def all_reduce_sum(value):
    """Sum of `value` over the ranks: a float, or a tensor (a float64 0-d tensor on its device)."""
    return _reduce(value, "SUM") if active() else value


def all_true(flag: bool) -> bool:
    """True on every rank when `flag` is true on every rank (one decision for all)."""
    return _reduce(float(bool(flag)), "MIN") > 0.5 if active() else bool(flag)


# ---- batch split ----


def check_split(micro_batch: int, accum: int, n: int) -> None:
    if n > 1 and micro_batch % n and accum % n:
        raise LlmlabError(
            f"the global batch (method.micro_batch_size={micro_batch} x method.grad_accum={accum}) "
            f"does not split over {n} processes: make micro_batch_size or grad_accum a multiple of {n}"
        )


def micro_split(micro_batch: int, accum: int, r: int, n: int) -> list[tuple[int, list[int]]]:
    """This rank's share of one optimiser step: (global micro-batch index j, rows of micro-batch j) per local
    micro-step. Strided rows of every micro-batch when micro_batch % n == 0, else whole micro-batches round-robin."""
    check_split(micro_batch, accum, n)
    if micro_batch % n == 0:
        return [(j, list(range(r, micro_batch, n))) for j in range(accum)]
    return [(j, list(range(micro_batch))) for j in range(r, accum, n)]


# ---- models ----


def is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def layer_modules(model) -> list:
    """The children of the outermost ModuleLists (the transformer blocks): FSDP's sharding units."""
    from torch import nn

    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    outer = [m for name, m in lists if not any(name.startswith(other + ".") for other, _ in lists if other)]
    return [child for m in outer for child in m]


def wrap(model, hw):
    """The module the training forward goes through: `model` itself in one process; DDP around it; or, for FSDP,
    `model` sharded in place (every block, then the root). Build the optimiser after this call."""
    if hw.world_size <= 1:
        return model
    if hw.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in layer_modules(model):
            fully_shard(block)
        fully_shard(model)
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [hw.device.index] if hw.device.type == "cuda" else None
    # buffers (RoPE tables, ALiBi slopes) are the same on every rank: no broadcast before each forward
    no_buffer_sync = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else "broadcast_buffers"
    )
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True, **{no_buffer_sync: False})


@contextlib.contextmanager
def grad_sync(model, enabled: bool):
    """Around a micro-step's forward and backward: without gradient synchronisation unless `enabled` (the last
    micro-step of an accumulation)."""
    if enabled or not active():
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def local(t):
    """This rank's part of a (possibly sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def clip_grad_norm(params, clip: float):
    """Clip to `clip`; the total gradient norm before clipping (over every shard, the same on every rank), a 0-d
    tensor on the device."""
    import torch

    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def all_finite(params) -> bool:
    """Every (local shard of every) parameter is finite, on every rank."""
    import torch

    return all_true(all(bool(torch.isfinite(local(p)).all()) for p in params))


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def trainable_state(model) -> dict:
    """The trainable parameters as full CPU tensors, by name (under FSDP: gathered, on rank 0; empty elsewhere)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not is_fsdp(model):
        params = dict(model.named_parameters())
        return {n: params[n].detach().cpu().contiguous() for n in names}
    full = full_state(model)
    return {n: full[n].contiguous() for n in names} if full else {}


def full_state(model) -> dict:
    """The whole state dict on the CPU (under FSDP: gathered, on rank 0; empty elsewhere), a tied parameter (e.g. an
    output head sharing the embedding) under its first name only, as `save_pretrained` expects."""
    if not is_fsdp(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in get_model_state_dict(model, options=_full_options()).items() if k not in tied}


def load_trainable(model, weights: dict) -> None:
    """Copy full tensors (from a checkpoint, on every rank) into the model's (possibly sharded) parameters."""
    import torch

    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def _param_order(model, opt) -> list[str]:
    """Parameter names in the optimiser's index order (the order of `opt.state_dict()`)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in opt.param_groups for p in group["params"]]


def optimizer_state(model, opt) -> dict:
    """`opt.state_dict()` in the single-process (index) layout, also under FSDP (gathered, on rank 0), so a
    checkpoint resumes with any number of processes."""
    if not is_fsdp(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, opt, options=_full_options())
    if not full:
        return {}
    index = {name: i for i, name in enumerate(_param_order(model, opt))}
    return {
        "state": {index[k]: v for k, v in full["state"].items()},
        "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in full["param_groups"]],
    }


def load_optimizer_state(model, opt, state: dict) -> None:
    """Load an index-layout optimiser state (every rank holds all of it)."""
    if not is_fsdp(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    order = _param_order(model, opt)
    named = {
        "state": {order[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, opt, named, options=StateDictOptions(full_state_dict=True))
