"""`method=lm_metrics`: evaluate a pretrain run's saved model on the dataset's held-out split: perplexity at longer
contexts (optionally with a sliding attention window) and the attention-sink statistics."""

from __future__ import annotations

from omegaconf import DictConfig

from llmlab.analysis.lm_metrics import extrapolation, sink_metrics
from llmlab.config import LMMetricsConfig
from llmlab.data.corpus import eval_blocks, load_corpus
from llmlab.errors import LlmlabError
from llmlab.io import write_json
from llmlab.models.scratch import load_scratch_model
from llmlab.registry import register_runner
from llmlab.run_context import RunContext, RunResult


@register_runner("lm_metrics", schema=LMMetricsConfig, objective=("ppl@1x", "minimize"))
def run(cfg: DictConfig, ctx: RunContext) -> RunResult:
    m = cfg.method
    model, saved = load_scratch_model(m.model_dir)
    model = model.to(ctx.hw.device)
    corpus = load_corpus(cfg.dataset, cfg.cache_dir)
    if corpus.vocab_size != saved["vocab_size"] or corpus.tokenizer != saved.get("tokenizer", corpus.tokenizer):
        raise LlmlabError(
            f"dataset '{cfg.dataset.name}' ({corpus.tokenizer}, vocabulary {corpus.vocab_size}) does "
            f"not match the model's tokenizer ({saved.get('tokenizer')}, {saved['vocab_size']})"
        )
    train_len = saved["train_len"]
    rows = extrapolation(
        model, corpus, train_len, list(m.eval_lengths), m.eval_blocks, m.eval_batch_size, ctx.hw.device
    )
    if m.eval_window:
        rows += extrapolation(
            model,
            corpus,
            train_len,
            list(m.eval_lengths),
            m.eval_blocks,
            m.eval_batch_size,
            ctx.hw.device,
            window=m.eval_window,
        )
    results = {
        "runner": "lm_metrics",
        "model_dir": str(m.model_dir),
        "dataset": cfg.dataset.name,
        "attention": saved["lm"]["attention"],
        "position": saved["lm"]["position"],
        "seed": cfg.seed,
        "train_len": train_len,
        "extrapolation": rows,
    }
    if m.sink_metrics:
        results["sink"] = sink_metrics(
            model, eval_blocks(corpus.blocks("val", train_len), m.sink_blocks), ctx.hw.device
        )
    metrics = {
        f"ppl@{r['multiple']}x" + (f"_w{r['window']}" if r["window"] else ""): r["ppl"] for r in rows if "ppl" in r
    }
    if "sink" in results:
        metrics["first_token_mass"] = results["sink"]["mean"]["first_token_mass"]
        metrics["first_token_mass_real"] = results["sink"]["mean"]["first_token_mass_real"]
    results["metrics"] = {"val": metrics}
    write_json(ctx.run_dir.file("results.json"), results)
    return results
