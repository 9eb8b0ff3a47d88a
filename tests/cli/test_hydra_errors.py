"""llmlab.hydra_errors on real errors of the pinned hydra-core: a Hydra upgrade that rewords them fails here."""

from __future__ import annotations

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from llmlab.hydra_errors import one_line, raised_by_hydra
from llmlab.paths import conf_dir
from tests.helpers import compose as compose_config
from tests.helpers import run_cli


def composition_error(*overrides: str) -> BaseException:
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose_config(["logger=none", *overrides])
    return info.value


def options(group: str) -> list[str]:
    """The names of the YAML options directly under conf/<group>, sorted."""
    root = conf_dir() / group
    return sorted(p.stem for p in root.glob("*.yaml"))


def test_unknown_group_option_lists_the_options():
    expected = f"In 'config': Could not find 'model/nope'; available: {', '.join(options('model'))}"
    assert one_line(composition_error("model=nope")) == expected


def nested_typo_line() -> str:
    """The line for `dataset=implicit/boool`: the closest option, and the options beside it."""
    implicit = [f"implicit/{o}" for o in options("dataset/implicit")]
    assert "implicit/bool" in implicit
    return (
        "In 'config': Could not find 'dataset/implicit/boool' (did you mean dataset=implicit/bool?); "
        f"available: {', '.join(implicit)}"
    )


def test_typo_in_a_nested_option_names_the_closest_and_its_siblings():
    assert one_line(composition_error("dataset=implicit/boool")) == nested_typo_line()


def test_unknown_key_names_it_without_the_append_hint():
    exc = composition_error("method=icl", "method.shot=8")
    assert "To append to your config use +method.shot=8" in str(exc)  # Hydra's hint: llmlab takes no new keys
    assert one_line(exc) == "Key 'shot' not in 'ICLConfig' (key: method.shot) [Could not override 'method.shot'.]"


def test_deleting_a_missing_key():
    assert one_line(composition_error("~model.nope")) == "Could not delete from config. 'model.nope' does not exist."


def test_wrong_type_names_the_key():
    assert one_line(composition_error("method=icl", "method.shots=abc")) == (
        "Value 'abc' of type 'str' could not be converted to Integer (key: method.shots) "
        "[Error merging override method.shots=abc]"
    )


def test_override_grammar_error_drops_the_link():
    assert one_line(composition_error("seed=[1")) == "no viable alternative at input '[1'"


def test_cli_prints_hydra_errors_as_one_line(outputs):
    res = run_cli("logger=none", "dataset=implicit/boool")
    assert (res.returncode, res.stderr) == (2, f"llmlab: error: {nested_typo_line()}\n")
    res = run_cli("--cfg", "job", "-m", "logger=none")  # a ValueError of Hydra's own argument checks
    assert (res.returncode, res.stderr) == (
        2,
        "llmlab: error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified\n",
    )
    assert not outputs.exists()


def test_a_value_error_of_our_own_is_not_hydras():
    with pytest.raises(ValueError) as info:
        int("x")
    assert not raised_by_hydra(info.value)


def test_a_key_of_a_swept_group_that_its_default_lacks_gets_the_plus_plus_hint(outputs):
    sweep = ["-m", "model=tiny-random", "logger=none", "method=info_flow", "dataset=mre/scnm,mre/tcree"]
    res = run_cli(*sweep, "dataset.options.coupling=0.5")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    hint = "dataset is swept and the sweep's shared config holds its default option: write ++dataset.options.coupling="
    assert res.stderr.strip().endswith(hint + "... instead")
    no_sweep = run_cli("model=tiny-random", "logger=none", "dataset.options.coupling=0.5")
    assert no_sweep.returncode == 2 and "++" not in no_sweep.stderr
