"""Attention dispatch switches for transformers' SDPA path."""

from __future__ import annotations

import contextlib
import os

from transformers import PreTrainedModel


@contextlib.contextmanager
def grouped_query_sdpa(model: PreTrainedModel):
    """On the CPU, let transformers' SDPA attention use grouped-query attention also under an explicit mask (every
    multi-token forward on a cache); elsewhere (CUDA, where a mask would force the math kernel) change nothing."""
    if model.device.type != "cpu":
        yield
        return
    flag, old = "TRANSFORMERS_SDPA_FORCE_GQA", os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA")
    os.environ[flag] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ[flag]
        else:
            os.environ[flag] = old
