"""Mutual Reinforcement Effect (MRE) data: the OIELLM string format, a seeded synthetic generator, file/hub loaders."""

from llmlab.data.mre.format import MreRecord, parse_output, parse_pair, write_output
from llmlab.data.mre.loader import MreData, load_mre

__all__ = ["MreData", "MreRecord", "load_mre", "parse_output", "parse_pair", "write_output"]
