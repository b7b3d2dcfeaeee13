"""Kubeflow Pipelines components (lightweight Python) calling gourmetgram modules."""
