"""Drift detector: the inference logger sink (alibi-detect online MMD)."""
