"""GourmetGram's app layer: the CLI and the local stack, orchestration that may import everything.

The core library (``gourmetgram``) and the deployment units (transformer, detector, capture sink,
web app, pipeline components) never import this package (tests/test_imports.py).
"""
