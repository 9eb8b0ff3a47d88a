"""What a benchmark ran on, recorded in its JSON: the CPU (and GPU), library versions, the commit and the load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

from llmlab.run_dir import git_sha


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("torch", "transformers", "lm_eval"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "git_sha": git_sha(),
        **versions,
    }


def machine_line(result: dict, key: str = "machine", libraries: tuple[str, ...] = ("torch",)) -> str:
    """One sentence naming the machine recorded in `result[key]` and the versions of `libraries` ("" for results
    written before it was recorded)."""
    m = result.get(key)
    if not m:
        return ""
    threads = m.get("torch_threads")
    where = [f"{m['cpu_count']} CPUs"] + ([f"{threads} torch thread{'s' if threads != 1 else ''}"] if threads else [])
    if m.get("load_average_1min") is not None:
        where.append(f"1-min load {m['load_average_1min']:.1f} at the start")
    versions = "".join(f"{lib.replace('_', '-')} {m[lib]}, " for lib in libraries if m.get(lib))
    commit = (m["git_sha"] or "unknown")[:7]
    return f"Measured on {m['gpu'] or m['cpu']} ({', '.join(where)}), {versions}commit {commit}."
