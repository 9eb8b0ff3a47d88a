"""Resuming checks a saved config through the current schemas: a field added later counts at its default."""

from __future__ import annotations

import copy

from omegaconf import OmegaConf

from llmlab.fingerprint import changed_keys
from tests.helpers import compose


def composed(*overrides: str) -> dict:
    cfg = OmegaConf.to_container(compose(list(overrides)), resolve=False)
    cfg.pop("hydra")
    return cfg


def test_a_method_field_added_later_counts_at_its_default():
    current = composed("method=icl_vs_ft")
    saved = copy.deepcopy(current)
    del saved["method"]["icl"]["truncate"]  # a run written before `truncate` existed (nested method dataclass)
    del saved["hardware"]["attn_implementation"]
    assert changed_keys(saved, current) == []
    current["method"]["icl"]["truncate"] = "left"  # not the default: the old run did not do that
    assert changed_keys(saved, current) == ["method.icl.truncate"]


def test_a_value_the_saved_config_states_is_still_compared():
    current = composed("method=icl")
    saved = copy.deepcopy(current)
    saved["method"]["shots"] = 3
    assert changed_keys(saved, current) == ["method.shots"]
