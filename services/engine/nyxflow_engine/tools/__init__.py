"""Deterministic tools: Python functions a `tool` step runs instead of a model."""
