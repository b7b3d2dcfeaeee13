# The two commands a newcomer needs (see README.md).
.PHONY: demo test lint setup

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/gourmetgram demo

lint: setup
	.venv/bin/ruff check .

test: lint
	.venv/bin/python -m pytest
