"""Dataset source registry: a `dataset.source` names the family of data it gives and the loader that reads it (its
schema is `llmlab.config.DATASET_SCHEMAS[source]`). Loaders are lazy ("module:function"), so naming one imports no
loader code; each family's entry point (`load_eval_data`, `load_corpus`, `load_mre`, `load_blocksworld`) calls the
loader of its config's source with the family's arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llmlab.config import DATASET_SCHEMAS
from llmlab.errors import LlmlabError
from llmlab.paths import conf_dir

# family -> the datasets that give it (the hint when a dataset of another family is given)
FAMILIES = {
    "evaluation": "dataset=implicit/<task> or dataset=file",
    "corpus": "dataset=corpus/pydoc (ships with Python) or another dataset=corpus/*",
    "mre": "dataset=mre/<name>",
    "blocksworld": "dataset=blocksworld/<split> or dataset=blocksworld/generated",
}


@dataclass(frozen=True)
class Source:
    family: str  # evaluation: EvalData (test items, pool) | corpus: train / held-out documents | mre: MreData |
    # blocksworld: problems and prompts
    loader: str  # "package.module:function"


SOURCES: dict[str, Source] = {
    "implicit": Source("evaluation", "llmlab.data.loading:implicit_data"),
    "file": Source("evaluation", "llmlab.data.loading:file_data"),
    "corpus_stdlib": Source("corpus", "llmlab.data.corpus:read_stdlib"),
    "corpus_files": Source("corpus", "llmlab.data.corpus:read_file_corpus"),
    "corpus_hub": Source("corpus", "llmlab.data.corpus:read_hub"),
    "mre_synth": Source("mre", "llmlab.data.mre.loader:synthetic_data"),
    "mre_file": Source("mre", "llmlab.data.mre.loader:file_data"),
    "mre_hub": Source("mre", "llmlab.data.mre.loader:hub_data"),
    "blocksworld": Source("blocksworld", "llmlab.blocksworld.data:split_data"),
    "blocksworld_generated": Source("blocksworld", "llmlab.blocksworld.data:generated_data"),
}


def family(source: str) -> str | None:
    """The family of `source`; None for an unknown one."""
    entry = SOURCES.get(source)
    return entry.family if entry else None


def loader(cfg: Any, wanted: str) -> Callable:
    """The loader of `cfg.source`, which must give the family `wanted`; otherwise a one-line error naming the datasets
    that do."""
    if family(cfg.source) != wanted:
        raise LlmlabError(f"dataset '{cfg.name}' (source {cfg.source}) is no {wanted} dataset; use {FAMILIES[wanted]}")
    module, _, attr = SOURCES[cfg.source].loader.partition(":")
    return getattr(importlib.import_module(module), attr)


def dataset_option(option: str) -> DictConfig:
    """`conf/dataset/<option>.yaml` on the schema its defaults list names, as `dataset=<option>` composes it."""
    stated = OmegaConf.load(conf_dir() / "dataset" / f"{option}.yaml")
    (source,) = (d.removeprefix("/schema/dataset/").removesuffix("@_here_") for d in stated.pop("defaults")[:-1])
    return OmegaConf.merge(DATASET_SCHEMAS[source](source=source), stated)
