"""One source of truth for config values: what a group states survives composition."""

from __future__ import annotations

import importlib

import pytest
import yaml

from tests.helpers import REPO, compose

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_an_experiments_tags_survive_composition(experiment):
    stated = yaml.safe_load((REPO / "conf" / "experiment" / f"{experiment}.yaml").read_text())["tags"]
    cfg = compose([f"experiment={experiment}"])
    assert list(cfg.tags) == stated and stated


# ---- the schema is the source of defaults and choices (issue 18) ----------------------------------------------------

# The schema of each group whose options are checked (a method option's is its runner's, a dataset option's its
# source's).
GROUP_SCHEMAS = {
    "model": "ModelConfig",
    "logger": "LoggerConfig",
    "hardware": "HardwareConfig",
}
REQUIRED = {"method/lm_metrics": ["method.model_dir=/nonexistent/model"]}  # `???` values the option leaves to the user


def options(group: str) -> list[str]:
    root = REPO / "conf" / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def schema_defaults(schema: type) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)


def dataset_defaults(source: str) -> dict:
    """The defaults of a dataset of `source`: its schema as `schema/dataset/<source>` stores it (source set)."""
    from llmlab.config import DATASET_SCHEMAS

    return schema_defaults(DATASET_SCHEMAS[source](source=source))


def stated_leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf a YAML file states; lists are leaves."""
    if not isinstance(node, dict) or not node:
        yield prefix[:-1], node
        return
    for key, value in node.items():
        yield from stated_leaves(value, f"{prefix}{key}.")


def lookup(node, key: str):
    """The value at dotted `key`, or KeyError when a part is absent (a free dict's own keys)."""
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("model", "dataset", "method", "logger", "hardware", "experiment") for o in options(g)],
)
def test_every_option_composes_resolved_and_states_only_what_differs_from_its_schema(group, option):
    from omegaconf import OmegaConf

    from llmlab import config
    from llmlab.registry import RUNNERS

    cfg = compose([f"{group}={option}", *REQUIRED.get(f"{group}/{option}", [])])
    config.validate_config(cfg)
    composed = {
        key: OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
        for key in ("model", "dataset", "method", "logger", "hardware", "tags")
    }
    defaults = {
        **schema_defaults(config.RootConfig),
        "method": schema_defaults(RUNNERS[cfg.method.runner].schema),
        "dataset": dataset_defaults(cfg.dataset.source),
        **{g: schema_defaults(getattr(config, name)) for g, name in GROUP_SCHEMAS.items()},
    }
    stated = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / group / f"{option}.yaml"), resolve=False)
    stated.pop("defaults", None)
    if group == "experiment":
        stated.pop("hydra", None)
    else:
        stated = {group: stated}
    for key, value in stated_leaves(stated):
        if key == group:
            continue  # the file states nothing but its defaults list
        try:
            default = lookup(defaults, key)
        except KeyError:
            default = KeyError  # a key of a free dict (dataset.options): nothing to repeat
        assert value != default, f"conf/{group}/{option}.yaml: {key} repeats the schema default"
        if not (isinstance(value, str) and "${" in value):
            assert lookup(composed, key) == value, f"{key} does not survive composition"


def first_option_of_each_dataset_schema() -> dict[type, str]:
    """One conf/dataset option per source schema (the first in name order)."""
    import yaml

    from llmlab.config import DATASET_SCHEMAS

    out: dict[type, str] = {}
    for option in options("dataset"):
        (schema,) = yaml.safe_load((REPO / "conf" / "dataset" / f"{option}.yaml").read_text())["defaults"][:-1]
        out.setdefault(DATASET_SCHEMAS[schema.removeprefix("/schema/dataset/").removesuffix("@_here_")], option)
    return out


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_option_composes_against_the_schema_of_its_source(option):
    from omegaconf import OmegaConf

    from llmlab.config import DATASET_SCHEMAS

    stated = yaml.safe_load((REPO / "conf" / "dataset" / f"{option}.yaml").read_text())
    assert stated["defaults"][-1] == "_self_" and "source" not in stated  # the schema's entry sets the source
    dataset = compose([f"dataset={option}"]).dataset
    assert stated["defaults"][0] == f"/schema/dataset/{dataset.source}@_here_"
    assert OmegaConf.get_type(dataset) is DATASET_SCHEMAS[dataset.source]


