"""`hydra/launcher=slurm`: the launcher class Hydra instantiates (its code: llmlab.slurm)."""

from llmlab.slurm import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    """submitit's SLURM launcher with llmlab's preemption handling and failure reports (llmlab.slurm)."""
