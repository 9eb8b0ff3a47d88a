"""Prefix caching: keep the KV caches of a few recent token sequences and start a new sequence from a copy of the one
sharing the longest token prefix with it. Prompts built from one few-shot template (MCTS node expansion, CoT over a
split) then pay only for their own tail."""

from __future__ import annotations

import copy


class PrefixCache:
    """An LRU of `(token ids, KV cache)`; `size` entries at most (each holds one cache of its sequence's length)."""

    def __init__(self, size: int = 8):
        self.size = size
        self.entries: list[tuple[tuple[int, ...], object]] = []
        self.hits = self.reused_tokens = 0

    def lookup(self, ids: list[int], keep_last: int = 1) -> tuple[int, object | None]:
        """`(n, cache)`: a private copy of the stored cache sharing the longest prefix with `ids`, cropped to that
        prefix (`n` tokens, at most `len(ids) - keep_last`, so that a forward on the rest yields the next-token
        logits); `(0, None)` when nothing is shared."""
        limit = len(ids) - keep_last
        best_n, best = 0, None
        for key, cache in self.entries:
            n = 0
            for a, b in zip(key, ids[:limit]):
                if a != b:
                    break
                n += 1
            if n > best_n:
                best_n, best = n, cache
        if best is None:
            return 0, None
        cache = copy.deepcopy(best)
        extra = cache.get_seq_length() - best_n
        if extra > 0:
            cache.crop(-extra)
        self.hits += 1
        self.reused_tokens += best_n
        return best_n, cache

    def put(self, ids: list[int], cache) -> None:
        """Store a copy of `cache`, which must hold exactly the KV of `ids`."""
        key = tuple(ids)
        rest = [(k, c) for k, c in self.entries if k != key]
        self.entries = [(key, copy.deepcopy(cache)), *rest][: self.size]
