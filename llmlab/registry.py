"""Runner registry: a method's `runner` name selects a function `run(cfg, ctx) -> RunResult`, the schema of its config
and its sweep objective, all stated once, where the function is defined:

    @register_runner("finetune", schema=FinetuneConfig, objective=("final_loss", "minimize"))
    def run(cfg: DictConfig, ctx: RunContext) -> RunResult: ...

The entries are read from the source, not by importing the runner modules: importing them all costs seconds (torch,
transformers, datasets, triton), while composing a config, `llmlab --help` or a dry run must stay instant and import
no runner code. So this module parses `llmlab/runners/*.py` (`ast`) for `@register_runner(...)` calls: the name (a
string), the schema (a class of `llmlab.config`), the objective (a literal) and the decorated function. When a runner
module is imported, its decorator checks itself against that index, so the two cannot drift. Each schema is stored in
Hydra's ConfigStore as `schema/method/<name>` with `runner` set to the name: method YAMLs list
`/schema/method/<name>@_here_` and `cfg.method.runner` is the registered name.
"""

from __future__ import annotations

import ast
import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab import config
from llmlab.errors import LlmlabError

if TYPE_CHECKING:
    from llmlab.run_context import Runner

DIRECTIONS = ("minimize", "maximize")


Objective = tuple[str | None, str]  # (metric, or None for the first one; "minimize" | "maximize")


@dataclass(frozen=True)
class RunnerEntry:
    name: str
    target: str  # "package.module:function"
    schema: type[config.MethodConfig]
    objective: Objective | None = None


def scan(directory: Path, package: str) -> dict[str, RunnerEntry]:
    """The `@register_runner(...)` decorated functions of the modules `directory/*.py` (the package `package`), read
    from their source; a name registered twice, or a call that is not literal, is an error."""
    entries: dict[str, RunnerEntry] = {}
    for path in sorted(directory.glob("*.py")):
        text = path.read_text()
        if "register_runner" not in text:
            continue
        for node in ast.parse(text, str(path)).body:
            for call in getattr(node, "decorator_list", ()):
                if not _is_register_call(call):
                    continue
                where = f"{path}:{call.lineno}"
                entry = _entry(call, f"{package}.{path.stem}:{node.name}", where)
                if entry.name in entries:
                    raise LlmlabError(
                        f"runner '{entry.name}' is registered twice: {entries[entry.name].target} and {entry.target}"
                    )
                entries[entry.name] = entry
    return entries


def _is_register_call(node: ast.expr) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return getattr(func, "id", getattr(func, "attr", None)) == "register_runner"


def _entry(call: ast.Call, target: str, where: str) -> RunnerEntry:
    """The entry one `@register_runner(name, schema=<llmlab.config class>, objective=<literal>)` call states."""
    keywords = {k.arg: k.value for k in call.keywords}
    name = call.args[0] if len(call.args) == 1 else None
    schema = keywords.get("schema")
    if (
        not isinstance(name, ast.Constant)
        or not isinstance(name.value, str)
        or not isinstance(schema, ast.Name)
        or set(keywords) - {"schema", "objective"}
    ):
        raise LlmlabError(
            f"{where}: write @register_runner('<name>', schema=<llmlab.config class>, objective=(metric, direction))"
        )
    cls = getattr(config, schema.id, None)
    if not (isinstance(cls, type) and issubclass(cls, config.MethodConfig)):
        raise LlmlabError(f"{where}: schema {schema.id} is not a MethodConfig of llmlab.config")
    try:
        objective = ast.literal_eval(keywords["objective"]) if "objective" in keywords else None
    except ValueError:
        raise LlmlabError(f"{where}: the objective must be a literal (metric, direction)") from None
    return RunnerEntry(name.value, target, cls, _objective(objective, where))


def _objective(objective: Any, where: str) -> Objective | None:
    """`objective` as a (metric or None, direction) tuple; anything else is an error."""
    if objective is None:
        return None
    pair = tuple(objective) if isinstance(objective, tuple | list) else ()
    if len(pair) != 2 or not (pair[0] is None or isinstance(pair[0], str)) or pair[1] not in DIRECTIONS:
        raise LlmlabError(f"{where}: objective must be (metric or None, {' or '.join(DIRECTIONS)}), got {objective!r}")
    return pair


RUNNERS: dict[str, RunnerEntry] = scan(Path(__file__).parent / "runners", "llmlab.runners")


def register_runner(
    name: str, *, schema: type[config.MethodConfig], objective: Objective | None = None
) -> Callable[[Runner], Runner]:
    """Mark `run` as the runner `name`, whose method config follows `schema` and whose sweep objective (if any) is
    (metric, "minimize" | "maximize"). The entry itself comes from the source index (see the module docstring); this
    checks, when the runner module is imported, that the decorator says what the index read."""

    def check(fn: Runner) -> Runner:
        target = f"{fn.__module__}:{fn.__qualname__}"
        stated = RunnerEntry(name, target, schema, _objective(objective, target))
        indexed = RUNNERS.get(name)
        if indexed is None:
            raise LlmlabError(f"runner '{name}' ({target}) is not in the index: runners live in llmlab/runners/*.py")
        if indexed.target != target:
            raise LlmlabError(f"runner '{name}' ({target}) is already registered by {indexed.target}")
        if stated != indexed:
            raise LlmlabError(
                f"runner '{name}' ({target}): the decorator states schema={schema.__name__}, objective={objective}, "
                f"the source index read schema={indexed.schema.__name__}, objective={indexed.objective}"
            )
        return fn

    return check


def get_runner(name: str) -> Runner:
    """The runner function for `name`; an unknown name lists the registered ones."""
    if name not in RUNNERS:
        close = difflib.get_close_matches(name, RUNNERS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LlmlabError(f"unknown runner '{name}'{hint}; registered runners: {', '.join(sorted(RUNNERS))}")
    module, _, attr = RUNNERS[name].target.partition(":")
    return getattr(importlib.import_module(module), attr)


_STORED: tuple | None = None  # what register_schemas last stored


def register_schemas() -> None:
    """Fill Hydra's ConfigStore, once per process before composing: the root schema (`conf/config.yaml` lists it
    first) through which the groups are typed, each dataset source's schema as `schema/dataset/<source>` and each
    runner's as `schema/method/<name>` (the YAMLs list them), and the `${safe_name:...}` resolver."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from llmlab.paths import safe_name

    store = ConfigStore.instance()
    global _STORED
    stored = (config.RootConfig, tuple(config.DATASET_SOURCES.items()), tuple(RUNNERS.items()))
    if stored == _STORED:  # the store already holds these schemas: storing them again costs ~0.2 s per compose
        return
    store.store(name="root_schema", node=config.RootConfig)
    for source, entry in config.DATASET_SOURCES.items():
        store.store(group="schema/dataset", name=source, node=entry.schema(source=source))
    for name, entry in RUNNERS.items():
        store.store(group="schema/method", name=name, node=entry.schema(runner=name))
    # `${safe_name:...}`: a config value used as a directory name (the run directory's runner part) cannot leave it
    if not OmegaConf.has_resolver("safe_name"):
        OmegaConf.register_new_resolver("safe_name", lambda name: safe_name(name, "run directory name part"))
    _STORED = stored
