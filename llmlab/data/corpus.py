"""Text corpora for pretraining: documents, a tokenizer, and token streams split into train and held-out parts.

Sources (`dataset.source`):
- `corpus_stdlib`: the pydoc topics that ship with CPython (`pydoc_data.topics`), one document per topic; offline.
- `corpus_files`: local text files from globs (`dataset.files`), one document per file; relative paths are resolved
  against the current directory, then against the repository root.
- `corpus_hub`: a Hugging Face dataset (`dataset.hub_id`/`hub_config`), its own train and held-out splits.

Local documents are split by document: a `val_fraction` share of them (seeded by `dataset.split_seed`, at least one)
is held out; a single document is split at its tail instead. Documents are joined by a blank line. Tokenizers: `byte`
(the UTF-8 bytes, vocabulary 256) or `bpe`, a byte-level BPE trained on the training text with `tokenizers` and cached
in `<cache_dir>/tokenizers/` under a hash of that text and the vocabulary size.
Training sequences are packed blocks of `block_size + 1` tokens (inputs and shifted targets) starting every
`block_size` tokens; `train_batch` picks them in a seeded per-epoch order, a pure function of the step (exact resume).
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmlab.config import CorpusDatasetConfig
from llmlab.data.sources import loader
from llmlab.errors import LlmlabError
from llmlab.io import atomic_write
from llmlab.paths import REPO_ROOT

SEPARATOR = "\n\n"


@dataclass
class Corpus:
    name: str
    tokenizer: str  # byte | bpe
    vocab_size: int
    train: torch.Tensor  # 1-D int64 token stream
    val: torch.Tensor
    val_bytes_per_token: float  # UTF-8 bytes of held-out text per token (bits per byte = nats / ln 2 / this)
    tokenizer_file: Path | None = None  # bpe: the cached tokenizer.json

    def blocks(self, split: str, length: int) -> torch.Tensor:
        """Non-overlapping sequences of `length + 1` tokens (the last one is the next block's first), (n, length+1)."""
        return packed_blocks(self.train if split == "train" else self.val, length)


def load_corpus(cfg: CorpusDatasetConfig, cache_dir: str | Path) -> Corpus:
    """Read, split and tokenize the corpus of `cfg`; errors are one-line `LlmlabError`s."""
    read = loader(cfg, "corpus")  # its source's reader of (training, held-out) documents; first: another family's
    # dataset has no corpus fields
    if cfg.block_size < 1:
        raise LlmlabError(f"dataset.block_size must be >= 1, got {cfg.block_size}")
    if not 0 < cfg.val_fraction < 1:
        raise LlmlabError(f"dataset.val_fraction must be in (0, 1), got {cfg.val_fraction}")
    train_docs, val_docs = read(cfg)
    train_text, val_text = SEPARATOR.join(train_docs), SEPARATOR.join(val_docs)
    if cfg.tokenizer == "byte":
        encode, vocab, tok_file = encode_bytes, 256, None
    elif cfg.tokenizer == "bpe":
        tok_file = train_bpe(train_text, cfg.vocab_size, Path(cache_dir).expanduser() / "tokenizers")
        encode, vocab = bpe_encoder(tok_file)
    else:
        raise LlmlabError(f"unknown dataset.tokenizer '{cfg.tokenizer}'; choose byte or bpe")
    train, val = encode(train_text), encode(val_text)
    need = cfg.block_size + 1
    for split, ids in (("training", train), ("held-out", val)):
        if len(ids) < need:
            raise LlmlabError(
                f"corpus '{cfg.name}': the {split} split has {len(ids)} tokens, fewer than "
                f"block_size + 1 = {need}; use more text or a smaller dataset.block_size"
            )
    return Corpus(cfg.name, cfg.tokenizer, vocab, train, val, len(val_text.encode()) / len(val), tok_file)


def read_stdlib(cfg: CorpusDatasetConfig) -> tuple[list[str], list[str]]:
    """The pydoc topics, one document per topic."""
    from pydoc_data.topics import topics

    return split_local(cfg, [topics[k] for k in sorted(topics)])


def read_file_corpus(cfg: CorpusDatasetConfig) -> tuple[list[str], list[str]]:
    """The files matching `dataset.files`, one document per file."""
    return split_local(cfg, read_files(cfg.name, list(cfg.files)))


def split_local(cfg: CorpusDatasetConfig, docs: list[str]) -> tuple[list[str], list[str]]:
    """Local documents, non-empty and cut at `max_chars`, split by `val_fraction` and `split_seed`."""
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise LlmlabError(f"corpus '{cfg.name}' is empty")
    if cfg.max_chars:
        docs = truncate(docs, cfg.max_chars)
    return split_documents(docs, cfg.val_fraction, cfg.split_seed)


def match_files(pattern: str) -> list[str]:
    """The files matching `pattern`, sorted; a relative pattern that matches nothing from the current directory is
    tried from the repository root (so `dataset=corpus/shakespeare` works from anywhere in an editable install)."""
    path = Path(pattern).expanduser()
    for base in [Path.cwd()] if path.is_absolute() else [Path.cwd(), REPO_ROOT]:
        found = [p for p in sorted(glob.glob(str(base / path), recursive=True)) if Path(p).is_file()]
        if found:
            return found
    return []


def read_files(name: str, patterns: list[str]) -> list[str]:
    """The text of every file matching `patterns` (sorted, each file once)."""
    if not patterns:
        raise LlmlabError(f"corpus '{name}': source=corpus_files needs dataset.files=[<glob>, ...]")
    paths: list[str] = []
    for pattern in patterns:
        found = match_files(pattern)
        if not found:
            where = Path(pattern).expanduser().resolve()
            also = "" if Path(pattern).expanduser().is_absolute() else f" and {REPO_ROOT / pattern}"
            raise LlmlabError(f"corpus '{name}': no files match '{pattern}' (looked for {where}{also})")
        paths += [p for p in found if p not in paths]
    texts = []
    for p in paths:
        try:
            with open(p, "rb") as fh:
                head = fh.read(1024)
            if not looks_like_text(head):
                raise LlmlabError(
                    f"corpus '{name}': {p} is not a text file (NUL bytes or invalid UTF-8 in its first "
                    "KB); narrow dataset.files"
                )
            texts.append(Path(p).read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
            raise LlmlabError(f"corpus '{name}': cannot read {p}: {e.strerror or e}") from e
    return texts


def looks_like_text(head: bytes) -> bool:
    """Whether `head` (a file's first bytes) is UTF-8 text without NUL bytes; a character cut at its end is fine."""
    if b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def truncate(docs: list[str], max_chars: int) -> list[str]:
    out, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        out.append(d[: max_chars - total])
        total += len(out[-1])
    return out


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out a seeded `val_fraction` of the documents (at least one), or the tail of a single document."""
    if len(docs) == 1:
        text = docs[0]
        cut = len(text) - max(1, int(len(text) * val_fraction))
        return [text[:cut]], [text[cut:]]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    held = set(order[:n_val])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def read_hub(cfg: CorpusDatasetConfig) -> tuple[list[str], list[str]]:
    """The train and held-out splits of a hub dataset; a one-line error when it is neither cached nor reachable."""
    if not cfg.hub_id:
        raise LlmlabError(f"corpus '{cfg.name}': source=corpus_hub needs dataset.hub_id")
    if len(cfg.hub_splits) != 2:
        raise LlmlabError(f"corpus '{cfg.name}': dataset.hub_splits must name two splits [train, held-out]")
    import datasets

    datasets.disable_progress_bars()
    out = []
    for split in cfg.hub_splits:
        try:
            ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split)
        except Exception as e:  # offline, not cached, unknown id or split: the library raises many kinds
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LlmlabError(
                f"corpus '{cfg.name}': cannot load {cfg.hub_id} ({split}) from the Hugging Face hub "
                f"(offline and not cached?): {first}"
            ) from None
        if cfg.text_field not in ds.column_names:
            raise LlmlabError(
                f"corpus '{cfg.name}': no column '{cfg.text_field}' in {cfg.hub_id}; it has "
                f"{', '.join(ds.column_names)} (set dataset.text_field)"
            )
        docs = [t for t in ds[cfg.text_field] if t and t.strip()]
        out.append(truncate(docs, cfg.max_chars) if cfg.max_chars else docs)
    if not out[0] or not out[1]:
        raise LlmlabError(f"corpus '{cfg.name}': {cfg.hub_id} has an empty split")
    return out[0], out[1]


def encode_bytes(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))


def train_bpe(text: str, vocab_size: int, cache: Path) -> Path:
    """A byte-level BPE tokenizer of `vocab_size` trained on `text`, cached under a hash of both."""
    if vocab_size <= 256:
        raise LlmlabError(f"dataset.vocab_size must be > 256 for a BPE tokenizer, got {vocab_size}")
    key = hashlib.sha256(f"bpe-v1|{vocab_size}|".encode() + text.encode()).hexdigest()[:16]
    path = cache / f"bpe-{vocab_size}-{key}.json"
    if path.is_file():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(chunks(text), trainer=trainer)
    atomic_write(path, tok.to_str())
    return path


def chunks(text: str, size: int = 1 << 16):
    for i in range(0, len(text), size):
        yield text[i : i + size]


def bpe_encoder(path: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))

    def encode(text: str) -> torch.Tensor:
        pieces = tok.encode_batch(list(chunks_at_lines(text)))
        return torch.tensor([i for enc in pieces for i in enc.ids], dtype=torch.int64)

    return encode, tok.get_vocab_size()


def chunks_at_lines(text: str, size: int = 1 << 16):
    """Pieces of about `size` characters cut after a newline, so BPE words are not split at the cuts."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def packed_blocks(ids: torch.Tensor, length: int) -> torch.Tensor:
    n = (len(ids) - 1) // length
    if n < 1:
        raise LlmlabError(f"{len(ids)} tokens are too few for one sequence of {length} + 1")
    return ids[: n * length + 1].unfold(0, length + 1, length)


def train_batch(blocks: torch.Tensor, seed: int, first: int, count: int) -> torch.Tensor:
    """Blocks at sample positions first..first+count-1 of an endless stream of seeded per-epoch permutations."""
    n = len(blocks)
    rows, perms = [], {}
    for pos in range(first, first + count):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        rows.append(perms[epoch][i])
    return blocks[torch.stack(rows)]


def eval_blocks(blocks: torch.Tensor, limit: int) -> torch.Tensor:
    """At most `limit` held-out blocks (0: all), evenly spaced over the split."""
    if not limit or limit >= len(blocks):
        return blocks
    return blocks[torch.linspace(0, len(blocks) - 1, limit).round().long()]


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    return loss_nats / math.log(2) / bytes_per_token
