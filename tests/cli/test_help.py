"""`llmlab --help` (issue #16): the tool, its common commands, every config group with one line and its options."""

from __future__ import annotations

from tests.helpers import run_cli


def test_help_lists_the_commands_and_every_group_with_its_options():
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout
    assert text.startswith("llmlab: one command-line lab") and "powered by hydra" not in text.lower()
    for command in (
        "llmlab report",
        "llmlab -m",
        "resume=auto",
        "--cfg job",
        "hydra/launcher=slurm",
        "hydra.launcher.partition",
        "hydra/sweeper=optuna",
        "hparams_search=pretrain_lr",
        "experiments/",
    ):
        assert command in text, command
    lines = text.splitlines()

    def options(group: str) -> str:
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"  {group}: "))
        block = []
        for ln in lines[i + 1 :]:
            if not ln.startswith("      "):
                break
            block.append(ln.strip())
        return " ".join(block)

    assert "lm-tiny" in options("model") and "tiny-random" in options("model")
    assert "implicit/bool" in options("dataset") and "corpus/pydoc" in options("dataset")
    assert "pretrain" in options("method") and "sc_mcts_ladder/1_random" in options("method")
    assert options("hardware") == "auto, cpu, gpu, multi_gpu"
    assert "stablemask" in options("experiment") and "pretrain_lr" in options("hparams_search")
    assert options("hydra/launcher") == "basic, joblib, slurm, submitit_local"
    assert options("hydra/sweeper") == "basic, optuna"
    assert "schema" not in text  # the dataclass schemas are internal


def test_every_user_group_has_a_line_in_the_help():
    """A new config group must say in one line what it chooses (llmlab.help.GROUPS)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from llmlab.help import GROUPS
    from llmlab.paths import conf_dir
    from llmlab.registry import register_schemas

    register_schemas()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = {g for g in loader.list_groups("") if g not in ("hydra", "schema")}
    assert groups == {g for g in GROUPS if not g.startswith("hydra/")}


def test_a_run_says_what_it_is_about_to_run(outputs):
    res = run_cli("model=tiny-random", "hardware=cpu", "logger=none", "dataset.n_test=2", "method.shots=0")
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = outputs.glob("runs/*/*")
    first = res.stdout.splitlines()[0]
    assert (
        first
        == f"llmlab: icl · model tiny-random · dataset implicit/expression · seed 0 · cpu float32 · writing to {run}"
    )
