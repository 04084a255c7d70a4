.PHONY: setup test quickstart lint format bench docs

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

# The generated references (docs/config.md, docs/http_api.md); tests/docs fails when they are out of date.
docs: setup
	.venv/bin/python scripts/gen_docs.py
