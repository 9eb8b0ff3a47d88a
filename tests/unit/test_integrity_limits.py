"""Run integrity, limits: prompts must fit the model's context (an error, or `method.truncate=left`), and evaluation
data is drawn limit-first (the same rows as a full draw) with sizes bounded by one-line errors."""

from __future__ import annotations

import json
import random
import re
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from llmlab.errors import LlmlabError
from tests.helpers import TINY, compose, runner_setup

SHORT = 256  # the tiny model's context in these tests (model.tiny.max_position_embeddings)


def file_rows(tmp_path, questions: list[str]) -> list:
    """A file dataset (bool rows, one per question) and the overrides that evaluate it 0-shot with a short context."""
    from llmlab.data.implicit import build_split

    rows = build_split("bool", "test_pattern", len(questions), seed=0).to_list()
    for row, q in zip(rows, questions):
        row["question"] = q
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows, [
        "dataset=file",
        f"dataset.path={path}",
        "dataset.variants=[pattern]",
        "method.shots=0",
        f"model.tiny.max_position_embeddings={SHORT}",
    ]


def guard(monkeypatch, module, most: int):
    """Count `module.generate` calls; more than `most` is an error (so an eager draw fails fast instead of running)."""
    calls = {"n": 0}
    real = module.generate

    def counted(rng, ctx):
        calls["n"] += 1
        if calls["n"] > most:
            raise RuntimeError(f"drew more than {most} items")
        return real(rng, ctx)

    monkeypatch.setattr(module, "generate", counted)
    return calls


# ---- 9. prompts longer than the context -------------------------------------------------------------------------


def test_overlong_prompt_is_one_line_error_naming_item_before_scoring(tmp_path, monkeypatch):
    from llmlab.runners import icl
    from llmlab.scoring import Scorer

    long_q = "True and False or " * 30 + "True\n The result is:"
    rows, overrides = file_rows(tmp_path, ["True or False\n The result is:"] * 3 + [long_q])
    cfg, ctx = runner_setup(tmp_path, *overrides)
    monkeypatch.setattr(icl, "CHUNK", 2)  # the long item sits in a later chunk than the first ones

    def no_scoring(*args, **kwargs):
        raise AssertionError("scoring started before the prompt lengths were checked")

    monkeypatch.setattr(Scorer, "score", no_scoring)
    with pytest.raises(LlmlabError) as err:
        icl.run(cfg, ctx)
    msg = str(err.value)
    assert "\n" not in msg and rows[3]["id"] in msg and f"{len(long_q.encode())} tokens" in msg  # byte tokenizer
    assert f"context of {SHORT} tokens" in msg and "method.truncate=left" in msg
    assert not ctx.run_dir.file("predictions.partial.jsonl").exists()


