"""Runners: one file per method, each an explicit loop `run(cfg, ctx) -> results`. Registered in `llmlab.registry`."""
