"""Security and input audit (issue #8): malformed configs, files and model outputs end in one clear line (or a failed
step), never in a traceback or a file written outside the run directory; the package deserialises nothing unsafely
and passes `trust_remote_code` to transformers only when the config asks for it."""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from llmlab.errors import LlmlabError
from tests.helpers import REPO, TINY, compose, runner_setup

BINARY = b"\x80\xff\xfe\x00\x1b[2J" + bytes(range(256)) * 4  # not UTF-8, NUL and control bytes
UNICODE = "\ufeff\u202eü\U0001f600\u0301\x00\u2028" * 8  # valid UTF-8, but nothing any loader expects
TRUNCATED_JSON = '[{"input": "a/NER", "output": "Spo'
ESCAPE = "../" * 8 + "escaped"  # deep enough to leave any run directory these tests make
DEEP = "d1/d2/d3/d4/d5/d6/d7/d8/d9"  # run directories sit this deep in tmp_path, so an escape stays inside it


# ---- helpers ------------------------------------------------------------------------------------------------------


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@contextmanager
def confined(root: Path, *allowed: Path):
    """Assert that nothing new appears under `root` outside the `allowed` directories."""
    before = tree(root)
    yield
    leaked = [p for p in tree(root) - before if not any(p == a or a in p.parents for a in allowed)]
    assert not leaked, f"written outside the run directory: {sorted(map(str, leaked))}"


