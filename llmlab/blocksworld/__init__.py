"""Blocksworld (PlanBench, 4-operator STRIPS domain): problems, a rule simulator, text rendering, prompts, data."""
