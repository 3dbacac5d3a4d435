# node-agent: `make run` (a master, an agent and a demo pod), `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: bootstrap test test-unit lint fmt run bench clean

bootstrap:
	bash scripts/bootstrap.sh

test: bootstrap
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit:
	bash scripts/bootstrap.sh --no-images
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

lint:
	bash scripts/bootstrap.sh --no-images
	$(VENV)/bin/ruff format --check agent tests bench
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt:
	$(VENV)/bin/ruff format agent tests bench
	$(VENV)/bin/ruff check --fix agent tests bench

run: bootstrap
	bash scripts/demo.sh

bench: bootstrap
	$(PY) bench/pod_start.py

clean:
	-docker rm -f $$(docker ps -aq --filter label=io.node-agent.node=demo-node) 2>/dev/null
	rm -rf $(VENV) build dist *.egg-info /tmp/node-agent-demo
