# popshift: the two commands in README.md are `make demo` and `make test`.
.PHONY: setup up down test test-fast lint demo schemas bench

setup:
	bash scripts/setup.sh

up: setup
	bash deploy/local/up.sh

down:
	bash deploy/local/down.sh

# Installs, starts Kafka and Redis, runs every test (root-only tests need root). Services stay up
# for quick reruns; `make down` stops them.
test: up
	.venv/bin/pytest -q

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy .

schemas:
	.venv/bin/python -m schemas.generate

demo: up
	bash deploy/demo.sh

bench: up
	for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b; done
