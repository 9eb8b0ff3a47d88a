"""Turn a `dataset` config into what an evaluation needs: test items per variant, a demonstration pool, a header."""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmlab.config import DatasetConfig, FileDatasetConfig, ImplicitDatasetConfig
from llmlab.data.sources import loader
from llmlab.errors import LlmlabError


@dataclass
class EvalData:
    header: str
    max_new_tokens: int
    tests: dict[str, Dataset]  # variant -> test rows
    pool: Dataset  # demonstrations (pattern-consistent, disjoint from the tests)
    train: Dataset | None = None  # fine-tuning rows, where the source has them


def load_eval_data(cfg: DatasetConfig, seed: int, limit: int | None = None) -> EvalData:
    """The evaluation data of `cfg` (`implicit` or `file`); with `limit`, only the first `limit` test rows per variant
    (generated sources draw no more than those, and draw them exactly as a full draw would)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise LlmlabError(f"the test item limit must be a non-negative integer, got {limit!r}")
    return loader(cfg, "evaluation")(cfg, seed, limit)


def implicit_data(cfg: ImplicitDatasetConfig, seed: int, limit: int | None) -> EvalData:
    """An implicit task's generated splits."""
    from llmlab.data.implicit import load_implicit, task_spec

    if not cfg.task:
        raise LlmlabError(f"dataset '{cfg.name}': source=implicit needs dataset.task")
    spec = task_spec(cfg.task, cfg.faithful)
    splits = load_implicit(
        cfg.task,
        seed,
        faithful=cfg.faithful,
        n_test=cfg.n_test,
        n_train_ft=cfg.n_train_ft,
        n_icl_pool=cfg.n_icl_pool,
        limit=limit,
        **dict(cfg.options),
    )
    unknown = set(cfg.variants) - {"pattern", "counter"}
    if unknown:
        raise LlmlabError(f"dataset '{cfg.name}': unknown variant(s) {sorted(unknown)}; choose pattern, counter")
    tests = {v: splits[f"test_{v}"] for v in cfg.variants}
    return EvalData(
        spec.header, cfg.max_new_tokens or spec.max_new_tokens, tests, splits["icl_pool"], splits["train_ft"]
    )


def file_data(cfg: FileDatasetConfig, seed: int, limit: int | None) -> EvalData:
    """A user's JSONL rows (and demonstration pool); `seed` is unused (the rows are fixed)."""
    from llmlab.data.files import load_jsonl_dataset

    if not cfg.path:
        raise LlmlabError(f"dataset '{cfg.name}': source=file needs dataset.path=<rows.jsonl>")
    rows = load_jsonl_dataset(cfg.path)
    shots = demos_wanted(cfg)
    if not cfg.pool_path and shots > 0:
        raise LlmlabError(
            f"dataset '{cfg.name}': method.shots={shots} needs demonstrations; set "
            "dataset.pool_path=<demos.jsonl> (or method.shots=0)"
        )
    pool = load_jsonl_dataset(cfg.pool_path) if cfg.pool_path else rows.select([])  # before the filters
    tests = {v: rows.filter(lambda r, v=v: r["variant"] == v) for v in cfg.variants}
    tests = {v: d if limit is None else d.select(range(min(limit, len(d)))) for v, d in tests.items() if len(d)}
    if not tests:
        raise LlmlabError(f"dataset file {cfg.path} has no rows of variant(s) {', '.join(cfg.variants)}")
    return EvalData(cfg.header, cfg.max_new_tokens or 8, tests, pool)


def demos_wanted(cfg: DatasetConfig) -> int:
    """The most demonstrations the run holding this dataset config asks for (its `method.shots`); 0 when it is no
    part of a composed config."""
    if not isinstance(cfg, DictConfig):
        return 0
    try:
        shots = OmegaConf.select(cfg, "..method.shots", default=0)
    except OmegaConfBaseException:
        return 0
    shots = max(shots, default=0) if isinstance(shots, ListConfig | list) else shots
    return shots if isinstance(shots, int) else 0
