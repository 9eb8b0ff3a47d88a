"""Batched scoring of prompts with a causal LM: candidate log-likelihoods and greedy continuations in one pass.

For each batch the context is run once (right-padded, without a mask, so attention stays causal); the logits at
each row's last context token give the first token of every candidate and of the greedy continuation. Longer
candidates are scored in a second, short forward on a copy of the context's KV cache, so a context is never recomputed
per candidate. A token prefix shared by all contexts (a fixed few-shot block) is computed once and its KV cache reused
by every batch. Only the logits that are needed are ever computed.

Every prompt plus its answer (the longer of `max_new_tokens` and the longest candidate) must fit the model's context
(`context_limit`): an over-long prompt is a one-line `LlmlabError` naming its item, raised before any forward, or with
`truncate="left"` is cut from the left to fit (`Scorer.fit`). A prompt longer than the context times the longest
vocabulary entry (in characters) is judged by its length alone, so a pathological one is never tokenised whole.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from llmlab.errors import LlmlabError

MIN_SHARED_PREFIX = 8  # tokens; a shorter common prefix is not worth a separate forward
TRUNCATE = ("none", "left")  # an over-long prompt: an error, or cut from the left
UNSET_MAX_LENGTH = 10**8  # a tokenizer's model_max_length at least this large is HF's "not set" placeholder


@dataclass
class Request:
    context: str
    candidates: Sequence[str] = ()  # continuations to score by log-likelihood
    max_new_tokens: int = 0  # greedy continuation length; 0 = no generation
    id: str = ""  # names the item in errors


@dataclass
class Scored:
    loglik: list[float] = field(default_factory=list)  # sum of log p(candidate tokens | context), per candidate
    first_logprob: list[float] = field(default_factory=list)  # log p(first candidate token | context), per candidate
    n_tokens: list[int] = field(default_factory=list)  # candidate lengths in tokens
    generated: str = ""  # greedy continuation (decoded, up to the first end-of-sequence token)
    context_tokens: int = 0


def context_limit(model, tokenizer, limit: int | None = None) -> int | None:
    """The most tokens (prompt + answer) the model takes: the smallest of its config's position limit, the
    tokenizer's `model_max_length` where set, and `limit`; None where none is known (a recurrent model)."""
    config = getattr(model, "config", None)
    known = [
        getattr(config, key, None)
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")
    ]
    known += [getattr(tokenizer, "model_max_length", None), limit]
    known = [n for n in known if isinstance(n, int) and not isinstance(n, bool) and 0 < n < UNSET_MAX_LENGTH]
    return min(known, default=None)


