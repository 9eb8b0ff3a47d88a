"""Decoding: greedy and speculative generation, the prefix KV cache they share, grouped-query SDPA on the CPU."""
