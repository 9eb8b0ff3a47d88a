"""`llmlab plan [--gpu-memory-gb G] <overrides>`: the memory a training config needs per GPU, from the architecture's
numbers alone (no model is built, nothing is loaded), and whether it fits with DDP or needs FSDP on `hardware.nproc`
GPUs of G GiB (default 80).

What it covers: `method=finetune` (full or LoRA) of a model with a `model.shape` (the hub models' YAMLs carry theirs,
whatever `model.source` is) and `method=pretrain` of the `lm` decoder. Both runners keep fp32 master weights, fp32
gradients and AdamW's two fp32 moments, and run the forward/backward under autocast to `hardware.dtype` (bf16 on a GPU).
Per GPU, with P parameters, T of them trained, b rows of s tokens per forward on each GPU (`method.micro_batch_size`,
split over the GPUs as the runners split it; s is `method.max_length` or `dataset.block_size`), L layers of width h,
SwiGLU width f, n query heads and vocabulary V:

    weights 4P, gradients 4T, optimizer states 8T
    autocast copies: 2 bytes per weight of every linear layer and the output head (the bf16 casts the backward keeps;
        none in fp32)
    activations: b s (L (c_h h + c_f f + 4 n + 8) + c_o h + 12), with (c_h, c_f, c_o) from ACT_COEFFS by architecture,
        precision and LoRA (Llama/Qwen2 full fine-tuning under bf16 autocast: 34, 8, 11); LoRA adds 2 bytes (fp32: 4)
        per rank and target per token and layer; fine-tuning pads rows, and each layer keeps the padding mask,
        b s^2 L x 2 (fp32: 4) bytes
    logits and loss: 12 b s V (the logits, their fp32 log-softmax and its gradient at the loss)

The plan is the eager path's (SDPA attention, unfused cross-entropy, `method.compile=false`); compilation and fused
kernels save activation and logit memory, so for them it is an upper bound. The activation coefficients count the
tensors autograd saves (`tests/unit/test_memory_plan.py` checks them against a real forward on the CPU). The total is
the peak with gradient accumulation (the gradients are held while the next micro-batch's activations build up); with
`grad_accum=1` the measured peak is lower by up to the gradients. FSDP
(every block sharded, then the root) divides weights, gradients and optimizer states by the GPU count and adds the
unsharded working set: the root's own parameters (embeddings, head, final norm) with their gradients, and two blocks in
fp32 (the one computing and the one prefetched). A config fits when its total is at most 90% of the GPU's memory (the
rest: CUDA context, cuBLAS workspaces, allocator fragmentation).
"""

from __future__ import annotations

import dataclasses
import sys

from omegaconf import DictConfig

from llmlab.errors import LlmlabError

GIB = 2**30
USABLE = 0.9  # share of a GPU's memory a plan may fill
DEFAULT_GPU_GB = 80.0
# activation bytes per token: (per hidden unit, per SwiGLU unit) of a layer and per hidden unit outside the layers,
# by (architecture kind, under autocast, LoRA); measured as the tensors autograd saves (tests/unit/test_memory_plan.py)
ACT_COEFFS = {
    ("hf", True, False): (34, 8, 11),
    ("hf", False, False): (40, 16, 13),
    ("hf", True, True): (28, 8, 0),  # LoRA: the frozen first layer and head keep almost nothing
    ("hf", False, True): (32, 16, 1),
    ("lm", True, False): (36, 8, 26),
    ("lm", False, False): (52, 16, 28),
}
LORA_TARGET_DIMS = {  # (in, out) of each LoRA target module, in units of the Arch fields
    "q_proj": ("hidden", "q"),
    "k_proj": ("hidden", "kv"),
    "v_proj": ("hidden", "kv"),
    "o_proj": ("q", "hidden"),
    "gate_proj": ("hidden", "ffn"),
    "up_proj": ("hidden", "ffn"),
    "down_proj": ("ffn", "hidden"),
}
USAGE = "usage: llmlab plan [--gpu-memory-gb G] [group=option ...] [key=value ...]"


