# The two commands a newcomer needs (see README.md).
.PHONY: demo test test-fast lint docs lock setup images

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/gourmetgram demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

# Re-resolve requirements.txt into requirements.lock (what setup installs) after changing it.
lock: setup
	.venv/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
	    --output-file requirements.lock requirements.txt

# The manual (docs/, mkdocs.yml), strict: a broken link or anchor, or a page missing from the nav, fails.
docs: setup
	.venv/bin/mkdocs build --strict --quiet

test: lint docs
	.venv/bin/python -m pytest

# The everyday run: everything but the end-to-end tests marked slow (a few minutes).
test-fast: lint docs
	.venv/bin/python -m pytest -m "not slow"

# Container images (docker buildx, tags from git; PUSH=1 REGISTRY=... to push): scripts/build_images.sh
images:
	./scripts/build_images.sh
