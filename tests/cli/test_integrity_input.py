"""Run integrity, bad input: one line on stderr, exit code 2, no traceback, nothing loaded and (for config errors) no
run directory left behind; keys outside the schemas, out-of-range values, bad devices and paths, nested group typos,
a file dataset without its pool, binary corpus files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmlab.errors import LlmlabError
from tests.helpers import TINY, run_cli
from tests.unit.test_audit import assert_cli_error

SMALL = [*TINY, "method.limit=1", "dataset.n_test=2"]  # seconds, should a bad input get through


def left_behind(outputs: Path) -> list[Path]:
    return sorted(outputs.rglob("*")) if outputs.exists() else []


@pytest.mark.parametrize(
    "override,needle",
    [
        ("++method.shot=0", "Key 'shot' not in 'ICLConfig' (key: method.shot); did you mean 'shots'?"),
        ("+model.nope=1", "Key 'nope' not in 'ModelConfig' (key: model.nope)"),
        ("++model.tiny.nope=1", "Key 'nope' not in 'TinyArch' (key: model.tiny.nope)"),
        ("+dataset.nope=1", "Key 'nope' not in 'ImplicitDatasetConfig' (key: dataset.nope)"),
        ("++hardware.nope=1", "Key 'nope' not in 'HardwareConfig' (key: hardware.nope)"),
        ("+logger.nope=1", "Key 'nope' not in 'LoggerConfig' (key: logger.nope)"),
        ("+nope=1", "Key 'nope' not in 'RootConfig' (key: nope)"),
    ],
)
def test_plus_keys_outside_the_schema_are_refused(override, needle, outputs):
    res = run_cli(*SMALL, override)
    assert_cli_error(res, needle)
    assert not left_behind(outputs)


def test_plus_keys_outside_the_schema_are_refused_before_a_sweep_starts(outputs):
    res = run_cli("-m", *SMALL, "++method.shot=0", "seed=0,1")
    assert_cli_error(res, "Key 'shot' not in 'ICLConfig'")
    assert not left_behind(outputs)


def test_an_option_only_the_swept_datasets_have_is_judged_by_each_job(outputs):
    """The shared config of `dataset=mre/a,mre/b` holds the default dataset, which lacks MRE's options."""
    mre = ["method=info_flow", "method.limit=2", "dataset.n_train_ft=6", "dataset.n_icl_pool=1"]
    res = run_cli("-m", *TINY, *mre, "dataset=mre/scnm,mre/tcree", "++dataset.options.decoupled_control=true")
    assert res.returncode == 0, res.stderr[-2000:]
    configs = sorted(outputs.rglob("results.json"))
    assert len(configs) == 2
    for results in configs:
        assert OmegaConf.load(results.parent / "config.yaml").dataset.options.decoupled_control is True
    res = run_cli("-m", *TINY, *mre, "dataset=mre/scnm,mre/tcree", "++dataset.options.decoupled=true")
    failed = [line.split(" (")[0] for line in res.stderr.splitlines() if line.startswith("llmlab: job #")]
    assert res.returncode == 1 and failed == ["llmlab: job #0", "llmlab: job #1"]
    assert "Key 'decoupled' not in 'MreSynthOptions'" in res.stderr


def test_plus_keys_inside_a_free_dict_still_work(outputs):
    res = run_cli(*SMALL, "dataset=implicit/bool", "++dataset.options.bool_variant=shortcut")
    assert res.returncode == 0, res.stderr[-2000:]


def test_unknown_device_is_one_line(outputs):
    assert_cli_error(run_cli(*SMALL, "hardware.device=foo"), "unknown hardware.device 'foo'")


def test_run_directory_that_cannot_be_made_is_one_line_naming_it(outputs, tmp_path):
    (tmp_path / "afile").write_text("")
    run_dir = tmp_path / "afile" / "run"
    assert_cli_error(run_cli(*SMALL, f"hydra.run.dir={run_dir}"), str(run_dir))


@pytest.mark.parametrize(
    "override,needle",
    [
        ("hardware.threads=0", "hardware.threads must be >= 1"),
        ("hardware.threads=-3", "hardware.threads must be >= 1"),
        ("method.limit=-1", "method.limit must be >= 1"),
        ("dataset.n_test=0", "dataset.n_test must be >= 1"),
        ("logger.mode=bogus", "logger.mode must be one of online, offline, disabled, got 'bogus'"),
        ("method.shots=${nope}", "cannot resolve method.shots: Interpolation key 'nope' not found"),
    ],
)
def test_out_of_range_values_and_missing_interpolations_are_refused_before_the_run_directory(override, needle, outputs):
    assert_cli_error(run_cli(*SMALL, override), needle)
    assert not left_behind(outputs)


def test_nested_group_typo_lists_that_group_and_the_close_match(outputs):
    res = run_cli(*SMALL, "dataset=implicit/bol")
    assert_cli_error(res, "did you mean dataset=implicit/bool?")
    line = res.stderr.strip()
    assert "implicit/expression" in line and "available: file" not in line


def test_file_dataset_without_a_pool_names_pool_path_before_loading(outputs, tmp_path):
    from llmlab.data.implicit import build_split

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in build_split("bool", "test_pattern", 2, 0).to_list()))
    res = run_cli(*TINY, "method.limit=1", "dataset=file", f"dataset.path={rows}", "method.shots=2")
    assert_cli_error(res, "dataset.pool_path")
    assert "Filter" not in res.stderr


def test_binary_file_matched_by_a_corpus_glob_is_refused(tmp_path):
    from llmlab.data.corpus import read_files

    (tmp_path / "a.txt").write_text("plain text\n")
    (tmp_path / "b.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    with pytest.raises(LlmlabError) as info:
        read_files("c", [str(tmp_path / "*")])
    assert "b.bin" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "b.bin").write_bytes(b"\xff\xfe not UTF-8")
    with pytest.raises(LlmlabError, match="b.bin"):
        read_files("c", [str(tmp_path / "*")])


def test_utf8_text_cut_inside_a_character_at_1kb_is_read(tmp_path):
    from llmlab.data.corpus import read_files

    text = "a" * 1023 + "ü" * 10  # the 1024th byte is the first half of a two-byte character
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    assert read_files("c", [str(tmp_path / "a.txt")]) == [text]
