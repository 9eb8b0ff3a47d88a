"""The runner registry: `@register_runner` marks read from the source, checked against the decorators on import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab import config, registry
from llmlab.errors import LlmlabError
from tests.helpers import REPO


def runner_modules() -> list[str]:
    """The modules of llmlab/runners that define a top-level `run`."""
    return sorted(
        p.stem
        for p in (REPO / "llmlab" / "runners").glob("*.py")
        if any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in ast.parse(p.read_text()).body)
    )


def write_module(directory: Path, name: str, decorator: str) -> None:
    (directory / f"{name}.py").write_text(
        f"from llmlab.config import ICLConfig\nfrom llmlab.registry import register_runner\n\n\n{decorator}\n"
        "def run(cfg, ctx):\n    return {}\n"
    )


def test_the_index_holds_the_run_function_of_every_runner_module():
    targets = {e.target for e in registry.RUNNERS.values()}
    assert len(runner_modules()) == 12 and targets == {f"llmlab.runners.{m}:run" for m in runner_modules()}
    assert registry.RUNNERS["finetune"].schema is config.FinetuneConfig
    assert registry.RUNNERS["finetune"].objective == ("final_loss", "minimize")
    assert registry.RUNNERS["icl_vs_ft"].objective == (None, "maximize")  # its first metric
    assert registry.RUNNERS["circuit_shift"].objective is None


def test_every_decorator_agrees_with_the_index_and_returns_the_function():
    for name, entry in registry.RUNNERS.items():
        module = __import__(entry.target.split(":")[0], fromlist=["run"])  # its decorator checks itself on import
        assert registry.get_runner(name) is module.run


def test_the_index_is_read_without_importing_runner_code():
    code = (
        "import sys, llmlab.registry as r; assert r.RUNNERS; r.register_schemas(); "
        "print(sorted(m for m in sys.modules if m.startswith(('llmlab.runners.', 'torch', 'transformers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_each_schema_is_stored_for_composition_with_its_runner_name():
    from hydra.core.config_store import ConfigStore

    registry.register_schemas()
    for name, entry in registry.RUNNERS.items():
        assert ConfigStore.instance().load(f"schema/method/{name}.yaml").node.runner == name
        assert config.method_schema(name) is entry.schema
    assert config.method_schema("nope") is None


def test_config_does_not_import_the_registry():
    tree = ast.parse((REPO / "llmlab" / "config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("llmlab.registry")}


def test_a_name_registered_twice_is_refused(tmp_path):
    write_module(tmp_path, "one", '@register_runner("twin", schema=ICLConfig)')
    write_module(tmp_path, "two", '@register_runner("twin", schema=ICLConfig, objective=("strict", "maximize"))')
    with pytest.raises(LlmlabError, match="runner 'twin' is registered twice: pkg.one:run and pkg.two:run"):
        registry.scan(tmp_path, "pkg")


def test_the_scanner_reads_a_literal_mark_and_refuses_others(tmp_path):
    write_module(tmp_path, "good", '@register_runner("good", schema=ICLConfig, objective=(None, "minimize"))')
    assert registry.scan(tmp_path, "pkg") == {
        "good": registry.RunnerEntry("good", "pkg.good:run", config.ICLConfig, (None, "minimize"))
    }
    for decorator, message in [
        ("@register_runner(NAME, schema=ICLConfig)", "write @register_runner"),
        ('@register_runner("bad", schema=dict)', "schema dict is not a MethodConfig"),
        ('@register_runner("bad", schema=ICLConfig, objective=("loss", "lowest"))', "objective must be"),
        ('@register_runner("bad", schema=ICLConfig, objective=METRIC)', "objective must be a literal"),
    ]:
        write_module(tmp_path, "bad", decorator)
        with pytest.raises(LlmlabError, match=message):
            registry.scan(tmp_path, "pkg")


def fake_run(module: str, qualname: str = "run"):
    def run(cfg, ctx):
        return {}

    run.__module__, run.__qualname__ = module, qualname
    return run


def test_a_decorator_that_disagrees_with_the_index_is_refused():
    mark = registry.register_runner("finetune", schema=config.FinetuneConfig, objective=("final_loss", "minimize"))
    same = fake_run("llmlab.runners.finetune")
    assert mark(same) is same
    with pytest.raises(LlmlabError, match="the decorator states schema=ICLConfig"):
        registry.register_runner("finetune", schema=config.ICLConfig, objective=("final_loss", "minimize"))(same)
    with pytest.raises(LlmlabError, match="objective=None, the source index read"):
        registry.register_runner("finetune", schema=config.FinetuneConfig)(same)
    with pytest.raises(LlmlabError, match="runner 'finetune' .* is already registered by llmlab.runners.finetune:run"):
        mark(fake_run("elsewhere"))
    with pytest.raises(LlmlabError, match="runner 'extra' .* is not in the index"):
        registry.register_runner("extra", schema=config.ICLConfig)(fake_run("llmlab.runners.extra"))


def test_an_unknown_runner_names_the_closest_one():
    with pytest.raises(LlmlabError) as info:
        registry.get_runner("finetun")
    message = str(info.value)
    assert "\n" not in message and message.startswith("unknown runner 'finetun' (did you mean 'finetune'?)")


def test_the_sweep_objective_is_the_registered_one():
    from llmlab import objectives

    assert objectives.direction("pretrain") == "minimize" and objectives.direction("icl_vs_ft") == "maximize"
    with pytest.raises(LlmlabError) as info:
        objectives.direction("circuit_shift")
    assert str(info.value) == (
        "method.runner=circuit_shift states no sweep objective (runners that do: cot, finetune, icl, icl_vs_ft, "
        "lm_metrics, mcts, position_probe, pretrain); set hydra.sweeper.direction=minimize or maximize"
    )
    assert objectives.objective({"runner": "finetune", "steps": 3, "final_loss": 0.5}) == 0.5
    assert objectives.objective({"runner": "icl", "metrics": {"pattern": {"n": 9, "loose": 0.9, "strict": 0.7}}}) == 0.7
    assert objectives.objective({"runner": "icl_vs_ft", "metrics": {"bool": {"n": 9, "ft@0": 0.4}}}) == 0.4
    assert objectives.objective({"runner": "verbalizer", "metrics": {"kv": {"n": 9, "f1": 0.3}}}) == 0.3
