.PHONY: setup test quickstart lint format bench

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

quickstart:
	bash scripts/quickstart.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench: setup
	.venv/bin/python bench/model.py
