"""Loading through the dataset source registry (`llmlab.config.DATASET_SOURCES`): a `dataset.source` names its
schema, the family of data it gives and the loader that reads it. Loaders are lazy ("module:function"), so naming one
imports no loader code; each family's entry point (`load_eval_data`, `load_corpus`, `load_mre`, `load_blocksworld`)
calls the loader of its config's source with the family's arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llmlab.config import DATASET_SCHEMAS, DATASET_SOURCES
from llmlab.errors import LlmlabError
from llmlab.paths import conf_dir

# family -> the datasets that give it (the hint when a dataset of another family is given)
FAMILIES = {
    "evaluation": "dataset=implicit/<task> or dataset=file",
    "corpus": "dataset=corpus/pydoc (ships with Python) or another dataset=corpus/*",
    "mre": "dataset=mre/<name>",
    "blocksworld": "dataset=blocksworld/<split> or dataset=blocksworld/generated",
}


def family(source: str) -> str | None:
    """The family of `source`; None for an unknown one."""
    entry = DATASET_SOURCES.get(source)
    return entry.family if entry else None


def loader(cfg: Any, wanted: str) -> Callable:
    """The loader of `cfg.source`, which must give the family `wanted`; otherwise a one-line error naming the datasets
    that do."""
    if family(cfg.source) != wanted:
        raise LlmlabError(f"dataset '{cfg.name}' (source {cfg.source}) is no {wanted} dataset; use {FAMILIES[wanted]}")
    module, _, attr = DATASET_SOURCES[cfg.source].loader.partition(":")
    return getattr(importlib.import_module(module), attr)


def dataset_option(option: str) -> DictConfig:
    """`conf/dataset/<option>.yaml` on the schema its defaults list names, as `dataset=<option>` composes it."""
    stated = OmegaConf.load(conf_dir() / "dataset" / f"{option}.yaml")
    (source,) = (d.removeprefix("/schema/dataset/").removesuffix("@_here_") for d in stated.pop("defaults")[:-1])
    return OmegaConf.merge(DATASET_SCHEMAS[source](source=source), stated)
