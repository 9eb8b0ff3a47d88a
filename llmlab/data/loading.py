"""Turn a `dataset` config into what an evaluation needs: test items per variant, a demonstration pool, a header."""

from __future__ import annotations

from dataclasses import dataclass

from datasets import Dataset

from llmlab.config import DatasetConfig
from llmlab.errors import LlmlabError


@dataclass
class EvalData:
    header: str
    max_new_tokens: int
    tests: dict[str, Dataset]  # variant -> test rows
    pool: Dataset  # demonstrations (pattern-consistent, disjoint from the tests)
    train: Dataset | None = None  # fine-tuning rows, where the source has them


def load_eval_data(cfg: DatasetConfig, seed: int) -> EvalData:
    if cfg.source == "implicit":
        from llmlab.data.implicit import load_implicit, task_spec

        if not cfg.task:
            raise LlmlabError(f"dataset '{cfg.name}': source=implicit needs dataset.task")
        spec = task_spec(cfg.task, cfg.faithful)
        splits = load_implicit(cfg.task, seed, faithful=cfg.faithful, n_test=cfg.n_test, n_train_ft=cfg.n_train_ft,
                               n_icl_pool=cfg.n_icl_pool, **dict(cfg.options))
        unknown = set(cfg.variants) - {"pattern", "counter"}
        if unknown:
            raise LlmlabError(f"dataset '{cfg.name}': unknown variant(s) {sorted(unknown)}; choose pattern, counter")
        tests = {v: splits[f"test_{v}"] for v in cfg.variants}
        return EvalData(spec.header, cfg.max_new_tokens or spec.max_new_tokens, tests, splits["icl_pool"],
                        splits["train_ft"])
    if cfg.source == "file":
        from llmlab.data.files import load_jsonl_dataset

        if not cfg.path:
            raise LlmlabError(f"dataset '{cfg.name}': source=file needs dataset.path=<rows.jsonl>")
        rows = load_jsonl_dataset(cfg.path)
        tests = {v: rows.filter(lambda r, v=v: r["variant"] == v) for v in cfg.variants}
        tests = {v: d for v, d in tests.items() if len(d)}
        if not tests:
            raise LlmlabError(f"dataset file {cfg.path} has no rows of variant(s) {', '.join(cfg.variants)}")
        pool = load_jsonl_dataset(cfg.pool_path) if cfg.pool_path else rows.select([])
        return EvalData(cfg.header, cfg.max_new_tokens or 8, tests, pool)
    raise LlmlabError(f"unknown dataset.source '{cfg.source}'; choose implicit or file")

