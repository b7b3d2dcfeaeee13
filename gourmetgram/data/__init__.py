"""Datasets in the Food-11 layout: ingest, validate, load, and the embedded demo."""
