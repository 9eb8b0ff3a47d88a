"""llmlab's Hydra plugins. Hydra accepts a launcher or sweeper only from the `hydra_plugins` namespace package, so
the classes named in conf/hydra/launcher/slurm.yaml and conf/hydra/sweeper/optuna.yaml live here, as thin subclasses
of the implementations in llmlab.slurm and llmlab.sweep."""
