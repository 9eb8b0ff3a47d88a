"""MRE data for the runners: synthetic (`source=mre_synth`), a user's local files (`mre_file`) or the MMM English
files on the Hugging Face Hub (`mre_hub`, for users who can reach it; never needed by the tests).

Files hold OIELLM (input, output) pairs: a JSON array or JSON lines of `{"input", "output"}` objects, or a CSV with
`input,output` columns. Bad lines stop the load with `file:line: what is wrong`; with `dataset.options.on_error=skip`
they are skipped instead, and every skipped line is counted and listed in the run's results.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.config import MreDatasetConfig, MreFileDatasetConfig, MreSynthDatasetConfig
from llmlab.data.mre.format import FormatError, parse_pair
from llmlab.data.mre.synthetic import DEFAULTS, SUBSETS, generate, split_sha256
from llmlab.data.sources import loader
from llmlab.errors import LlmlabError

TOPIC_SUBSETS = ("scnm", "tcree")
# MMM English files (spec 1.2), matched by prefix because the test file names are not all known exactly.
MMM_TRAIN_REPO, MMM_TEST_REPO = "ganchengguang/MMM-dataset-Trainset", "ganchengguang/MMM-datasets-Testset"
MMM_INDEX = {"scnm": 0, "scpos_rw": 1, "scpos_adjn": 2, "scpos_n": 3, "scpos_adj": 4, "tcree": 5}
FILE_OPTIONS = {"on_error", "condition"}
CONDITION_KEY = "condition"  # the fine-tuning ablation arm (llmlab.data.mre.ablation), read there


@dataclass
class MreData:
    name: str
    subset: str  # scnm | scpos_* | tcree (selects prompt wording)
    task: str  # OIELLM task word
    labels: list[str]  # TL labels seen in training, sorted
    train: list[dict]
    test: list[dict]
    dev: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" per skipped line
    manifest: dict = field(default_factory=dict)  # split -> sha256 (synthetic) or file path

    @property
    def kind(self) -> str:
        return "topic" if self.subset in TOPIC_SUBSETS else "sentiment"

    def demos(self, rng, per_class: int) -> list[dict]:
        """`per_class` training rows of every text-level label, drawn with `rng`, then shuffled together."""
        demos = []
        for label in self.labels:
            pool = [r for r in self.train if r["tl"] == label]
            if len(pool) < per_class:
                raise LlmlabError(
                    f"dataset '{self.name}': {per_class} demonstrations per class but only {len(pool)} "
                    f"training rows of label {label!r}"
                )
            demos += rng.sample(pool, per_class)
        rng.shuffle(demos)
        return demos


def load_mre(cfg: MreDatasetConfig, seed: int) -> MreData:
    """The MRE data of `cfg`, read by the loader of its source."""
    return loader(cfg, "mre")(cfg, seed)


def _subset(cfg: MreDatasetConfig) -> str:
    if cfg.task not in SUBSETS:
        raise LlmlabError(f"dataset '{cfg.name}': dataset.task must be one of {', '.join(SUBSETS)}, got {cfg.task!r}")
    return cfg.task


def synthetic_data(cfg: MreSynthDatasetConfig, seed: int) -> MreData:
    """A seeded synthetic set: train / dev / test of n_train_ft / n_icl_pool / n_test rows."""
    subset = _subset(cfg)
    opts = dict(cfg.options)
    opts.pop(CONDITION_KEY, None)
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise LlmlabError(f"dataset '{cfg.name}': unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    for key, value in opts.items():  # the generator trusts their types
        flag = isinstance(DEFAULTS[key], bool)
        ok = (
            isinstance(value, bool)
            if flag
            else isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
        )
        if not ok:
            kind = "true or false" if flag else "a number in [0, 1]"
            raise LlmlabError(f"dataset '{cfg.name}': options.{key} must be {kind}, got {value!r}")
    splits = {
        s: generate(subset, s, n, seed, **opts)
        for s, n in (("train", cfg.n_train_ft), ("dev", cfg.n_icl_pool), ("test", cfg.n_test))
    }
    if not splits["train"] or not splits["test"]:
        raise LlmlabError(f"dataset '{cfg.name}': n_train_ft and n_test must be > 0")
    task, labels, _ = SUBSETS[subset]
    return MreData(
        cfg.name,
        subset,
        task,
        sorted(labels),
        splits["train"],
        splits["test"],
        splits["dev"],
        manifest={s: split_sha256(r) for s, r in splits.items()},
    )


def read_records(path: str | Path, skip: bool = False) -> tuple[list[dict], list[str]]:
    """Rows of an OIELLM file and the `file:line: reason` of each skipped line (only with `skip`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LlmlabError(f"MRE data file {path} does not exist")
    rows, skipped = [], []
    for line, obj in _raw_objects(path):
        try:
            if (
                not isinstance(obj, dict)
                or not isinstance(obj.get("input"), str)
                or not isinstance(obj.get("output"), str)
            ):
                raise FormatError("expected an object with string fields 'input' and 'output'")
            rows.append(parse_pair(obj["input"], obj["output"], id=f"{path.name}:{line}").as_row())
            rows[-1]["line"] = line
        except FormatError as e:
            if not skip:
                raise LlmlabError(f"{path}:{line}: {e}") from None
            skipped.append(f"{path}:{line}: {e}")
    if not rows:
        raise LlmlabError(f"{path}: no MRE records (empty file{' or every line skipped' if skipped else ''})")
    return rows, skipped


def _raw_objects(path: Path):
    """(line number, parsed object) for JSON arrays, JSON lines and CSV files."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise LlmlabError(f"{path}:{line}: not valid UTF-8") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {"input", "output"} <= set(reader.fieldnames):
            raise LlmlabError(f"{path}:1: CSV header must have 'input' and 'output' columns")
        for row in reader:
            yield reader.line_num, row
        return
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array: decode object by object to know each one's line
        decoder, pos = json.JSONDecoder(), text.index("[") + 1
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                raise LlmlabError(f"{path}:{text.count(chr(10)) + 1}: unterminated JSON array")
            if text[pos] == "]":
                return
            line = text.count("\n", 0, pos) + 1
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise LlmlabError(f"{path}:{line}: invalid JSON ({e.msg})") from None
            yield line, obj
    for line, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            try:
                yield line, json.loads(raw)
            except json.JSONDecodeError as e:
                raise LlmlabError(f"{path}:{line}: invalid JSON ({e.msg})") from None


def _subsample(rows: list[dict], n: int) -> list[dict]:
    """The first `n` rows in sha256(input) order: deterministic and independent of file order."""
    return sorted(rows, key=lambda r: hashlib.sha256(r["input"].encode()).hexdigest())[:n]


def _from_files(cfg: MreDatasetConfig, test_path: str | Path, train_path: str | Path, subset: str) -> MreData:
    opts = dict(cfg.options)
    if set(opts) - FILE_OPTIONS or opts.get("on_error", "raise") not in ("raise", "skip"):
        raise LlmlabError(f"dataset '{cfg.name}': file options are on_error: raise|skip, got {opts}")
    skip = opts.get("on_error", "raise") == "skip"
    train, skipped_train = read_records(train_path, skip)
    test, skipped_test = read_records(test_path, skip)
    tasks = {r["task"] for r in train + test}
    if len(tasks) > 1:
        raise LlmlabError(f"{test_path}: mixed task words {sorted(tasks)}; one MRE subset per dataset")
    labels = sorted({r["tl"] for r in train})
    for r in test:
        if r["tl"] not in labels:
            raise LlmlabError(
                f"{test_path}:{r['line']}: test label {r['tl']!r} does not occur in the training data "
                f"{train_path} (labels: {', '.join(labels)})"
            )
    return MreData(
        cfg.name,
        subset,
        tasks.pop(),
        labels,
        _subsample(train, cfg.n_train_ft),
        _subsample(test, cfg.n_test),
        skipped=skipped_train + skipped_test,
        manifest={"train": str(train_path), "test": str(test_path)},
    )


def file_data(cfg: MreFileDatasetConfig, seed: int) -> MreData:
    """A user's files (`seed` is unused: the rows are fixed)."""
    if not cfg.path or not cfg.pool_path:
        raise LlmlabError(
            f"dataset '{cfg.name}': source=mre_file needs dataset.path=<test file> and "
            "dataset.pool_path=<training file> (JSON, JSONL or CSV with input/output)"
        )
    return _from_files(cfg, cfg.path, cfg.pool_path, _subset(cfg))


def hub_data(cfg: MreDatasetConfig, seed: int) -> MreData:
    """The MMM English files of the Hub (`seed` is unused: the rows are fixed)."""
    subset = _subset(cfg)
    k = MMM_INDEX[subset]
    try:
        from huggingface_hub import hf_hub_download, list_repo_files

        paths = []
        for repo, prefix in ((MMM_TEST_REPO, f"test_En_{k}_"), (MMM_TRAIN_REPO, f"Train_En_{k}_")):
            names = [f for f in list_repo_files(repo, repo_type="dataset") if f.startswith(prefix)]
            if not names:
                raise LlmlabError(f"dataset '{cfg.name}': no file {prefix}*.json in {repo}")
            paths.append(hf_hub_download(repo, sorted(names)[0], repo_type="dataset"))
    except LlmlabError:
        raise
    except Exception as e:  # offline, hub errors: one line, with the offline alternative
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LlmlabError(
            f"dataset '{cfg.name}': cannot fetch MMM files from the Hub ({first}); download them and "
            "use dataset=mre/file dataset.path=<test.json> dataset.pool_path=<train.json>"
        ) from None
    return _from_files(cfg, paths[0], paths[1], subset)
