"""Attention x gradient saliency throughput: the info-flow runner's batched implementation against a naive
per-example loop over the HF eager model (full logits, `loss.backward()` with weight gradients, `.grad` of the
attention maps), on the same sequences.

    python -m llmlab.bench --only saliency [--examples 16] [--tokens 128] [--batch-size 8] [--threads 1]

Sequences are information-flow prompts of the synthetic SCNM set (one demonstration per topic), cut to their last
`--tokens` tokens so the prediction position stays at the end. Both sides are warmed up on one example and timed
end to end from token ids to saliency maps. Target: batched >= 2x naive examples/s, every map equal within 1e-5
relative (max |a - b| / max |b| per example). Results go to `outputs/bench/saliency.json`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from llmlab.analysis.saliency import attention_saliency, naive_saliency
from llmlab.config import ModelConfig
from llmlab.data.mre.loader import load_mre
from llmlab.data.mre.prompts import key_words, label_first_tokens, words_line
from llmlab.data.sources import dataset_option
from llmlab.hardware import Hardware
from llmlab.io import write_json
from llmlab.models.loading import load_model, model_dir
from llmlab.paths import REPO_ROOT, conf_dir
from llmlab.runners.info_flow import build_prompt, draw_demos, tokenize

NAME = "saliency"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llmlab.bench --only saliency", description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=16, help="sequences timed on each side (16)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per sequence (128)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward/backward, batched side (8)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    p.add_argument("--model", default="smollm2-135m", help="a conf/model/<name>.yaml (smollm2-135m)")
    p.add_argument("--dataset", default="scnm", help="a conf/dataset/mre/<name>.yaml (scnm)")
    p.add_argument("--cache-dir", default=None, help="llmlab's cache ($LLMLAB_CACHE or ~/.cache/llmlab)")
    p.add_argument("--out", default=str(REPO_ROOT / "outputs" / "bench" / f"{NAME}.json"))
    args, _ = p.parse_known_args(argv)  # flags meant for other benchmarks are ignored
    return args


def sequences(tok, n: int, tokens: int, dataset: str) -> tuple[list[list[int]], list[int], list[int]]:
    cfg = dataset_option(f"mre/{dataset}")
    cfg.n_test, cfg.n_train_ft = n + 1, 200
    data = load_mre(cfg, 0)
    text_key, label_key = key_words(data)
    shared, label_ids = label_first_tokens(tok, f"{text_key}: x\n{label_key}:", data.labels)
    seqs, gold = [], []
    for i, q in enumerate(data.test[: n + 1]):
        prompt, segs = build_prompt(data, q, draw_demos(data, 0, i, 1), words_line(q["wl"]))
        ids = tokenize(tok, prompt, segs)[0] + shared
        if len(ids) < tokens:
            raise SystemExit(f"prompt {i} has only {len(ids)} tokens (< --tokens {tokens})")
        seqs.append(ids[-tokens:])
        gold.append(data.labels.index(q["tl"]))
    return seqs, label_ids, gold


def main(argv: list[str] | None = None) -> dict:
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled")):
        os.environ.setdefault(key, value)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    cache_dir = Path(args.cache_dir or os.environ.get("LLMLAB_CACHE", "~/.cache/llmlab")).expanduser()
    model_cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(conf_dir() / "model" / f"{args.model}.yaml")
    )
    if model_cfg.source != "random":
        model_dir(model_cfg, cache_dir)
    model, tok = load_model(model_cfg, Hardware(torch.device("cpu"), torch.float32), cache_dir, "eager")
    seqs, label_ids, gold = sequences(tok, args.examples, args.tokens, args.dataset)
    warm, seqs, gold_warm, gold = seqs[:1], seqs[1:], gold[:1], gold[1:]
    pad = tok.pad_token_id or 0

    naive_saliency(model, warm[0], label_ids, gold_warm[0])
    t0 = time.perf_counter()
    ref = [naive_saliency(model, s, label_ids, g) for s, g in zip(seqs, gold)]
    naive_s = time.perf_counter() - t0

    attention_saliency(model, warm, label_ids, gold_warm, args.batch_size, pad)
    t0 = time.perf_counter()
    got, _ = attention_saliency(model, seqs, label_ids, gold, args.batch_size, pad)
    batched_s = time.perf_counter() - t0

    rel = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, ref))
    n = len(seqs)
    res = {
        "benchmark": NAME,
        "model": args.model,
        "examples": n,
        "tokens": args.tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "naive": {"seconds": naive_s, "examples_per_s": n / naive_s},
        "batched": {"seconds": batched_s, "examples_per_s": n / batched_s},
        "speedup": naive_s / batched_s,
        "max_rel_diff": rel,
        "targets": {"speedup>=2": naive_s / batched_s >= 2.0, "max_rel_diff<=1e-5": rel <= 1e-5},
    }
    write_json(args.out, res)
    print(
        f"saliency {args.model} T={args.tokens} n={n} threads={args.threads}: naive {n / naive_s:.3f} ex/s, "
        f"batched (bs {args.batch_size}) {n / batched_s:.3f} ex/s, speedup {naive_s / batched_s:.2f}x, "
        f"max rel diff {rel:.2e} -> {args.out}"
    )
    return res


if __name__ == "__main__":
    main()
