"""Runners: one file per method, each an explicit loop `run(cfg, ctx) -> RunResult` marked
`@register_runner(name, schema=..., objective=...)` (llmlab.registry, which finds the marks without importing these
modules)."""