def test_every_dataset_schema_is_composed_by_an_option():
    from llmlab.config import DATASET_SCHEMAS

    assert set(first_option_of_each_dataset_schema()) == set(DATASET_SCHEMAS.values())


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["+dataset.nope=1"], "Key 'nope' not in 'ImplicitDatasetConfig' (key: dataset.nope)"),
        (["+dataset.block_size=32"], "Key 'block_size' not in 'ImplicitDatasetConfig' (key: dataset.block_size)"),
        (["dataset=corpus/pydoc", "+dataset.task=bool"], "Key 'task' not in 'CorpusDatasetConfig' (key: dataset.task)"),
        (["dataset=mre/scnm", "+dataset.options.on_error=skip"], "Key 'on_error' not in 'MreSynthOptions'"),
        (["dataset=blocksworld/generated", "+dataset.options.check=false"], "Key 'check' not in 'GeneratedBlocks"),
        (["dataset.source=corpus_stdlib"], "Key 'variants' not in 'CorpusDatasetConfig' (key: dataset.variants)"),
        (["dataset.source=corpus"], "dataset.source must be one of implicit, file, corpus_stdlib, "),
    ],
)
def test_a_key_outside_the_schema_of_the_datasets_source_is_refused_in_one_line(overrides, needle):
    from llmlab import config
    from llmlab.errors import LlmlabError

    with pytest.raises(LlmlabError) as info:
        config.validate_config(compose(overrides))
    assert "\n" not in str(info.value) and str(info.value).startswith(needle), str(info.value)


def test_a_key_of_another_sources_schema_is_refused_when_composing():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="dataset.block_size"):
        compose(["dataset=implicit/bool", "dataset.block_size=32"])
    with pytest.raises(ConfigCompositionException, match="dataset.options.bool_variant"):
        compose(["dataset=mre/scnm", "dataset.options.bool_variant=random"])
    assert compose(["dataset=corpus/pydoc", "dataset.block_size=32"]).dataset.block_size == 32


def test_the_drifted_defaults_are_the_values_the_runs_used():
    cfg = compose(["method=icl_vs_ft"])
    assert list(cfg.method.arms.faithful.tasks) == ["expression", "relation", "bool", "algebra"]
    assert list(cfg.method.run_arms) == ["faithful", "answer_only", "lora", "epochs3", "epochs3_lr1e-4"]
    assert compose(["method=info_flow"]).method.limit == 100
    assert compose(["method=cot"]).method.draft.n_draft == compose(["method=mcts"]).method.draft.n_draft == 8
    assert list(compose(["method=mre_ablation"]).method.finetune.tasks) == []  # MRE rows, not the implicit mixture


def choice_keys(schema: type, prefix: str, composed) -> list[tuple[str, tuple[str, ...], bool, type]]:
    """(dotted key, choices, is a list, owning schema) of every choice field under `schema`, through nested dataclass
    fields and the entries of dict-of-dataclass fields (those `composed` holds)."""
    import dataclasses
    import typing

    from llmlab.config import _without_none

    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp = _without_none(hints[f.name])
        if "choices" in f.metadata:
            out.append((prefix + f.name, f.metadata["choices"], typing.get_origin(tp) is list, schema))
        elif dataclasses.is_dataclass(tp):
            out += choice_keys(tp, f"{prefix}{f.name}.", composed)
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            names = list(lookup(composed, prefix + f.name))
            assert names, f"{prefix}{f.name}: compose an option that fills it"
            out += choice_keys(typing.get_args(tp)[1], f"{prefix}{f.name}.{names[0]}.", composed)
    return out


