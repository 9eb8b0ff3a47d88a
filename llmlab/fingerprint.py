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
    "method.keep_checkpoints",
    "method.log_every",
    "method.compile",
    "method.fused_ops",
    "method.*.batch_size",
    "method.*.resume",
    "method.*.save_every",
    "method.*.keep_checkpoints",
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
    return _keep(flatten(cfg), free)


def _keep(leaves: dict[str, Any], free: tuple[str, ...]) -> dict[str, Any]:
    patterns = EXECUTION_ONLY + tuple(f"method.{k}" for k in free) + tuple(f"method.{k}.*" for k in free)
    return {k: v for k, v in leaves.items() if not any(fnmatchcase(k, p) for p in patterns)}


def changed_keys(saved: dict, current: dict, free: tuple[str, ...] = ()) -> list[str]:
    """The results-relevant keys whose values differ between two resolved configs (both read through the current
    schemas first)."""
    a, b = (_keep(through_schemas(flatten(cfg), current), free) for cfg in (saved, current))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _ABSENT) != b.get(k, _ABSENT))


def through_schemas(leaves: dict[str, Any], current: dict) -> dict[str, Any]:
    """A saved config's `leaves` as the current schemas of `current`'s groups read them: a field the saved config
    lacks (it was added later) counts at its default, and a dataset field its source's schema no longer has (configs
    once held every source's fields) is dropped. So an old run directory resumes when nothing that it ran differs."""
    from omegaconf import OmegaConf

    from llmlab.config import DATASET_SCHEMAS, HardwareConfig, ModelConfig, method_schema

    schemas = {
        "model": ModelConfig,
        "hardware": HardwareConfig,
        "dataset": DATASET_SCHEMAS.get(str((current.get("dataset") or {}).get("source"))),
        "method": method_schema((current.get("method") or {}).get("runner")),
    }
    out = dict(leaves)
    for group, schema in schemas.items():
        if schema is None or not any(k.startswith(f"{group}.") for k in out):
            continue
        defaults = flatten({group: OmegaConf.to_container(OmegaConf.structured(schema))})
        if group == "dataset":
            out = {k: v for k, v in out.items() if not k.startswith("dataset.") or k in defaults}
        for key, value in defaults.items():
            if value != "???" and key not in out and not any(k.startswith(f"{key}.") for k in out):
                out[key] = value
    return out


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
