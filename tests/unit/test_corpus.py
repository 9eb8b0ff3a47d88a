"""Pretraining corpora: reading, the held-out split, byte and BPE tokenizers (cached), packing, bad input."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from llmlab.config import CorpusDatasetConfig, ImplicitDatasetConfig
from llmlab.data import corpus as C
from llmlab.errors import LlmlabError
from tests.helpers import SHARED, compose

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "jolly",
    "bumpkins",
]


def write_docs(root, n=10, words=300):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words))
        (root / f"doc{i:02d}.txt").write_text(f"Document {i}.\n{text}\n")
    return root


def dataset(**kw):
    return OmegaConf.structured(
        CorpusDatasetConfig(**{"name": "test", "source": "corpus_files", "block_size": 16, **kw})
    )


def test_files_are_split_by_document_deterministically(tmp_path):
    root = write_docs(tmp_path / "docs")
    cfg = dataset(files=[str(root / "*.txt")], val_fraction=0.2)
    train, val = C.read_file_corpus(cfg)
    assert len(train) == 8 and len(val) == 2 and not set(train) & set(val)
    assert C.read_file_corpus(cfg) == (train, val)
    other = {
        C.read_file_corpus(dataset(files=[str(root / "*.txt")], val_fraction=0.2, split_seed=s))[1][0]
        for s in range(1, 6)
    }
    assert len(other) > 1  # the split seed picks the held-out documents


def test_byte_corpus_packs_shifted_blocks(tmp_path, monkeypatch):
    write_docs(tmp_path / "docs", n=4)
    monkeypatch.chdir(tmp_path)  # relative globs resolve against the current directory
    corpus = C.load_corpus(dataset(files=["docs/*.txt"], val_fraction=0.25), tmp_path / "cache")
    assert corpus.vocab_size == 256 and corpus.val_bytes_per_token == 1.0
    blocks = corpus.blocks("train", 16)
    assert blocks.shape[1] == 17 and torch.equal(blocks[0, -1], blocks[1, 0])
    assert torch.equal(blocks.flatten()[:17], corpus.train[:17])
    batch = C.train_batch(blocks, seed=3, first=0, count=len(blocks))  # one epoch: every block once
    assert sorted(batch[:, 0].tolist()) == sorted(blocks[:, 0].tolist())
    assert torch.equal(C.train_batch(blocks, 3, 5, 4), batch[5:9])
    assert not torch.equal(C.train_batch(blocks, 4, 0, 8), batch[:8])


def test_a_single_document_is_split_at_its_tail(tmp_path):
    (tmp_path / "one.txt").write_text("abcdefghij" * 100)
    train, val = C.read_file_corpus(dataset(files=[str(tmp_path / "one.txt")], val_fraction=0.1))
    assert len(val[0]) == 100 and train[0] + val[0] == "abcdefghij" * 100


def test_the_stdlib_corpus_needs_no_files(tmp_path):
    corpus = C.load_corpus(dataset(source="corpus_stdlib", val_fraction=0.1), tmp_path)
    assert len(corpus.train) > 300_000 and len(corpus.val) > 10_000


def test_bpe_is_trained_once_and_cached(tmp_path, monkeypatch):
    root = write_docs(tmp_path / "docs")
    cfg = dataset(files=[str(root / "*.txt")], tokenizer="bpe", vocab_size=300)
    corpus = C.load_corpus(cfg, tmp_path / "cache")
    assert corpus.tokenizer_file.parent == tmp_path / "cache" / "tokenizers"
    assert 256 < corpus.vocab_size <= 300 and corpus.val_bytes_per_token > 1.5  # merges shorten the text
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(corpus.tokenizer_file))
    assert tok.decode(corpus.val.tolist()) == C.SEPARATOR.join(C.read_file_corpus(cfg)[1])

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr("tokenizers.Tokenizer.train_from_iterator", no_training)
    again = C.load_corpus(cfg, tmp_path / "cache")
    assert again.tokenizer_file == corpus.tokenizer_file and torch.equal(again.train, corpus.train)
    assert [p.name for p in (tmp_path / "cache" / "tokenizers").iterdir()] == [corpus.tokenizer_file.name]


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"files": ["/nonexistent/dir/*.txt"]}, "no files match"),
        ({"files": []}, "needs dataset.files"),
        ({"block_size": 100_000}, "fewer than block_size"),
        ({"tokenizer": "words"}, "unknown dataset.tokenizer"),
        ({"source": "corpus_hub", "hub_id": "nobody/no-such-corpus"}, "cannot load nobody/no-such-corpus"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, kw, needle):
    root = write_docs(tmp_path / "docs", n=3, words=50)
    cfg = dataset(**{"files": [str(root / "*.txt")], **kw})
    with pytest.raises(LlmlabError, match=needle) as info:
        C.load_corpus(cfg, tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_a_dataset_of_another_family_is_no_corpus(tmp_path):
    cfg = OmegaConf.structured(ImplicitDatasetConfig(name="implicit/bool", source="implicit", task="bool"))
    with pytest.raises(LlmlabError, match=r"^dataset 'implicit/bool' \(source implicit\) is no corpus dataset; use "):
        C.load_corpus(cfg, tmp_path)


def test_an_empty_corpus_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(LlmlabError, match="is empty"):
        C.load_corpus(dataset(files=[str(tmp_path / "empty.txt")]), tmp_path)


def test_relative_corpus_globs_fall_back_to_the_repository_root(tmp_path, monkeypatch):
    from llmlab.data.corpus import match_files
    from llmlab.paths import REPO_ROOT

    monkeypatch.chdir(tmp_path)  # not the repository root
    found = match_files("conf/dataset/corpus/*.yaml")
    assert found and all(p.startswith(str(REPO_ROOT)) for p in found)
    (tmp_path / "conf" / "dataset" / "corpus").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "corpus" / "own.yaml").write_text("x")
    assert match_files("conf/dataset/corpus/*.yaml") == [str(tmp_path / "conf/dataset/corpus/own.yaml")]  # cwd first


@pytest.mark.skipif(not (SHARED / "data" / "corpus" / "shakespeare").is_dir(), reason="no ../shared corpus here")
def test_the_shakespeare_corpus_loads_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose(["dataset=corpus/shakespeare", "dataset.max_chars=20000"]).dataset
    corpus = C.load_corpus(cfg, tmp_path / "cache")
    assert len(corpus.train) > 1000
