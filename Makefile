# The two commands a newcomer needs (see README.md).
.PHONY: demo test lint setup images

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/gourmetgram demo

lint: setup
	.venv/bin/ruff check .

test: lint
	.venv/bin/python -m pytest

# Container images (docker buildx, tags from git; PUSH=1 REGISTRY=... to push): scripts/build_images.sh
images:
	./scripts/build_images.sh