def choice_cases() -> tuple[list[tuple[list[str], str, tuple[str, ...], bool, type]], dict]:
    """Every choice field of the root schema (its groups as composed by default), of every runner's schema and of
    every dataset source's schema, and the config composed for each list of overrides."""
    from omegaconf import OmegaConf

    from llmlab import config
    from llmlab.registry import RUNNERS

    cases, composed = [], {(): compose([])}
    data = OmegaConf.to_container(composed[()], resolve=False)
    for name, schema in [
        ("", config.RootConfig),
        *((f"{g}.", getattr(config, s)) for g, s in GROUP_SCHEMAS.items()),
    ]:
        cases += [([], *c) for c in choice_keys(schema, name, data)]
    for runner, entry in sorted(RUNNERS.items()):
        overrides = [f"method={runner}", *REQUIRED.get(f"method/{runner}", [])]
        composed[tuple(overrides)] = compose(overrides)
        data = {"method": OmegaConf.to_container(composed[tuple(overrides)].method, resolve=False)}
        cases += [(overrides, *c) for c in choice_keys(entry.schema, "method.", data)]
    for schema, option in first_option_of_each_dataset_schema().items():
        composed[(f"dataset={option}",)] = compose([f"dataset={option}"])
        data = {"dataset": OmegaConf.to_container(composed[(f"dataset={option}",)].dataset, resolve=False)}
        cases += [([f"dataset={option}"], *c) for c in choice_keys(schema, "dataset.", data)]
    return cases, composed


def test_every_choice_field_of_every_schema_is_refused_outside_its_choices():
    import copy
    import dataclasses

    from omegaconf import OmegaConf

    from llmlab import config
    from llmlab.errors import LlmlabError

    (cases, composed), checked = choice_cases(), set()
    for base in composed.values():
        config.validate_config(base)
    for overrides, key, choices, is_list, schema in cases:
        cfg = copy.deepcopy(composed[tuple(overrides)])
        OmegaConf.update(cfg, key, ["no_such_choice"] if is_list else "no_such_choice")
        with pytest.raises(LlmlabError) as info:
            config.validate_config(cfg)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{key} must be one of {', '.join(choices)}, got "), message
        checked.add(schema)
    with_choices = {
        obj
        for obj in vars(config).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and any("choices" in f.metadata for f in dataclasses.fields(obj))
    }
    unreached = {s for s in with_choices if not any(issubclass(c, s) for c in checked)}  # a base: via subclasses
    assert unreached == set(), "a schema with choice fields that no composed config reaches"
    assert len(cases) >= 50


# Text fields that are not a fixed choice: names, paths, ids, free labels (a new str field is one or the other).
FREE_TEXT = {
    "MethodConfig.runner",  # the runner registry's name, checked when the run starts (with the registered ones)
    "ModelConfig.name",
    "ModelConfig.hub_id",
    "ModelConfig.revision",
    "ModelConfig.path",
    "ModelConfig.package",
    "ModelConfig.module",
    "ModelConfig.gguf_file",
    "ModelConfig.adapter",
    "LMArch.gamma",  # alibi or a positive number
    "DatasetConfig.name",
    "DatasetConfig.source",  # the dataset source registry's name, checked against DATASET_SCHEMAS by validate_config
    "EvalDatasetConfig.variants",  # implicit: pattern, counter (checked by the loader); file: the rows' own
    "FileDatasetConfig.path",
    "FileDatasetConfig.pool_path",
    "FileDatasetConfig.header",
    "CorpusDatasetConfig.files",
    "CorpusDatasetConfig.hub_id",
    "CorpusDatasetConfig.hub_config",
    "CorpusDatasetConfig.hub_splits",
    "CorpusDatasetConfig.text_field",
    "BlocksworldDatasetConfig.path",
    "GeneratedBlocksworldDatasetConfig.path",
    "MreFileDatasetConfig.path",
    "MreFileDatasetConfig.pool_path",
    "HardwareConfig.name",
    "HardwareConfig.device",  # cuda:N
    "LoggerConfig.name",
    "LoggerConfig.project",
    "LoggerConfig.entity",
    "LoggerConfig.group",
    "LoggerConfig.tags",
    "RootConfig.cache_dir",
    "RootConfig.output_dir",
    "RootConfig.tags",
    "LoraSpec.target_modules",  # module names of the model
    "IclVsFtConfig.run_arms",  # keys of method.arms, checked by the runner
    "CircuitShiftConfig.finetuned",
    "LMMetricsConfig.model_dir",
    "DraftConfig.model",
    "AmateurConfig.model",
}


