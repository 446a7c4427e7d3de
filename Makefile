# Conveniences; the scripts are the source of truth (a fresh machine may not have make).
.PHONY: run test lint openapi docs bench
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
openapi:
	.venv/bin/flatgigs openapi --output docs/openapi/v1.json
docs:
	.venv/bin/flatgigs docs nodes --output docs/rules/nodes.md
bench:
	.venv/bin/python -m bench.registry
