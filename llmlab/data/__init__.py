"""Datasets for llmlab experiments: seeded generators (`implicit`) and user dataset files (`files`)."""