@dataclasses.dataclass(frozen=True)
class Arch:
    """The numbers a plan needs: `kind` hf (a Llama/Qwen2 shape) or lm (the from-scratch decoder)."""

    kind: str
    vocab: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    qkv_bias: bool = False
    tied: bool = False

    @property
    def q(self) -> int:
        return self.hidden  # head_dim * heads

    @property
    def kv(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_per_layer(self) -> int:
        """Weights of one block's linear layers (attention and SwiGLU)."""
        return self.hidden * (self.q + 2 * self.kv) + self.q * self.hidden + 3 * self.hidden * self.ffn

    def layer_params(self) -> int:
        bias = self.q + 2 * self.kv if self.qkv_bias else 0
        return self.linear_per_layer() + bias + 2 * self.hidden  # + the two RMSNorm weights

    def root_params(self) -> int:
        """Embeddings, output head (unless tied) and the final norm."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        return self.layers * self.layer_params() + self.root_params()

    def lora_params(self, targets: list[str], r: int) -> int:
        return self.layers * sum(r * (getattr(self, i) + getattr(self, o)) for i, o in self.lora_dims(targets))

    def lora_dims(self, targets: list[str]) -> list[tuple[str, str]]:
        unknown = [t for t in targets if t not in LORA_TARGET_DIMS]
        if unknown:
            raise LlmlabError(f"llmlab plan: LoRA target module(s) {', '.join(unknown)} not in a {self.kind} block")
        return [LORA_TARGET_DIMS[t] for t in targets]


def arch_of(cfg: DictConfig) -> Arch:
    """The architecture of `cfg.model`: its `shape`, or the `lm` decoder with the dataset's vocabulary."""
    model = cfg.model
    if model.source == "scratch":
        if model.family != "lm":
            raise LlmlabError(f"llmlab plan covers the lm decoder and shape models, not model.family={model.family}")
        from llmlab.models.lm import ffn_hidden

        d = cfg.dataset
        if "tokenizer" not in d:
            raise LlmlabError(f"llmlab plan: model '{model.name}' takes its vocabulary from a corpus dataset")
        vocab = 256 if d.tokenizer == "byte" else d.vocab_size
        lm = model.lm
        return Arch("lm", vocab, lm.d_model, ffn_hidden(lm), lm.n_layer, lm.n_head, lm.n_head)
    from llmlab.models.shape import check_shape

    check_shape(model.shape, model.name)
    s = model.shape
    return Arch(
        "hf",
        s.vocab_size,
        s.hidden_size,
        s.intermediate_size,
        s.num_hidden_layers,
        s.num_attention_heads,
        s.num_key_value_heads or s.num_attention_heads,
        qkv_bias=s.arch == "qwen2",
        tied=s.tie_word_embeddings,
    )


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one training step of the config does on each GPU."""

    micro_batch: int  # rows per global micro-batch (`method.micro_batch_size`)
    seq: int  # s: tokens per row (the longest a row can be)
    amp: bool  # autocast to 16 bits (else fp32 throughout)
    padded: bool  # rows padded to the batch's longest: each layer keeps a padding mask
    lora: tuple[list[str], int] | None  # (target modules, rank)
    gpus: int
    label: str

    @property
    def rows(self) -> int:
        """b: rows per forward on one GPU (strided rows of each micro-batch, or whole micro-batches round-robin)."""
        return self.micro_batch // self.gpus if self.micro_batch % self.gpus == 0 else self.micro_batch


def workload(cfg: DictConfig, gpus: int) -> Workload:
    m = cfg.method
    if m.runner not in ("finetune", "pretrain"):
        raise LlmlabError(f"llmlab plan covers method=finetune (full, LoRA) and method=pretrain, not {m.runner}")
    dtype = cfg.hardware.dtype
    if dtype in ("float16", "fp16"):
        raise LlmlabError(f"{m.runner} does not train in fp16 (no loss scaling); use hardware.dtype=bfloat16")
    amp = dtype != "float32" and dtype != "fp32"  # auto: bf16, what a GPU run picks
    if m.runner == "pretrain":
        return Workload(m.micro_batch_size, cfg.dataset.block_size, amp, False, None, gpus, "pretrain")
    lora = (list(m.lora.target_modules), m.lora.r) if m.peft == "lora" else None
    return Workload(m.micro_batch_size, m.max_length, amp, True, lora, gpus, f"finetune ({'LoRA' if lora else 'full'})")


def components(a: Arch, w: Workload) -> dict[str, float]:
    """Bytes per GPU of each part, replicated (DDP) and before sharding."""
    trained = a.lora_params(*w.lora) if w.lora else a.params()
    c_h, c_f, c_out = ACT_COEFFS[(a.kind, w.amp, w.lora is not None)]
    per_token_layer = c_h * a.hidden + c_f * a.ffn + 4 * a.heads + 8
    if w.lora:  # the input of each adapter's second matrix
        per_token_layer += (2 if w.amp else 4) * w.lora[1] * len(a.lora_dims(w.lora[0]))
    tokens = w.rows * w.seq
    acts = tokens * (a.layers * per_token_layer + c_out * a.hidden + 12)
    if w.padded:
        acts += w.rows * w.seq**2 * a.layers * (2 if w.amp else 4)
    head = a.vocab * a.hidden
    return {
        "weights": 4 * a.params(),
        "gradients": 4 * trained,
        "optimizer states": 8 * trained,
        "autocast weight copies": 2 * (a.layers * a.linear_per_layer() + head) if w.amp else 0,
        "activations": acts,
        "logits and loss": 12 * tokens * a.vocab,
    }


SHARDED = ("weights", "gradients", "optimizer states")  # what FSDP divides by the GPU count


def fsdp_components(a: Arch, w: Workload, gpus: int) -> dict[str, float]:
    """Bytes per GPU of each part under FSDP over `gpus`: the sharded parts divided, plus the gathered working set."""
    parts = {k: v / gpus if k in SHARDED else v for k, v in components(a, w).items()}
    root = 4 * a.root_params() * (1 if w.lora else 2)  # the root's parameters (and gradients, when trained)
    parts["FSDP gathered params"] = root + 2 * 4 * a.layer_params()
    return parts


def totals(a: Arch, w: Workload, gpus: int) -> tuple[float, float]:
    """(DDP, FSDP over `gpus`) bytes per GPU."""
    return sum(components(a, w).values()), sum(fsdp_components(a, w, gpus).values())


def verdict(a: Arch, w: Workload, gpu_bytes: float) -> str:
    """Whether the config fits on `w.gpus` GPUs, with DDP or only with FSDP, and what to change otherwise."""
    usable = USABLE * gpu_bytes
    ddp, fsdp = totals(a, w, w.gpus)
    if ddp <= usable:
        return f"fits: {gib(ddp)} of {gib(usable)} usable per GPU" + (" with DDP" if w.gpus > 1 else "")
    if w.gpus > 1 and fsdp <= usable:
        return f"needs FSDP (hardware.strategy=fsdp): {gib(fsdp)} per GPU; DDP would need {gib(ddp)}"
    need = next((n for n in range(w.gpus + 1, 1025) if totals(a, dataclasses.replace(w, gpus=n), n)[1] <= usable), None)
    if need is None:
        return (
            f"does not fit: {gib(ddp)} per GPU, and FSDP does not bring it under {gib(usable)} on any number of GPUs; "
            "lower method.micro_batch_size or the sequence length"
        )
    return (
        f"does not fit on {w.gpus} GPU{'s' if w.gpus > 1 else ''} ({gib(ddp)} per GPU): FSDP over {need} GPUs "
        f"(hardware=multi_gpu hardware.nproc={need} hardware.strategy=fsdp)"
        + (" or a smaller micro-batch" if w.rows > 1 else "")
    )


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def render(cfg: DictConfig, gpu_gb: float, gpus: int) -> str:
    """The plan as text: the config in one line, the parts per GPU (DDP and FSDP), the verdict."""
    a, w = arch_of(cfg), workload(cfg, gpus)
    ddp, fsdp = components(a, w), fsdp_components(a, w, gpus)
    precision = "bf16 autocast" if w.amp else "fp32"
    lines = [
        f"llmlab plan: {w.label} · model {cfg.model.name} ({a.kind if a.kind == 'lm' else cfg.model.shape.arch}, "
        f"{a.params() / 1e9:.3g}B parameters) · {gpus} GPU{'s' if gpus > 1 else ''} x {gpu_gb:g} GiB",
        f"  {precision}, fp32 master weights and AdamW · {w.rows} x {w.seq} tokens per forward per GPU",
        f"  {'per GPU':<24}{'DDP':>12}{f'FSDP/{gpus}':>12}",
    ]
    for name, value in fsdp.items():
        lines.append(f"  {name:<24}{gib(ddp[name]) if name in ddp else '-':>12}{gib(value):>12}")
    lines.append(f"  {'total':<24}{gib(sum(ddp.values())):>12}{gib(sum(fsdp.values())):>12}")
    lines.append(f"  {verdict(a, w, gpu_gb * GIB)}")
    return "\n".join(lines)


def gpu_count(cfg: DictConfig) -> int:
    """`hardware.nproc` (0: every visible GPU)."""
    n = cfg.hardware.nproc
    if n == 0:
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise LlmlabError("hardware.nproc=0 means every visible GPU, and none is visible: set hardware.nproc=N")
    return n


def parse(argv: list[str]) -> tuple[float, list[str]]:
    """(GPU memory in GiB, overrides) from the command line after `plan`."""
    gpu_gb, overrides, args = DEFAULT_GPU_GB, [], iter(argv)
    for arg in args:
        if arg.startswith("--gpu-memory-gb"):
            value = arg.partition("=")[2] if "=" in arg else next(args, "")
            try:
                gpu_gb = float(value)
            except ValueError:
                raise LlmlabError(f"--gpu-memory-gb takes a number of GiB, got {value!r}") from None
            if not gpu_gb > 0:
                raise LlmlabError(f"--gpu-memory-gb must be > 0, got {value}")
        elif arg.startswith("-"):
            raise LlmlabError(f"unknown option {arg}; {USAGE}")
        else:
            overrides.append(arg)
    return gpu_gb, overrides


def compose_config(overrides: list[str]) -> DictConfig:
    """The root config with `overrides`, validated as a run's (nothing loaded)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from llmlab.config import validate_config
    from llmlab.paths import conf_dir
    from llmlab.registry import register_schemas

    register_schemas()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    validate_config(cfg)
    return cfg


def main(argv: list[str]) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from llmlab.hydra_errors import one_line

    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n{__doc__}")
        return
    try:
        gpu_gb, overrides = parse(argv)
        cfg = compose_config(overrides)
        print(render(cfg, gpu_gb, gpu_count(cfg)))
    except (LlmlabError, HydraException, OmegaConfBaseException) as e:
        print(f"llmlab: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as e:  # Hydra's override parser
        print(f"llmlab: error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
