"""`llmlab --help` (conf/hydra/help/llmlab.yaml): the config groups, one line each with their options, listed from the
config search path when the help is printed (the `llmlab.help_groups` resolver), so a new option shows up by itself.
Internal groups (the dataclass schemas under `schema/`, Hydra's own) are left out; the launcher and sweeper are in."""

from __future__ import annotations

import textwrap

# Every user-facing group, in the order shown, with one line saying what it chooses.
GROUPS: dict[str, str] = {
    "model": "the model: pretrained (Hugging Face, GGUF) or trained from scratch (lm-*, rwkv4-*)",
    "dataset": "the data: implicit-reasoning tasks, text corpora, MRE, Blocksworld, your own file",
    "method": "what runs: the runner (icl, finetune, pretrain, ...) and its settings",
    "hardware": "device, precision and processes (hardware.nproc=N runs N ranks under torchrun)",
    "logger": "experiment tracking: W&B (offline unless logger.mode=online) or none",
    "experiment": "a paper's reproduction: groups, sweep and tags in one (experiments/<name>/README.md)",
    "hparams_search": "an Optuna search preset: search space, objective, trials",
    "hydra/launcher": "where a multirun's jobs run: one after another, local GPUs, SLURM",
    "hydra/sweeper": "how a multirun picks its jobs: the grid (basic) or an Optuna search",
    "hydra/sweeper/sampler": "Optuna's sampler, with hydra/sweeper=optuna (default tpe)",
}
HIDDEN = {"hydra/launcher": {"submitit_slurm"}}  # the plugin's plain SLURM launcher: `slurm` is llmlab's, built on it
WIDTH = 118


def group_options(loader, group: str, prefix: str = "") -> list[str]:
    """The options of `group`, those of its subgroups as `sub/option` (Hydra's groups: their own options only)."""
    from hydra.core.object_type import ObjectType

    path = f"{group}/{prefix}".rstrip("/")
    options = [
        f"{prefix}{o}" for o in loader.get_group_options(path, ObjectType.CONFIG) if o not in HIDDEN.get(group, ())
    ]
    if not group.startswith("hydra/"):
        for sub in loader.get_group_options(path, ObjectType.GROUP):
            options += group_options(loader, group, f"{prefix}{sub}/")
    return sorted(options)


def help_groups() -> str:
    """The groups block of the help text."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    blocks = []
    for group, line in GROUPS.items():
        options = group_options(loader, group)
        listed = textwrap.fill(
            ", ".join(options), WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False
        )
        blocks.append(f"  {group}: {line}\n{listed}")
    return "\n".join(blocks)