def one_line(fn, *args, **kwargs) -> str:
    """Call `fn`; it must raise a single-line LlmlabError, whose message is returned."""
    with pytest.raises(LlmlabError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and msg.isprintable(), repr(msg)  # one line, no control or terminal escape characters from the data
    return msg


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch):
    """cwd, outputs and cache inside tmp_path, so any stray write shows up in its tree."""
    for name in ("cwd", "outputs", "cache"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("LLMLAB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path


def run_runner(tmp_path: Path, *overrides: str):
    """A runner in-process on a tiny model in `tmp_path/DEEP/run`, checked to write nothing outside it."""
    from llmlab.registry import get_runner

    base = tmp_path / DEEP
    base.mkdir(parents=True, exist_ok=True)
    with confined(tmp_path, base / "run"):
        cfg, ctx = runner_setup(base, *overrides)
        return get_runner(cfg.method.runner)(cfg, ctx)


def cli(sandbox: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """`llmlab ARGS` in a subprocess whose cwd, outputs and cache are in the sandbox."""
    env = {**os.environ, "LLMLAB_OUTPUTS": str(sandbox / "outputs"), "LLMLAB_CACHE": str(sandbox / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "llmlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=sandbox / "cwd",
    )


def assert_cli_error(res: subprocess.CompletedProcess, needle: str) -> None:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith(("llmlab: error:", "llmlab-report: error:")) and needle in lines[0], lines[0]


def outside_run_dirs(sandbox: Path) -> list[Path]:
    """Paths that are neither inside outputs/{runs,multirun}/<date>/<run>/ nor one of its parent directories."""
    out = sandbox / "outputs"

    def inside(p: Path) -> bool:
        parts = p.relative_to(out).parts if out in p.parents else ()
        return bool(parts) and parts[0] in ("runs", "multirun") and (len(parts) >= 3 or p.is_dir())

    return sorted(p for p in tree(sandbox) if not inside(p))


# ---- configs: every runner rejects a bad key and a bad type at compose time -----------------------------------------

METHODS = [
    "icl",
    "finetune",
    "icl_vs_ft",
    "circuit_shift",
    "pretrain",
    "lm_metrics",
    "position_probe",
    "info_flow",
    "verbalizer",
    "mre_ablation",
    "cot",
    "mcts",
    "mcts_rap",
    "sc_mcts",
]


def first_int_field(method: str) -> str:
    import dataclasses

    from llmlab.registry import RUNNERS

    schema = RUNNERS["mcts" if "mcts" in method else method].schema
    return next(f.name for f in dataclasses.fields(schema) if f.type in ("int", int))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_rejects_an_unknown_key_and_a_wrong_type(method):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from llmlab.hydra_errors import one_line as cli_line

    key = first_int_field(method)
    for override, needle in (
        (f"method.bogus_key{method}=1", f"Key 'bogus_key{method}' not in"),
        (f'method.{key}="ünï🙂"', "could not be converted to Integer"),
        (f"method.{key}=1e999", "could not be converted to Integer"),
    ):
        with pytest.raises((HydraException, OmegaConfBaseException)) as info:
            compose(["logger=none", f"method={method}", override])
        msg = cli_line(info.value)
        assert "\n" not in msg and needle in msg, msg


def test_unquoted_unicode_override_is_a_one_line_grammar_error():
    from hydra.errors import HydraException

    from llmlab.hydra_errors import one_line as cli_line

    with pytest.raises(HydraException) as info:
        compose(["logger=none", "dataset.header=ünï\u202e"])
    assert "\n" not in cli_line(info.value) and "dataset.header=" in cli_line(info.value)


@pytest.mark.parametrize(
    "override,needle",
    [
        ('dataset.options.coupling="ünï"', "dataset.options.coupling"),
        ("dataset.options.decoupled_control=maybe", "dataset.options.decoupled_control"),
        ("dataset.options.step=abc", "dataset.options.step"),
    ],
)
def test_a_dataset_option_of_a_wrong_type_is_a_one_line_error_when_composing(override, needle):
    from hydra.errors import HydraException

    from llmlab.hydra_errors import one_line as cli_line

    dataset = "dataset=blocksworld/generated" if "step" in override else "dataset=mre/scnm"
    with pytest.raises(HydraException) as info:
        compose(["logger=none", dataset, override])
    assert "\n" not in cli_line(info.value) and needle in cli_line(info.value)


# ---- runners: bad values, traversal and huge numbers fail in one line and stay in the run directory ---------------

RUNNER_ERRORS = [
    (["method.batch_size=0", "method.limit=1"], "batch size must be >= 1"),
    (["method.shots=100000000000000000000"], "larger than the demonstration pool"),
    (["method.scoring=[]"], "method.scoring must not be empty"),
    (["dataset.variants=[../../x]"], "unknown variant"),
    (["dataset.task=" + ESCAPE], "unknown implicit task"),
    (["dataset.n_test=-3"], "non-negative integer"),
    (["dataset=file", f"dataset.path={ESCAPE}.jsonl"], "dataset file not found"),
    (
        [
            "method=icl_vs_ft",
            f"method.tasks=[{ESCAPE}]",
            "method.shots=[0]",
            "method.report_k=0",
            "method.seeds=[0]",
            "method.run_arms=[]",
        ],
        "cannot be used as a file name",
    ),
    (
        [
            "method=icl_vs_ft",
            "method.tasks=[bool]",
            "method.shots=[0]",
            "method.report_k=0",
            "method.seeds=[0]",
            f"method.run_arms=[{ESCAPE}]",
        ],
        "unknown arm",
    ),
    (["method=finetune", f"method.tasks=[{ESCAPE}]"], "unknown implicit task"),
    (["method=circuit_shift", "dataset=implicit/bool", f"method.finetuned={ESCAPE}"], "is not a directory"),
    (
        ["method=pretrain", "model=lm-tiny", "dataset=corpus/pydoc", "dataset.block_size=100000000000000"],
        "fewer than block_size + 1",
    ),
    (
        ["method=pretrain", "model=rwkv4-tiny", "dataset=corpus/shakespeare", f"dataset.files=[{ESCAPE}/*.txt]"],
        "no files match",
    ),
    (
        ["method=lm_metrics", "model=lm-tiny", "dataset=corpus/pydoc", f"method.model_dir={ESCAPE}"],
        "is not a saved scratch model",
    ),
    (["method=position_probe", "model=lm-tiny", "method.n_classes=1"], "method.n_classes must be >= 2"),
    (["method=info_flow", "dataset=mre/scnm", "method.conditions=[../x]"], "method.conditions must include gold"),
    (["method=verbalizer", "dataset=mre/scnm", "method.shots=[-1]"], "method.shots must be"),
    (["method=verbalizer", "dataset=mre/scnm", "dataset.options.coupling=1.5"], "options.coupling must be"),
    (["method=mre_ablation", "dataset=mre/scnm", f"method.conditions=[{ESCAPE}]"], "method.conditions: unknown"),
    (["method=cot", "dataset=blocksworld/generated", "dataset.options.step=-1"], "options.step must be"),
    (["method=cot", "dataset=blocksworld/generated", "dataset.options.step=1000000000000"], "no problem with"),
    (["method=cot", "dataset=blocksworld/generated", "dataset.options.blocks=[100000]"], "options.blocks must be"),
    (["method=cot", "dataset=blocksworld/step_2", f"dataset.path={ESCAPE}"], "blocksworld data not found"),
    (
        ["method=cot", "dataset=blocksworld/generated", "method.draft.kind=model", f"method.draft.model={ESCAPE}"],
        "cannot be used as a file name",
    ),
    (["method=mcts", "dataset=blocksworld/generated", "method.batch_size=0"], "method.batch_size must be >= 1"),
]


@pytest.mark.parametrize("overrides,needle", RUNNER_ERRORS, ids=[" ".join(o)[:60] for o, _ in RUNNER_ERRORS])
def test_runner_rejects_bad_values_in_one_line_inside_its_run_dir(tmp_path, overrides, needle):
    assert needle in one_line(run_runner, tmp_path, *overrides)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["method.scoring=[../../x]"], "method.scoring must be one of generate, loglik, got '../../x'"),
        (["method=finetune", "method.peft=../lora"], "method.peft must be one of none, lora, got '../lora'"),
        (["method=mcts", "dataset=blocksworld/generated", "method.simulate=../x"], "method.simulate must be one of"),
    ],
)
def test_choice_values_are_refused_with_the_config_before_any_runner(overrides, needle):
    from llmlab.config import validate_config

    assert needle in one_line(validate_config, compose([*TINY, *overrides]))


def test_names_tags_and_unicode_in_config_strings_write_only_into_the_run_dir(tmp_path):
    res = run_runner(
        tmp_path,
        f"dataset.name={ESCAPE}",
        f"model.name={ESCAPE}",
        f"tags=[{ESCAPE}]",
        f"logger.tags=[{ESCAPE}]",
        'logger.group="ünï🙂\u202e "',
        "method.limit=1",
        "method.shots=1",
        "method.batch_size=100000000000000000000",
    )
    assert res["dataset"] == ESCAPE and res["metrics"]["pattern"]["n"] == 1


def test_pypi_model_name_cannot_leave_the_cache(tmp_path):
    from llmlab.models.loading import ensure_converted

    cfg = compose(["model=smollm2-135m", f"model.name={ESCAPE}"]).model
    with confined(tmp_path):
        assert "cannot be used as a file name" in one_line(ensure_converted, cfg, tmp_path / "cache")


# ---- loaders: missing, empty, truncated, binary and unicode-garbage files -------------------------------------------

BAD_FILES = {"missing": None, "empty": "", "truncated": TRUNCATED_JSON, "binary": BINARY, "unicode": UNICODE}


def bad_file(tmp_path: Path, kind: str, name: str) -> Path:
    return tmp_path / "in" / name if BAD_FILES[kind] is None else write(tmp_path / "in" / name, BAD_FILES[kind])


@pytest.mark.parametrize("kind", BAD_FILES)
def test_jsonl_dataset_file(tmp_path, kind):
    from llmlab.data.files import load_jsonl_dataset

    path = bad_file(tmp_path, kind, "rows.jsonl")
    assert str(path) in one_line(load_jsonl_dataset, path)


def test_jsonl_dataset_rejects_a_numeric_answer_that_is_no_number(tmp_path):
    from llmlab.data.files import load_jsonl_dataset
    from llmlab.data.implicit import build_split

    row = {**build_split("expression", "test_pattern", 1, 0)[0], "answer": "seven🙂"}
    assert "is not a number" in one_line(load_jsonl_dataset, write(tmp_path / "r.jsonl", json.dumps(row)))


def test_jsonl_dataset_with_unicode_content_runs(tmp_path):
    from llmlab.data.implicit import build_split

    rows = build_split("bool", "test_pattern", 2, 0).to_list()
    rows = [{**r, "question": "ünï🙂\u202e" + r["question"], "id": f"🙂/{ESCAPE}/{i}"} for i, r in enumerate(rows)]
    path = write(tmp_path / "in" / "u.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    res = run_runner(tmp_path, "dataset=file", f"dataset.path={path}", f"dataset.pool_path={path}", "method.shots=1")
    assert res["metrics"]["pattern"]["n"] == 2


@pytest.mark.parametrize("kind", BAD_FILES)
def test_corpus_files(tmp_path, kind):
    from llmlab.data.corpus import load_corpus

    path = bad_file(tmp_path, kind, "c.txt")
    cfg = compose(["dataset=corpus/shakespeare", f"dataset.files=[{path}]", "dataset.block_size=512"]).dataset
    assert one_line(load_corpus, cfg, tmp_path / "cache")  # missing, empty, or too short once decoded


def test_implicit_task_names_and_options():
    from llmlab.data.implicit import load_implicit

    for task in (ESCAPE, "ünï", "", None, 5):
        assert "unknown implicit task" in one_line(load_implicit, task, 0, n_test=1)
    for value in ([1], {"a": 1}, "../x"):
        assert "bool_variant" in one_line(load_implicit, "bool", 0, n_test=1, bool_variant=value)


PDDL = """(define (problem p) (:domain blocksworld-4ops) (:objects a b c d )
(:init (handempty) (ontable a) (on b c) (on c a) (ontable d) (clear b) (clear d))
(:goal (and (on b d) (on c a))))"""


@pytest.fixture
def bw_root(tmp_path) -> Path:
    """A minimal valid Blocksworld data folder (one easy step-2 problem, its prompt file)."""
    root = tmp_path / "bw"
    write(root / "planbench" / "p.pddl", PDDL)
    write(
        root / "llm-reasoners/data/split_v2/split_v2_step_2_data.json",
        json.dumps([["p.pddl", "(unstack b c)\n(stack b d)\n", 2]]),
    )
    write(
        root / "llm-reasoners/prompts/pool_prompt_v2_step_2.json",
        json.dumps({"intro": "i", "example_pool": [], "self-eval": "s"}),
    )
    return root


def test_blocksworld_valid_folder_loads(bw_root):
    from llmlab.blocksworld.data import load_prompts, load_split

    assert len(load_split(bw_root, "easy", 2)) == 1 and load_prompts(bw_root, "easy", 2).intro == "i"


@pytest.mark.parametrize("target", ["split", "pddl", "prompts"])
@pytest.mark.parametrize("kind", [*BAD_FILES, "wrong shape"])
def test_blocksworld_files(bw_root, target, kind):
    from llmlab.blocksworld.data import load_prompts, load_split

    path = {
        "split": "llm-reasoners/data/split_v2/split_v2_step_2_data.json",
        "pddl": "planbench/p.pddl",
        "prompts": "llm-reasoners/prompts/pool_prompt_v2_step_2.json",
    }[target]
    shape = {"split": '[["p.pddl", 5, 2]]', "pddl": "(:objects a)(:init)(:goal (and (on a ü)))", "prompts": "[1]"}
    if kind == "missing":
        (bw_root / path).unlink()
    else:
        write(bw_root / path, shape[target] if kind == "wrong shape" else BAD_FILES[kind])
    one_line(load_prompts if target == "prompts" else load_split, bw_root, "easy", 2)


@pytest.mark.parametrize("instance", [ESCAPE + ".pddl", "/etc/hostname", "ünï\u202e.pddl"])
def test_blocksworld_instance_paths_stay_in_the_data_folder(bw_root, instance):
    from llmlab.blocksworld.data import load_split

    write(bw_root / "llm-reasoners/data/split_v2/split_v2_step_2_data.json", json.dumps([[instance, "", 0]]))
    one_line(load_split, bw_root, "easy", 2)


def test_blocksworld_gold_plans_that_match_nothing(bw_root):
    from llmlab.blocksworld.domain import parse_pddl, parse_pddl_plan

    blocks = parse_pddl(PDDL).blocks
    for plan in ("(fly a)", "(stack a ü)", "(unstack b)", UNICODE):
        one_line(parse_pddl_plan, plan, blocks)


@pytest.mark.parametrize("kind", BAD_FILES)
@pytest.mark.parametrize("ext", [".json", ".jsonl", ".csv"])
def test_mre_files(tmp_path, kind, ext):
    from llmlab.data.mre.loader import read_records

    path = bad_file(tmp_path, kind, "mre" + ext)
    assert str(path) in one_line(read_records, path)


def test_mre_file_lines_and_unicode(tmp_path):
    from llmlab.data.mre.loader import read_records

    good = {"input": "Ünï 🙂 text\u202e/NER", "output": "Spörts/NER/:Person;Ünï"}
    rows, _ = read_records(write(tmp_path / "u.jsonl", json.dumps(good, ensure_ascii=False) + "\n"))
    assert rows[0]["tl"] == "Spörts"
    lines = [
        json.dumps(good),
        json.dumps({"input": 5, "output": None}),
        json.dumps([good]),
        '{"input": "a/N',
        json.dumps({"input": "x/NER", "output": f"{ESCAPE}/NER/"}),
    ]
    for i, bad in enumerate(lines[1:], 2):
        assert ":2:" in one_line(read_records, write(tmp_path / f"b{i}.jsonl", lines[0] + "\n" + bad + "\n"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama (config.json, safetensors, tokenizer)."""
    from llmlab.hardware import Hardware
    from llmlab.models.loading import load_model

    path = tmp_path_factory.mktemp("hf") / "model"
    model, tok = load_model(compose(TINY).model, Hardware(torch.device("cpu"), torch.float32), path.parent, reuse=False)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


LOCAL_MODEL_DAMAGE = [
    ("missing dir", None, None),
    ("empty dir", "*", None),
    ("config.json", "truncated", None),
    ("config.json", "binary", None),
    ("config.json", "list", "[1]"),
    ("config.json", "unknown type", json.dumps({"model_type": "ünï"})),
    (
        "config.json",
        "huge",
        json.dumps({"model_type": "llama", "hidden_size": 10**12, "vocab_size": 10**9, "num_hidden_layers": 1}),
    ),
    ("model.safetensors", "binary", None),
    ("model.safetensors", "empty", None),
    ("tokenizer.json", "truncated", None),
]


@pytest.mark.parametrize("name,kind,content", LOCAL_MODEL_DAMAGE, ids=[f"{n}-{k}" for n, k, _ in LOCAL_MODEL_DAMAGE])
def test_local_model_directory(tmp_path, hf_dir, name, kind, content):
    import shutil

    from llmlab.hardware import Hardware
    from llmlab.models.loading import load_model

    path = tmp_path / "model"
    if kind == "*":
        path.mkdir()
    elif kind is not None:
        shutil.copytree(hf_dir, path)
        write(path / name, content if content is not None else BAD_FILES[kind])
    cfg = compose(["model=local", f"model.path={path}"]).model
    with confined(tmp_path):
        one_line(load_model, cfg, Hardware(torch.device("cpu"), torch.float32), tmp_path / "cache", reuse=False)


@pytest.mark.parametrize(
    "config,weights",
    [
        (TRUNCATED_JSON, b""),
        (BINARY, b""),
        ("[1]", b""),
        (json.dumps({"family": "rwkv"}), b""),
        (json.dumps({"family": "lm", "lm": {"bogus": 1}}), b""),
        (json.dumps({"family": "rwkv", "vocab_size": 4, "train_len": 8, "rwkv": {}}), BINARY),
    ],
)
def test_saved_scratch_model_directory(tmp_path, config, weights):
    from llmlab.models.recurrent import is_saved_scratch_model
    from llmlab.models.scratch import load_scratch_model

    write(tmp_path / "m" / "config.json", config)
    write(tmp_path / "m" / "model.safetensors", weights)
    one_line(load_scratch_model, tmp_path / "m")
    # recognised by its config alone (family and train_len), never an exception: the loader refuses the weights
    assert is_saved_scratch_model(tmp_path / "m") is (isinstance(config, str) and '"train_len"' in config)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("content", [b"", BINARY, TRUNCATED_JSON])
def test_rwkv_checkpoint_files(tmp_path, suffix, content):
    from llmlab.models.rwkv import read_weights

    one_line(read_weights, write(tmp_path / f"w{suffix}", content))


# ---- model outputs that match nothing: failed steps, not crashes ---------------------------------------------------


def garbage_texts(n: int = 200) -> list[str]:
    rng = random.Random(0)
    alphabet = "abc:;/\n[]() 01-.éü🙂\u202e\x00" + "".join(chr(c) for c in range(0x370, 0x3A0))
    words = ["stack", "unstack", "pick up", "put down", "red", "blue", "NER", "/", ":", ";", "[PLAN END]", "9" * 400]
    return [UNICODE, BINARY.decode("latin-1"), ""] + [
        "".join(rng.choice(words + list(alphabet)) for _ in range(rng.randint(1, 40))) for _ in range(n)
    ]


def test_blocksworld_action_parsing_of_garbage():
    from llmlab.blocksworld.domain import parse_pddl, validate
    from llmlab.blocksworld.text import parse_action, parse_plan

    problem = parse_pddl(PDDL)
    for text in garbage_texts():
        action = parse_action(text)
        assert action is None or isinstance(action, tuple)
        verdict = validate(problem, parse_plan(text))
        assert isinstance(verdict.valid, bool) and (verdict.valid or verdict.reason)


def test_mre_parsing_of_garbage_raises_only_format_errors():
    from llmlab.data.mre.format import FormatError, parse_output, parse_pair, parse_wl

    for text in garbage_texts():
        for fn, args in ((parse_output, (text,)), (parse_wl, ("NER", text)), (parse_pair, (text, text))):
            with suppress(FormatError):  # anything else escapes and fails the test
                fn(*args)


def test_answer_extraction_of_garbage():
    from llmlab.data.implicit import build_split
    from llmlab.runners.icl import prediction
    from llmlab.scoring import Scored

    rows = [r for task in ("expression", "bool") for r in build_split(task, "test_pattern", 2, 0).to_list()]
    for text in garbage_texts(50):
        for row in rows:
            s = Scored(
                loglik=[0.0] * len(row["candidates"]), first_logprob=[0.0] * len(row["candidates"]), generated=text
            )
            pred = prediction(row, "pattern", s, ["generate", "loglik"])
            assert isinstance(pred["strict"], bool) and isinstance(pred["loose"], bool)


def test_mre_ablation_scores_unparseable_generations_as_wrong():
    from llmlab.runners.mre_ablation import evaluate
    from llmlab.scoring import Scored

    texts = garbage_texts(20)
    rows = [{"id": str(i), "prompt": "p", "tl": "Sports", "wl": [["Person", "A"]]} for i in range(len(texts))]

    class Garbage:
        def score(self, reqs):
            return [Scored(loglik=[0.0, -1.0], generated=t) for t in texts[: len(reqs)]]

    for cond in ("wl_only", "joint", "tl_only"):
        metrics, preds = evaluate(Garbage(), rows, cond, ["Nature", "Sports"], "NER", 8)
        assert len(preds) == len(rows) and metrics.get("wl_f1", 0.0) == 0.0


def test_cot_plan_that_matches_nothing_is_a_failed_problem(tmp_path, monkeypatch):
    import llmlab.runners.cot as cot
    from llmlab.decoding.speculative import DecodeStats

    texts, seen = iter(["fly the ünï 🙂 block\nstack the red\n[PLAN END]", UNICODE]), {}
    real_load = cot.load_model

    def load_model(*args, **kwargs):
        seen["model"], seen["tok"] = real_load(*args, **kwargs)
        return seen["model"], seen["tok"]

    def fake_greedy(model, ids, stop, prefix=None):  # the model "writes" garbage
        return seen["tok"](next(texts), add_special_tokens=False).input_ids, DecodeStats(new_tokens=3)

    monkeypatch.setattr(cot, "load_model", load_model)
    monkeypatch.setattr(cot, "greedy", fake_greedy)
    res = run_runner(
        tmp_path,
        "method=cot",
        "dataset=blocksworld/generated",
        "dataset.options.n=2",
        "dataset.options.pool=2",
        "method.shots=1",
    )
    preds = [json.loads(ln) for ln in (tmp_path / DEEP / "run/predictions.jsonl").read_text().splitlines()]
    assert res["metrics"]["blocksworld/generated"]["accuracy"] == 0.0
    assert preds[0]["plan"][0] is None and preds[0]["reason"] == "step 1 is not an action"
    assert all(not p["correct"] and p["reason"] for p in preds)


def test_mcts_with_a_world_model_that_writes_garbage_finishes(tmp_path):
    res = run_runner(
        tmp_path,
        "method=mcts",
        "dataset=blocksworld/generated",
        "dataset.options.n=1",
        "dataset.options.pool=2",
        "method.shots=1",
        "method.n_iters=1",
        "method.node_text=generate",
        "method.node_max_new_tokens=8",
        "method.reward.components=[ll]",
    )
    assert res["metrics"]["blocksworld/generated"]["n"] == 1
    assert list((tmp_path / DEEP / "run/trees").glob("*.json"))


# ---- resumed runs and reports over truncated files ------------------------------------------------------------------


def test_icl_resumes_over_a_torn_partial_predictions_file(tmp_path):
    run = tmp_path / DEEP / "run"
    write(run / "predictions.partial.jsonl", '{"id": "expression/test_pattern/00000", "varia')
    res = run_runner(tmp_path, "method.limit=2", "method.shots=0")
    assert res["metrics"]["pattern"]["n"] == 2 and not (run / "predictions.partial.jsonl").exists()


RESULTS = {
    "truncated": '{"metrics": {"pattern": {"strict": 0.',
    "binary": BINARY,
    "unicode": UNICODE,
    "list": "[1, 2]",
    "metrics list": '{"metrics": {"pattern": [1]}}',
    "metrics text": '{"metrics": {"pattern": {"strict": "ü", "n": 1}}}',
}


@pytest.mark.parametrize("kind", RESULTS)
def test_report_on_damaged_results(tmp_path, kind):
    from llmlab.report import report

    good = {"runner": "icl", "shots": 0, "seed": 0, "metrics": {"pattern": {"strict": 0.5, "n": 2}}}
    write(tmp_path / "sweep/0/results.json", json.dumps(good))
    write(tmp_path / "sweep/1/results.json", RESULTS[kind])
    with confined(tmp_path, tmp_path / "sweep"):
        assert "results.json" in one_line(report, tmp_path / "sweep")


def test_report_ignores_truncated_metrics_and_predictions(tmp_path):
    from llmlab.report import report

    run = tmp_path / "sweep/0"
    write(
        run / "results.json",
        json.dumps({"runner": "icl", "shots": 0, "seed": 0, "metrics": {"pattern": {"strict": 0.5, "n": 2}}}),
    )
    write(run / "metrics.jsonl", '{"step": 1, "loss": 0.')
    write(run / "predictions.jsonl", BINARY)
    write(run / "predictions.partial.jsonl", TRUNCATED_JSON)
    write(tmp_path / "sweep/1/meta.json", TRUNCATED_JSON)  # an unfinished run
    with confined(tmp_path, tmp_path / "sweep"):
        table, _ = report(tmp_path / "sweep")
    assert "0.500" in table and "1 unfinished" in table


@pytest.mark.parametrize("content", [TRUNCATED_JSON, BINARY, "[1]"])
def test_mre_report_on_damaged_results(tmp_path, content):
    from llmlab.analysis.mre_report import report

    write(tmp_path / "sweep/0/results.json", content)
    with confined(tmp_path, tmp_path / "sweep"):
        one_line(report, tmp_path / "sweep")


# ---- the CLI end to end: exit 2, one line, nothing outside the run directory ----------------------------------------

CLI_CASES = [
    (["method=mcts", "dataset=blocksworld/generated", "method.bogus=1"], "Key 'bogus' not in 'MCTSConfig'"),
    (
        [
            "method=icl_vs_ft",
            f"method.tasks=[bool,{ESCAPE}]",
            "method.shots=[0]",
            "method.report_k=0",
            "method.seeds=[0]",
            "method.run_arms=[]",
        ],
        "method.tasks must be one of",
    ),
    (
        ["method=verbalizer", "dataset=mre/file", "dataset.path={binary}", "dataset.pool_path={binary}"],
        "not valid UTF-8",
    ),
]


@pytest.mark.parametrize("args,needle", CLI_CASES, ids=["bad key", "traversal", "binary data"])
def test_cli_bad_input_is_one_line_and_confined(sandbox, args, needle):
    binary = write(sandbox / "in" / "mre.json", BINARY)
    before = tree(sandbox)
    res = cli(sandbox, *TINY, *[a.format(binary=binary) for a in args])
    assert_cli_error(res, needle)
    assert not [p for p in outside_run_dirs(sandbox) if p not in before]


def test_cli_report_on_a_binary_results_file(sandbox):
    write(sandbox / "outputs/sweep/0/results.json", BINARY)
    with confined(sandbox, sandbox / "outputs/sweep"):
        res = subprocess.run(
            [sys.executable, "-m", "llmlab.cli", "report", str(sandbox / "outputs/sweep")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=sandbox / "cwd",
        )
    assert_cli_error(res, "not UTF-8")


def test_runner_name_cannot_move_the_run_directory(sandbox):
    """hydra.run.dir holds the runner's name: a name that would leave outputs/runs stops before Hydra creates it."""
    with confined(sandbox.parent):
        res = cli(sandbox, *TINY, "method.runner=" + "../" * 5 + "escaped")
    assert_cli_error(res, "cannot be used as a file name")


def test_huge_seed_is_one_line():
    from llmlab.seeding import seed_everything

    state = torch.random.get_rng_state()
    try:
        assert "seed" in one_line(seed_everything, 2**70)
    finally:
        torch.random.set_rng_state(state)


# ---- static audit of the package source ------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "dill", "cloudpickle", "shelve", "joblib"}


def unsafe_calls(source: str, name: str = "<src>") -> list[str]:
    """Unsafe deserialisation / code execution in `source`, found on its AST."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} imports {m}" for m in mods if m.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.Call):
            f = node.func
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile"):
                found.append(f"{where} calls {f.id}()")
            if (
                isinstance(f, ast.Attribute)
                and f.attr == "load"
                and isinstance(f.value, ast.Name)
                and f.value.id == "torch"
            ):
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                found += [] if ok else [f"{where} torch.load without weights_only=True"]
            if (
                isinstance(f, ast.Attribute)
                and f.attr in ("unsafe_load", "full_load")
                or (
                    isinstance(f, ast.Attribute)
                    and f.attr == "load"
                    and isinstance(f.value, ast.Name)
                    and f.value.id == "yaml"
                )
            ):
                found.append(f"{where} yaml loader")
            for key in ("trust_remote_code", "allow_pickle", "shell"):
                if isinstance(kw.get(key), ast.Constant) and kw[key].value is True:
                    found.append(f"{where} {key}=True")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if (
                    isinstance(k, ast.Constant)
                    and k.value == "trust_remote_code"
                    and isinstance(v, ast.Constant)
                    and v.value is True
                ):
                    found.append(f"{where} 'trust_remote_code': True")
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = (
        "import pickle\nfrom dill import loads\nimport marshal\neval(x)\nexec(y)\ncompile(s, 'f', 'exec')\n"
        "torch.load(p)\ntorch.load(p, weights_only=False)\nf(trust_remote_code=True)\n"
        "d = {'trust_remote_code': True}\nnp.load(p, allow_pickle=True)\nyaml.load(s)\n"
        "subprocess.run(c, shell=True)\n"
    )
    assert len(unsafe_calls(bad)) == 13
    assert (
        unsafe_calls(
            "re.compile('x')\nmodel.eval()\ntorch.load(p, weights_only=True)\nf(trust_remote_code=cfg.t)\n"
            "OmegaConf.load(p)\n"
        )
        == []
    )


def test_package_source_has_no_unsafe_deserialisation_or_remote_code():
    files = sorted((REPO / "llmlab").rglob("*.py"))
    assert len(files) > 50
    found = [f for path in files for f in unsafe_calls(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []
    yaml_true = [
        str(p.relative_to(REPO))
        for p in (REPO / "conf").rglob("*.yaml")
        if "trust_remote_code: true" in p.read_text().lower()
    ]
    assert yaml_true == []


# ---- trust_remote_code reaches transformers only when asked ----------------------------------------------------------


@pytest.fixture
def fake_transformers(monkeypatch):
    """Record every from_pretrained call of llmlab.models.loading; the hub counts as cached."""
    import llmlab.models.loading as loading

    calls = []

    def recorder(kind):
        def from_pretrained(where, **kwargs):
            calls.append((kind, str(where), kwargs))
            return mock.MagicMock()

        return SimpleNamespace(from_pretrained=from_pretrained)

    monkeypatch.setattr(loading, "AutoTokenizer", recorder("tokenizer"))
    monkeypatch.setattr(loading, "AutoModelForCausalLM", recorder("model"))
    monkeypatch.setattr(loading, "_in_hf_cache", lambda *a: True)
    return calls


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["model=qwen1.5-0.5b"], False),
        (["model=qwen1.5-0.5b", "model.trust_remote_code=true"], True),
        (["model=llama3.1-8b", "model.revision=main"], False),
        (["model=local", "model.path={dir}"], False),
        (["model=smollm2-135m"], False),  # GGUF conversion, then the converted directory
    ],
)
def test_trust_remote_code_reaches_transformers_only_when_asked(
    tmp_path, monkeypatch, fake_transformers, overrides, expected
):
    import llmlab.models.loading as loading
    from llmlab.hardware import Hardware

    write(tmp_path / "dir" / "config.json", "{}")
    monkeypatch.setattr(loading, "gguf_path", lambda cfg, scratch: write(tmp_path / "g" / "m.gguf", b""))
    cfg = compose([o.format(dir=tmp_path / "dir") for o in overrides]).model
    loading.load_model(cfg, Hardware(torch.device("cpu"), torch.float32), tmp_path / "cache", reuse=False)
    assert fake_transformers and {kind for kind, _, _ in fake_transformers} == {"tokenizer", "model"}
    for _kind, _where, kwargs in fake_transformers:
        assert kwargs.get("trust_remote_code", False) is expected
    if "hub_id" in cfg and cfg.source == "hub":
        assert all(where == cfg.hub_id for _, where, _ in fake_transformers)
