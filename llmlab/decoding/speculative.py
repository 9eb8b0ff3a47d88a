"""Greedy decoding, plain and speculative (a draft proposes `n_draft` tokens, the target checks them in one forward
and keeps the longest agreeing prefix plus its own next token). With greedy acceptance the output is the target's
own greedy output, token for token; only the number of target forwards changes.

Both decoders start from a `PrefixCache` when given one (prompts from one template pay only for their own tail), and
on the CPU run the multi-token checks through grouped-query SDPA (no per-head copy of the cached keys and values),
which makes a check of 9 tokens cost about twice a single-token step instead of four to five times."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from llmlab.decoding.prefix_cache import PrefixCache
from llmlab.decoding.sdpa import grouped_query_sdpa


@dataclass
class DecodeStats:
    new_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0
    accepted_per_step: list[int] = field(default_factory=list)

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def stopper(tok, max_new_tokens: int, stop: tuple[str, ...] = (), eos_ids: set[int] | None = None) -> Callable:
    """`done(generated_ids) -> bool`: the last token is an end-of-sequence token, the decoded text contains a stop
    string, or `max_new_tokens` are out."""
    eos = eos_ids if eos_ids is not None else {tok.eos_token_id} - {None}

    def done(ids: list[int]) -> bool:
        if len(ids) >= max_new_tokens or (ids and ids[-1] in eos):
            return True
        return bool(stop) and any(s in tok.decode(ids[-16:]) for s in stop)

    return done


def _next(model: PreTrainedModel, ids: list[int], cache):
    out = model(input_ids=torch.tensor([ids], device=model.device), cache=cache, use_cache=True)
    return out.logits[0].argmax(-1).tolist(), out.cache


class PromptLookup:
    """A model-free draft (prompt-lookup decoding): find the latest earlier occurrence of the last `ngram` tokens
    (longest first, down to 1) in prompt + generated text, then in the `history` most recent earlier outputs, and
    propose the tokens that followed it. Copy-heavy outputs (the world model's [CHANGE] sentences restate the prompt
    and each other) are drafted well, at no cost."""

    def __init__(self, ngram: int = 4, history: int = 32):
        self.ngram = ngram
        self.outputs: deque[list[int]] = deque(maxlen=history)

    def remember(self, output: list[int]) -> None:
        """Add one finished output to the history that later proposals search."""
        if self.outputs.maxlen:
            self.outputs.appendleft(list(output))

    def propose(self, seq: list[int], k: int) -> list[int]:
        for n in range(min(self.ngram, len(seq) - 1), 0, -1):
            tail = seq[-n:]
            for source, last in ((seq, len(seq) - n - 1), *((o, len(o) - n) for o in self.outputs)):
                for start in range(last, -1, -1):
                    if source[start : start + n] == tail and start + n < len(source):
                        return source[start + n : start + n + k]
        return []


def _start(model: PreTrainedModel, prompt: list[int], prefix: PrefixCache | None):
    """Next-token predictions after `prompt` and its KV cache, reusing (and then storing) a cached prefix."""
    if prefix is None:
        return _next(model, prompt, None)
    n, cache = prefix.lookup(prompt)
    preds, cache = _next(model, prompt[n:], cache)
    prefix.put(prompt, cache)
    return preds, cache


def crop_to(cache, length: int) -> None:
    """Keep the first `length` positions of a KV cache."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@torch.inference_mode()
def greedy(
    model: PreTrainedModel, prompt: list[int], done: Callable[[list[int]], bool], prefix: PrefixCache | None = None
) -> tuple[list[int], DecodeStats]:
    """Plain greedy decoding with a KV cache, one target forward per token."""
    t0, stats, gen = time.perf_counter(), DecodeStats(), []
    with grouped_query_sdpa(model):  # the same attention path as `speculative` for the prompt's forward
        preds, cache = _start(model, prompt, prefix)
        stats.target_forwards += 1
        while True:
            gen.append(preds[-1])
            if done(gen):
                break
            preds, cache = _next(model, [gen[-1]], cache)
            stats.target_forwards += 1
    stats.new_tokens, stats.seconds = len(gen), time.perf_counter() - t0
    return gen, stats


@torch.inference_mode()
def speculative(
    target: PreTrainedModel,
    draft: PreTrainedModel | PromptLookup,
    prompt: list[int],
    done: Callable[[list[int]], bool],
    n_draft: int = 8,
    prefix: PrefixCache | None = None,
) -> tuple[list[int], DecodeStats]:
    """Speculative greedy decoding; returns exactly what `greedy(target, ...)` returns (up to float ties)."""
    with grouped_query_sdpa(target):
        gen, stats = _speculative(target, draft, prompt, done, n_draft, prefix)
    if isinstance(draft, PromptLookup):
        draft.remember(gen)
    return gen, stats


def _speculative(target, draft, prompt, done, n_draft, prefix):
    t0, stats, gen = time.perf_counter(), DecodeStats(), []
    preds, t_cache = _start(target, prompt, prefix)  # the target cache holds every token but the newest
    stats.target_forwards += 1
    seq, d_cache, d_len = list(prompt), None, 0
    nxt = preds[-1]
    while True:
        gen.append(nxt)
        seq.append(nxt)
        if done(gen):
            break
        # 1. the draft proposes up to n_draft tokens (a model first feeds whatever its cache has not seen)
        if isinstance(draft, PromptLookup):
            proposal = draft.propose(seq, n_draft)
        else:
            proposal, feed = [], seq[d_len:]
            for _ in range(n_draft):
                d_preds, d_cache = _next(draft, feed, d_cache)
                stats.draft_forwards += 1
                d_len += len(feed)
                proposal.append(d_preds[-1])
                feed = proposal[-1:]
        # 2. the target scores newest token + proposal in one forward: preds[i] follows seq + proposal[:i]
        preds, t_cache = _next(target, [nxt, *proposal], t_cache)
        stats.target_forwards += 1
        n = 0
        while n < len(proposal) and proposal[n] == preds[n]:
            n += 1
        stats.drafted += len(proposal)
        stats.accepted += n
        stats.accepted_per_step.append(n)
        # 3. keep the agreeing prefix; both caches drop what follows it
        crop_to(t_cache, len(seq) + n)  # seq (its newest token now cached too) + the n accepted tokens
        if d_cache is not None:
            d_len = min(d_len, len(seq) + n)
            crop_to(d_cache, d_len)
        finished = False
        for tok_id in proposal[:n]:
            gen.append(tok_id)
            seq.append(tok_id)
            if done(gen):
                finished = True
                break
        if finished:
            break
        nxt = preds[n]
    stats.new_tokens, stats.seconds = len(gen), time.perf_counter() - t0
    return gen, stats
