# The two commands a newcomer needs (see README.md).
.PHONY: demo test setup

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/gourmetgram demo

test: setup
	.venv/bin/python -m pytest