class Scorer:
    """Scores `Request`s with `model`; `batch_size` contexts per forward, longest first. Prompts that do not fit the
    context (`context_limit`, capped by `max_context`) raise, or with `truncate="left"` are cut from the left."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 8,
        reuse_prefix: bool = True,
        truncate: str = "none",
        max_context: int | None = None,
    ):
        if batch_size < 1:
            raise LlmlabError(f"batch size must be >= 1, got {batch_size}")
        if truncate not in TRUNCATE:
            raise LlmlabError(f"truncate must be one of {', '.join(TRUNCATE)}, got {truncate!r}")
        self.model, self.tok, self.batch_size, self.reuse_prefix = model, tokenizer, batch_size, reuse_prefix
        self.truncate, self.context_limit = truncate, context_limit(model, tokenizer, max_context)
        self.device = model.device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.stats = {"forward_tokens": 0, "prefix_tokens": 0}

    def encode(self, req: Request) -> tuple[list[int], list[list[int]]]:
        """Context ids and candidate ids: each candidate is what tokenizing context+candidate adds after the context."""
        ctx = self.tok(req.context, add_special_tokens=True).input_ids
        cands = []
        for cand in req.candidates:
            whole = self.tok(req.context + cand, add_special_tokens=True).input_ids
            cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else self.tok(cand, add_special_tokens=False).input_ids
            if not cont:
                raise ValueError(f"candidate {cand!r} adds no token to its context")
            cands.append(cont)
        return ctx, cands

    def fit(self, requests: Sequence[Request]) -> tuple[list[Request], int]:
        """`requests` with every prompt and its answer inside the context, and how many prompts were cut (only with
        `truncate="left"`; otherwise an over-long prompt raises). Call it on all prompts to fail before scoring."""
        fitted = [self._fit(r, i)[0] for i, r in enumerate(requests)]
        return fitted, sum(f is not r for f, r in zip(fitted, requests))

    @cached_property
    def _token_chars(self) -> int | None:
        """The longest vocabulary entry in characters: no token covers more text (None: vocabulary unknown)."""
        vocab = getattr(self.tok, "get_vocab", None)
        return max(max(map(len, vocab()), default=1), 1) if vocab is not None else None

    def _fit(self, req: Request, index: int) -> tuple[Request, list[int], list[list[int]]]:
        """`req` fitted to the context (itself when it fits) and its encoding."""
        limit = self.context_limit
        if limit is None:
            return (req, *self.encode(req))
        name, text = req.id or f"#{index}", req.context
        most = limit * self._token_chars if self._token_chars else None
        if most is not None and len(text) > most:  # too long whatever its tokens: never tokenise it whole
            if self.truncate == "none":
                raise LlmlabError(
                    f"prompt of item {name} is at least {len(text) // self._token_chars} tokens "
                    f"({len(text)} characters), longer than the model's context of {limit} tokens"
                )
            text = text[-most:]
        fitted = req if text is req.context else replace(req, context=text)
        ctx, cands = self.encode(fitted)
        room = max([req.max_new_tokens, *map(len, cands)])
        if len(ctx) + room <= limit:
            return fitted, ctx, cands
        if self.truncate == "none":
            raise LlmlabError(
                f"prompt of item {name} is {len(ctx)} tokens, which with its {room}-token answer is "
                f"longer than the model's context of {limit} tokens"
            )
        fitted = replace(req, context=self._cut_left(text, len(ctx), room, name))
        return (fitted, *self.encode(fitted))

    def _cut_left(self, text: str, n_tokens: int, room: int, name: str) -> str:
        """The longest suffix of `text` (searched on characters) whose tokens and `room` more fit the context."""
        limit = self.context_limit

        def fits(cut: int) -> bool:
            return len(self.tok(text[cut:], add_special_tokens=True).input_ids) + room <= limit

        if not fits(len(text)):
            raise LlmlabError(
                f"item {name}: its {room}-token answer leaves no room for a prompt in the model's "
                f"context of {limit} tokens"
            )
        lo, hi = 0, len(text)  # text[lo:] does not fit, text[hi:] fits
        guess = min(max(len(text) * (n_tokens + room - limit) // n_tokens, 1), len(text) - 1)
        step = max(len(text) // 256, 1)
        if fits(guess):  # gallop from the proportional guess towards the bracket's other end, then bisect
            hi = guess
            while hi - step > lo and fits(hi - step):
                hi, step = hi - step, step * 2
            lo = max(lo, hi - step)
        else:
            lo = guess
            while lo + step < hi and not fits(lo + step):
                lo, step = lo + step, step * 2
            hi = min(hi, lo + step)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid, hi)
        return text[hi:]

    @torch.inference_mode()
    def score(self, requests: Sequence[Request], on_batch: Callable[[int], None] | None = None) -> list[Scored]:
        """Each request scored; all are fitted to the context (see `fit`) before the first forward."""
        encoded = [self._fit(r, i)[1:] for i, r in enumerate(requests)]
        prefix, prefix_cache = self._shared_prefix([ctx for ctx, _ in encoded])
        order = sorted(range(len(requests)), key=lambda i: -len(encoded[i][0]))
        results: list[Scored | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [(encoded[i][0][len(prefix) :], encoded[i][1], requests[i].max_new_tokens) for i in idx]
            for i, res in zip(idx, self._score_batch(batch, len(prefix), prefix_cache)):
                res.context_tokens = len(encoded[i][0])
                results[i] = res
            if on_batch:
                on_batch(len(idx))
        return results  # type: ignore[return-value]

    def _shared_prefix(self, contexts: list[list[int]]) -> tuple[list[int], DynamicCache | None]:
        """The token prefix common to all contexts (leaving each at least one own token) and its KV cache."""
        if not self.reuse_prefix or len(contexts) < 2:
            return [], None
        lo, hi = min(contexts), max(contexts)
        n = 0
        while n < min(len(lo), len(hi)) and lo[n] == hi[n]:
            n += 1
        n = min(n, min(len(c) for c in contexts) - 1)
        if n < MIN_SHARED_PREFIX:
            return [], None
        ids = torch.tensor([contexts[0][:n]], device=self.device)
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self.stats["prefix_tokens"] += n
        self.stats["forward_tokens"] += n
        return contexts[0][:n], out.cache

    def _score_batch(self, batch, n_prefix: int, prefix_cache: DynamicCache | None) -> list[Scored]:
        # Right-padded contexts need no attention mask (pads only follow real tokens), so attention keeps its causal
        # fast path; each row's last real position is gathered from the few positions whose logits are computed.
        b = len(batch)
        lens = torch.tensor([len(ctx) for ctx, _, _ in batch])
        ids = torch.full((b, int(lens.max())), self.pad_id, dtype=torch.long)
        for r, (ctx, _, _) in enumerate(batch):
            ids[r, : len(ctx)] = torch.tensor(ctx)
        keep = torch.unique(lens - 1)
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(b)
        out = self.model(
            input_ids=ids.to(self.device), cache=cache, use_cache=True, logits_to_keep=keep.to(self.device)
        )
        self.stats["forward_tokens"] += int(lens.sum())
        rows = torch.searchsorted(keep, lens - 1).to(self.device)
        last = out.logits[torch.arange(b, device=self.device), rows].float().log_softmax(-1)
        # Later forwards append after each row's own last token: mask out the padding, continue the positions.
        mask = torch.cat(
            [torch.ones(b, n_prefix, dtype=torch.long), (torch.arange(ids.shape[1]) < lens[:, None]).long()], dim=1
        ).to(self.device)
        last_pos = (n_prefix + lens - 1).to(self.device)
        results = [Scored() for _ in batch]
        self._score_candidates(batch, results, last, out.cache, mask, last_pos)
        if any(n > 0 for _, _, n in batch):
            self._generate(batch, results, last, out.cache, mask, last_pos)
        return results

    def _score_candidates(self, batch, results, last, cache, mask, last_pos) -> None:
        rows = [(r, c) for r, (_, cands, _) in enumerate(batch) for c in cands]
        if not rows:
            return
        firsts = [last[r, c[0]].item() for r, c in rows]
        rest = [0.0] * len(rows)
        longest = max(len(c) for _, c in rows)
        if longest > 1:  # one short forward over all multi-token candidates, on a copy of the context cache
            sel = [k for k, (_, c) in enumerate(rows) if len(c) > 1]
            src = torch.tensor([rows[k][0] for k in sel], device=self.device)
            feed = torch.full((len(sel), longest - 1), self.pad_id, dtype=torch.long)
            for j, k in enumerate(sel):
                feed[j, : len(rows[k][1]) - 1] = torch.tensor(rows[k][1][:-1])
            feed = feed.to(self.device)
            sub = copy.deepcopy(cache)
            sub.batch_select_indices(src)
            sub_mask = torch.cat([mask[src], torch.ones_like(feed)], dim=1)
            sub_pos = last_pos[src, None] + 1 + torch.arange(longest - 1, device=self.device)
            logp = (
                self.model(input_ids=feed, attention_mask=sub_mask, position_ids=sub_pos, cache=sub, use_cache=True)
                .logits.float()
                .log_softmax(-1)
            )
            self.stats["forward_tokens"] += int(sum(len(rows[k][1]) - 1 for k in sel))
            for j, k in enumerate(sel):
                tgt = torch.tensor(rows[k][1][1:], device=self.device)
                rest[k] = logp[j, : len(tgt)].gather(-1, tgt[:, None]).sum().item()
        for k, (r, c) in enumerate(rows):
            results[r].first_logprob.append(firsts[k])
            results[r].loglik.append(firsts[k] + rest[k])
            results[r].n_tokens.append(len(c))

    def _generate(self, batch, results, last, cache, mask, last_pos) -> None:
        """Greedy decoding continuing the context cache (which it extends in place)."""
        steps = max(n for _, _, n in batch)
        limit = torch.tensor([n for _, _, n in batch], device=self.device)
        done = limit <= 0
        out = []
        logits = last
        for t in range(steps):
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            out.append(nxt)
            done = done | torch.isin(nxt, torch.tensor(sorted(self.eos_ids), device=self.device)) | (limit <= t + 1)
            if bool(done.all()) or t == steps - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last_pos = last_pos + 1
            res = self.model(
                input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None], cache=cache, use_cache=True
            )
            self.stats["forward_tokens"] += len(batch)
            cache, logits = res.cache, res.logits[:, -1]
        gen = torch.stack(out, dim=1).tolist()
        for r, (_, _, n) in enumerate(batch):
            ids = []
            for tok in gen[r][:n]:
                if tok in self.eos_ids:
                    break
                ids.append(tok)
            results[r].generated = self.tok.decode(ids, skip_special_tokens=True)
