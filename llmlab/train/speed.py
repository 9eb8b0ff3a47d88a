"""The training loop's speed levers: `torch.compile`, fused AdamW and liger-kernel's fused ops. Each is off, or makes
no difference, on the CPU; on a GPU each changes only float rounding, so none is part of a run's fingerprint
(`llmlab.fingerprint.EXECUTION_ONLY`) or training signature: a run may resume with them switched.

The Triton kernels (StableMask attention, RWKV WKV) are graph breaks under compilation (`torch.compiler.disable` on
their entry points): the compiled graphs run around them and they run as in eager mode.
"""

from __future__ import annotations

import torch

from llmlab.errors import LlmlabError

BACKEND = "inductor"  # torch.compile's backend (the CPU tests use aot_eager: no C++ code generation)


def compile_enabled(setting: bool | None, device: torch.device) -> bool:
    """`method.compile`: true or false as set; None (the default) compiles on CUDA only."""
    return device.type == "cuda" if setting is None else bool(setting)


def compiled(fn, enabled: bool):
    """`fn` (a module or function) compiled with `BACKEND` when `enabled`, else `fn` itself."""
    return torch.compile(fn, backend=BACKEND) if enabled else fn


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW over `params` (tensors or parameter groups): the fused implementation (one kernel launch for every
    parameter) when all are floating CUDA tensors, torch's default otherwise (the CPU path is unchanged)."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_cuda and p.is_floating_point() for p in tensors)
    opt = torch.optim.AdamW(params, **kwargs, **({"fused": True} if fused else {}))
    opt.register_load_state_dict_pre_hook(_keep_implementation)
    return opt


def _keep_implementation(opt, state: dict) -> dict:
    """A checkpoint's optimiser state with this optimiser's implementation flags (a checkpoint written on a GPU, fused,
    resumes on the CPU unfused, and the reverse)."""
    keys = ("fused", "foreach")
    groups = [{**saved, **{k: mine[k] for k in keys}} for mine, saved in zip(opt.param_groups, state["param_groups"])]
    return {**state, "param_groups": groups}


def apply_fused_ops(model) -> None:
    """liger-kernel's fused RMSNorm, SwiGLU (GeGLU for Gemma) and RoPE in place of a Hugging Face model's own, its
    weights and their names unchanged (`_apply_liger_kernel_to_instance`, liger's documented way to patch a loaded
    model). CUDA only: liger's kernels are Triton's. Liger swaps the RoPE function of the model's `transformers`
    module, for the whole process."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    kind = getattr(model.config, "model_type", None)
    if kind not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise LlmlabError(f"method.fused_ops: liger-kernel has no fused ops for model type '{kind}'")
    fused = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True}  # liger passes each fn what it takes
    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False, **fused)
