"""Offline evaluation suite: metrics, slices, failure modes, template tests."""
