"""Analyses over model internals (circuits, attention flow)."""