def test_pathological_prompt_is_refused_by_its_length_without_tokenising_it(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    from llmlab.runners import icl

    huge = "x" * 5_000_000 + "\n The result is:"
    rows, overrides = file_rows(tmp_path, ["True or False\n The result is:", huge])
    cfg, ctx = runner_setup(tmp_path, *overrides)
    real = PreTrainedTokenizerBase.__call__

    def bounded(self, text=None, *args, **kwargs):
        if isinstance(text, str) and len(text) > 100_000:
            raise AssertionError(f"tokenised a prompt of {len(text)} characters")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", bounded)
    with pytest.raises(LlmlabError) as err:
        icl.run(cfg, ctx)
    msg = str(err.value)
    assert "\n" not in msg and rows[1]["id"] in msg and "at least" in msg and f"{len(huge)} characters" in msg


def test_truncate_left_cuts_overlong_prompts_to_fit_and_counts_them(tmp_path):
    from llmlab.runners import icl

    short, long_q = "True or False\n The result is:", "(True) or " * 60 + "False\n The result is:"
    rows, overrides = file_rows(tmp_path, [short, long_q, short.replace("or", "and"), long_q.replace("or", "and")])
    cfg, ctx = runner_setup(tmp_path, *overrides, "method.truncate=left")
    res = icl.run(cfg, ctx)
    assert res["truncated"] == 2 and res["metrics"]["pattern"]["n"] == 4
    preds = {p["id"]: p for p in map(json.loads, ctx.run_dir.file("predictions.jsonl").read_text().splitlines())}
    room = max(8, *(len(c.encode()) for r in rows for c in r["candidates"]))  # file datasets generate 8 tokens
    for row in rows:
        # byte tokenizer, ASCII text: the longest suffix that fits leaves exactly `room` tokens for the answer
        expected = SHORT - room if len(row["question"]) > SHORT - room else len(row["question"])
        assert preds[row["id"]]["context_tokens"] == expected


def test_truncate_choices_are_validated_with_the_config():
    from llmlab.config import validate_config

    with pytest.raises(LlmlabError, match="method.truncate must be one of none, left, got 'middle'"):
        validate_config(compose([*TINY, "method.truncate=middle"]))


@pytest.fixture(scope="module")
def tiny():
    from llmlab.config import ModelConfig
    from llmlab.hardware import Hardware
    from llmlab.models.loading import load_model

    cfg = OmegaConf.structured(ModelConfig(name="tiny", source="random"))
    cfg.tiny.max_position_embeddings = SHORT
    return load_model(cfg, Hardware(torch.device("cpu"), torch.float32), cache_dir=".", seed=3, reuse=False)


def test_scorer_fits_every_request_to_the_context(tiny):
    from llmlab.scoring import Request, Scorer, context_limit

    model, tok = tiny
    assert context_limit(model, tok) == SHORT and context_limit(model, tok, 100) == 100
    assert context_limit(model, SimpleNamespace(model_max_length=64)) == 64
    assert context_limit(SimpleNamespace(), SimpleNamespace(model_max_length=int(1e30))) is None  # unknown: no limit
    ok, long_ctx = Request("Is it? Answer:", [" yes", " no"], 4), Request("ü" * 200 + " Answer:", [" yes"], 3, id="q7")
    with pytest.raises(LlmlabError, match=r"^prompt of item q7 is 408 tokens, which with its 4-token answer"):
        Scorer(model, tok).score([ok, long_ctx])  # every scoring runner gets the check
    fitted, cut = Scorer(model, tok, truncate="left").fit([ok, long_ctx])
    assert cut == 1 and fitted[0] is ok and long_ctx.context.endswith(fitted[1].context)
    assert len(tok(fitted[1].context).input_ids) == SHORT - 4  # 122 two-byte characters and " Answer:"
    huge = Request("ab" * 3_000_000 + "?", [" yes"], 2)
    (cut_huge,), n = Scorer(model, tok, truncate="left").fit([huge])
    assert n == 1 and cut_huge.context == huge.context[-(SHORT - 4) :]  # " yes" is 4 tokens
    scored = Scorer(model, tok, truncate="left").score([huge, ok])
    assert scored[0].context_tokens == SHORT - 4 and len(scored[1].loglik) == 2
    with pytest.raises(LlmlabError, match="leaves no room for a prompt"):
        Scorer(model, tok, truncate="left").fit([Request("x" * 300, [" y" * 300])])
    with pytest.raises(LlmlabError, match="truncate must be one of none, left"):
        Scorer(model, tok, truncate="right")


# ---- 10. limit-first, bounded data generation -------------------------------------------------------------------


@pytest.mark.parametrize("task", ["expression", "code", "bool", "relation", "algebra", "parity"])
def test_limited_draw_is_the_full_draws_first_rows(task):
    from llmlab.data.implicit import load_implicit

    for faithful in (False, True):
        sizes = dict(n_test=60, n_train_ft=30, n_icl_pool=30, faithful=faithful)
        full = {s: d.to_list() for s, d in load_implicit(task, 5, **sizes).items()}
        for k in (0, 1, 7, 60, 100):
            part = {s: d.to_list() for s, d in load_implicit(task, 5, limit=k, **sizes).items()}
            assert part["train_ft"] == full["train_ft"] and part["icl_pool"] == full["icl_pool"]
            assert part["test_pattern"] == full["test_pattern"][:k] and part["test_counter"] == full["test_counter"][:k]


def test_limited_draw_skips_questions_drawn_later_in_test_pattern(monkeypatch):
    """A task whose counter questions often repeat pattern ones: the first counter rows of a limited draw must skip
    what the full draw's test_pattern holds beyond the limit, as the full draw does."""
    from llmlab.data import implicit
    from llmlab.data.implicit.common import TaskSpec, binary, item

    def generate(rng, ctx):
        question = f"q{rng.randrange(60)}"
        answer, target, cands = binary(ctx.want, ("False", "True"), " ")
        return item(question, answer, target, cands, question + target, question + target, {})

    fake = SimpleNamespace(spec=lambda faithful: TaskSpec("fake", "", 2, "bool"), generate=generate)
    monkeypatch.setitem(implicit._MODULES, "fake", fake)
    k, changed = 4, 0
    for seed in range(12):
        sizes = dict(n_train_ft=4, n_icl_pool=4)
        full = implicit.load_implicit("fake", seed, n_test=20, **sizes)
        part = implicit.load_implicit("fake", seed, n_test=20, limit=k, **sizes)
        naive = implicit.load_implicit("fake", seed, n_test=k, **sizes)  # blind to test_pattern beyond k
        for s in implicit.SPLITS[2:]:
            assert part[s].to_list() == full[s].to_list()[:k]
        changed += naive["test_counter"].to_list() != full["test_counter"].to_list()[:k]
    assert changed  # the case this guards against does happen


def test_icl_with_a_limit_draws_only_the_rows_it_evaluates(tmp_path, monkeypatch):
    from llmlab.data.implicit import relation
    from llmlab.runners import icl

    calls = guard(monkeypatch, relation, 20_000)
    cfg, ctx = runner_setup(
        tmp_path, "dataset=implicit/relation", "dataset.n_test=20000", "method.limit=2", "method.shots=1"
    )
    res = icl.run(cfg, ctx)
    assert res["metrics"]["pattern"]["n"] == res["metrics"]["counter"]["n"] == 2
    assert calls["n"] <= 20 + 50 + 2 * 2 + 10  # train_ft + pool + the limited test rows (+ a few rejected draws)


@pytest.mark.parametrize(
    ("task", "sizes", "message"),
    [
        ("bool", dict(n_test=100_000_000), "100000000 rows asked, more than the maximum of 1000000 per split"),
        ("bool", dict(n_icl_pool=10**6 + 1), "more than the maximum"),
        (
            "algebra",
            dict(n_test=60_000),
            "has 50400 distinct pattern questions, fewer than the 62000 asked for (train_ft + icl_pool + test_pattern)",
        ),
        (
            "code",
            dict(n_test=50_000),
            "has 42152 distinct counter questions, fewer than the 50000 asked for (test_counter)",
        ),
        ("parity", dict(n_train_ft=900_000, n_icl_pool=200_000), "distinct pattern questions"),
    ],
)
def test_sizes_that_cannot_be_honoured_fail_fast(monkeypatch, task, sizes, message):
    from llmlab.data import implicit

    guard(monkeypatch, implicit._module(task), 5000)  # an eager draw stops here instead of running for minutes
    for limit in (None, 2):
        with pytest.raises(LlmlabError, match=re.escape(message)) as err:
            implicit.load_implicit(task, 0, limit=limit, **sizes)
        assert "\n" not in str(err.value)


def test_huge_n_test_with_a_limit_is_a_one_line_error_in_the_runner(tmp_path, monkeypatch):
    from llmlab.data.implicit import boolean
    from llmlab.runners import icl

    guard(monkeypatch, boolean, 5000)
    cfg, ctx = runner_setup(tmp_path, "dataset=implicit/bool", "dataset.n_test=100000000", "method.limit=2")
    with pytest.raises(LlmlabError, match="more than the maximum of 1000000 per split"):
        icl.run(cfg, ctx)


def test_question_spaces_bound_what_the_generators_draw():
    """The declared spaces are upper bounds: many draws never give more distinct questions than they allow."""
    from llmlab.data.implicit import algebra, code_reading, parity
    from llmlab.data.implicit.common import Ctx

    for mod, opts in ((algebra, {}), (code_reading, {}), (parity, {})):
        for variant in ("pattern", "counter"):
            rng = random.Random(0)
            drawn = {
                mod.generate(rng, Ctx(variant, "test_" + variant, False, i % 2 == 0, opts))["question"]
                for i in range(20_000)
            }
            assert len(drawn) <= mod.space(variant, False, opts)
    assert algebra.space("pattern", False, {}) == 25 * 9 * (256 - 32)  # ordered independent coefficient pairs
    assert parity.space("counter", True, {}) == 2**21 - 2**12
