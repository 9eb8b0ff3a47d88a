"""llmlab: one command-line lab for reproducing and comparing LLM research."""

__version__ = "0.1.0"
