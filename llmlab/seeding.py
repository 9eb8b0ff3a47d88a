"""Seeding in one place: process-independent seeds for named random streams, and the global seed of a run."""

from __future__ import annotations

import hashlib
import json
import random

from llmlab.errors import LlmlabError


def stable_seed(*parts: object) -> int:
    """A process-independent 64-bit seed from ``parts`` (sha256; never Python's salted ``hash``)."""
    blob = json.dumps([str(p) for p in parts]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def make_rng(*parts: object) -> random.Random:
    """A private `random.Random` for the stream named by ``parts`` (e.g. ``(seed, "demos", index)``)."""
    return random.Random(stable_seed(*parts))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Data generators take the seed explicitly."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise LlmlabError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
