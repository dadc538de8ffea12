# popshift: the two commands in README.md are `make demo` and `make test`.
.PHONY: setup up down test lint demo chaos schemas bench traces traces-down

setup:
	bash scripts/setup.sh

up: setup
	bash deploy/local/up.sh

down: traces-down
	bash deploy/local/down.sh

# Zipkin with its trace UI (127.0.0.1:9411/zipkin/, spans on :9411/api/v2/spans) and Jaeger
# (OTLP on 127.0.0.1:4318, query API on :16686, no UI: built from the Go module proxy).
traces:
	bash deploy/observability/zipkin-start.sh
	bash deploy/observability/jaeger-start.sh

traces-down:
	bash deploy/observability/zipkin-stop.sh
	bash deploy/observability/jaeger-stop.sh

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

# The overload scenario while services are killed and Kafka/Redis fail in turn (bench/chaos.py;
# about 8 minutes, root). Stops and restarts the local Kafka and Redis, wiping Redis.
chaos: up
	.venv/bin/python bench/chaos.py

bench: up
	for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b; done
