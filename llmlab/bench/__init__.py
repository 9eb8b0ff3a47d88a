"""Benchmarks of llmlab against reference implementations, run by `make bench` (`python -m llmlab.bench`).

Each benchmark is a module with a `main(argv=None) -> dict` that measures, prints a table and writes its results to
`outputs/bench/<name>.json`:

- `icl_scoring`: the ICL log-likelihood scorer (`llmlab.scoring.Scorer`) against lm-evaluation-harness's `HFLM` on
  the same k-shot requests: agreement of the log-likelihoods, throughput with per-query and with fixed
  demonstrations, a bf16 mode, and the model's load time.
"""

BENCHMARKS = {
    "icl_scoring": "llmlab.bench.icl_scoring",
    "finetune_step": "llmlab.bench.finetune_step",
    "stablemask_cpu": "llmlab.bench.stablemask_cpu",
    "stablemask_gpu": "llmlab.bench.stablemask_gpu",
    "wkv": "llmlab.bench.wkv",
    "spec_decode": "llmlab.bench.spec_decode",
    "saliency": "llmlab.bench.saliency",
    "ddp_scaling": "llmlab.bench.ddp_scaling",
    "train_gpu": "llmlab.bench.train_gpu",
}
