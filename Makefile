# The two commands a newcomer needs (see README.md).
.PHONY: demo test lint lock setup images

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

test: lint
	.venv/bin/python -m pytest

# Container images (docker buildx, tags from git; PUSH=1 REGISTRY=... to push): scripts/build_images.sh
images:
	./scripts/build_images.sh
