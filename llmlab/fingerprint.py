"""Which part of a config decides a run's results, and the check a resumed run must pass.

A run directory holds the results of exactly one config. Resuming in it (`hydra.run.dir=<run>`, `resume=auto`, a
finished experiment step) is refused when a results-relevant value differs from the `config.yaml` written there,
with one line naming the keys. Execution-only settings may change between attempts: where the run writes and logs,
threads and processes, batch sizes of scoring passes (they group the same computations differently), checkpoint
and log intervals, the speed levers (`llmlab.train.speed`: compilation, fused kernels; they change float rounding
only). A method schema can name more of its own fields in `resume_free` (e.g. an experiment's grid, whose steps have
run directories, and so checks, of their own).
"""

from __future__ import annotations

import hashlib
import json
from fnmatch import fnmatchcase
from typing import Any

EXECUTION_ONLY = (
    "output_dir",
    "cache_dir",
    "resume",
    "tags",
    "logger",
    "logger.*",
    "hardware.threads",
    "hardware.nproc",
    "hardware.strategy",
    "hardware.slurm",
    "hardware.slurm.*",
    "hardware.name",
    "method.batch_size",
    "method.eval_batch_size",
    "method.resume",
    "method.save_every",
    "method.log_every",
    "method.compile",
    "method.fused_ops",
    "method.*.batch_size",
    "method.*.resume",
    "method.*.save_every",
    "method.*.log_every",
    "method.*.compile",
    "method.*.fused_ops",
)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a.b": value}` for every leaf of a nested dict (lists are leaves)."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def relevant(cfg: dict, free: tuple[str, ...] = ()) -> dict[str, Any]:
    """The results-relevant leaves of a resolved config (a plain dict)."""
    patterns = EXECUTION_ONLY + tuple(f"method.{k}" for k in free) + tuple(f"method.{k}.*" for k in free)
    return {k: v for k, v in flatten(cfg).items() if not any(fnmatchcase(k, p) for p in patterns)}


def changed_keys(saved: dict, current: dict, free: tuple[str, ...] = ()) -> list[str]:
    """The results-relevant keys whose values differ between two resolved configs."""
    a, b = as_model_schema(as_dataset_schema(relevant(saved, free), current)), relevant(current, free)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _ABSENT) != b.get(k, _ABSENT))


def as_dataset_schema(leaves: dict[str, Any], current: dict) -> dict[str, Any]:
    """A saved config's `leaves` with its dataset read through the schema of `current`'s dataset source: fields that
    schema lacks dropped and those it has but `leaves` lacks at their defaults, so a config written when every dataset
    held every source's fields (and only the options it stated) still matches the one that config composes now."""
    from omegaconf import OmegaConf

    from llmlab.config import DATASET_SCHEMAS

    schema = DATASET_SCHEMAS.get(str((current.get("dataset") or {}).get("source")))
    if schema is None:
        return leaves
    fields = flatten({"dataset": OmegaConf.to_container(OmegaConf.structured(schema))})
    return {**fields, **{k: v for k, v in leaves.items() if not k.startswith("dataset.") or k in fields}}


def as_model_schema(leaves: dict[str, Any]) -> dict[str, Any]:
    """A saved config's `leaves` with the model fields it lacks at their schema defaults, so a config written before
    a field existed (`model.shape`, say) still matches the one that config composes now."""
    from omegaconf import OmegaConf

    from llmlab.config import ModelConfig

    if not any(k.startswith("model.") for k in leaves):
        return leaves
    defaults = OmegaConf.to_container(OmegaConf.structured(ModelConfig), throw_on_missing=False)
    return {**{k: v for k, v in flatten({"model": defaults}).items() if v != "???"}, **leaves}


def fingerprint(cfg: dict, free: tuple[str, ...] = ()) -> str:
    """A short hash of the results-relevant config (recorded in meta.json)."""
    text = json.dumps(relevant(cfg, free), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resume_free(cfg: dict) -> tuple[str, ...]:
    """The method fields its schema declares free to change between attempts (`resume_free`)."""
    from llmlab.config import method_schema

    schema = method_schema((cfg.get("method") or {}).get("runner"))
    return tuple(getattr(schema, "resume_free", ())) if schema else ()


_ABSENT = object()