def test_every_text_field_is_a_choice_or_declared_free_text():
    import dataclasses
    import typing

    from llmlab import config

    undeclared = []
    for schema in [o for o in vars(config).values() if isinstance(o, type) and dataclasses.is_dataclass(o)]:
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            tp = config._without_none(hints[f.name])
            text = tp is str or (typing.get_origin(tp) is list and typing.get_args(tp) == (str,))
            declared = any(f"{c.__name__}.{f.name}" in FREE_TEXT for c in schema.__mro__)  # or in a base schema
            if text and "choices" not in f.metadata and not declared:
                undeclared.append(f"{schema.__name__}.{f.name}")
    assert undeclared == [], "make these choice(...) fields or add them to FREE_TEXT"


def test_the_modules_tables_offer_exactly_the_schemas_choices():
    from llmlab import config, distributed, hardware, scoring
    from llmlab.analysis import icl_vs_ft, patching
    from llmlab.config import choices_of
    from llmlab.data import implicit
    from llmlab.data.mre import ablation

    assert set(implicit.TASKS) == set(config.IMPLICIT_TASKS) == set(choices_of(config.FinetuneConfig, "tasks"))
    assert set(hardware.DTYPES) == set(config.DTYPES) == set(choices_of(config.HardwareConfig, "dtype")) - {"auto"}
    assert set(ablation.CONDITIONS) == set(choices_of(config.MreAblationConfig, "conditions"))
    assert set(patching.SCORERS) == set(choices_of(config.CircuitShiftConfig, "method"))
    assert set(icl_vs_ft.METRICS) == set(choices_of(config.IclVsFtConfig, "metric"))
    assert set(distributed.STRATEGIES) == set(choices_of(config.HardwareConfig, "strategy"))
    assert set(scoring.TRUNCATE) == set(choices_of(config.ICLConfig, "truncate"))
    assert set(choices_of(config.PositionProbeConfig, "arms")) == set(choices_of(config.LMArch, "attention"))
    from llmlab.blocksworld import data as blocksworld
    from llmlab.data import sources
    from llmlab.data.implicit import boolean
    from llmlab.data.mre import synthetic

    for source, entry in config.DATASET_SOURCES.items():  # every source loads through a real function of its family
        module, _, function = entry.loader.partition(":")
        assert callable(getattr(importlib.import_module(module), function)) and entry.family in sources.FAMILIES, source
    assert set(implicit.TASKS) == set(choices_of(config.ImplicitDatasetConfig, "task"))
    assert set(boolean.OPTIONS["bool_variant"]) == set(choices_of(config.ImplicitOptions, "bool_variant"))
    assert set(synthetic.SUBSETS) == set(config.MRE_SUBSETS) == set(choices_of(config.MreDatasetConfig, "task"))
    assert set(ablation.CONDITIONS) == set(choices_of(config.MreOptions, "condition"))
    for options in (config.BlocksworldOptions, config.GeneratedBlocksworldOptions):
        assert set(blocksworld.MODES) == set(choices_of(options, "mode"))
