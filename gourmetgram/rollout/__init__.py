"""Staged rollout: canary traffic, canary analysis from Prometheus, promote/rollback (local and cluster)."""
