# node-agent. On a fresh Debian/Ubuntu machine, as root:
#   make run    set everything up, start a master and an agent, apply the demo pod
#   make run-ha the same with etcd, three masters and two agents (make run-ha-stop ends it)
#   make test   set everything up, run the whole test suite against the real dockerd
# scripts/bootstrap.sh does the set-up (packages, dockerd, test images, .venv); it is idempotent
# and a second run takes about a second. Every tool below runs from .venv.
VENV := .venv
PY := $(VENV)/bin/python
BOOTSTRAP := bash scripts/bootstrap.sh
PYTEST_ARGS ?=
BENCH_ARGS ?=
# make run's directory and node (scripts/demo.sh also reads DEMO_PORT, the master's port)
DEMO_DIR ?= /tmp/node-agent-demo
DEMO_NODE ?= demo-node
export DEMO_DIR DEMO_NODE

.PHONY: bootstrap test test-unit coverage-proto coverage-units lint fmt run bench clean

bootstrap:
	$(BOOTSTRAP)

# pytest's exit status is make's: failures (1) and "no tests collected" (5) both fail the target.
# The package tests (tests/system/pkg) are test-system-pkg's, which .ci/run runs after this one;
# image GC's (tests/system/imagegc, a second dockerd) are test-imagegc's, likewise.
# The unit tests ran once already, under coverage-units: the last steps run the rest. The
# integration tests run on TEST_JOBS workers (pytest-xdist; each test has its own node names,
# directories and ports); tests/system (network namespaces, faults injected into the engine)
# runs alone.
TEST_JOBS ?= 2
test: bootstrap coverage-proto coverage-units
	$(PY) -m pytest -q -n $(TEST_JOBS) tests/integration $(PYTEST_ARGS)
	$(PY) -m pytest -q tests/system --ignore=tests/system/pkg --ignore=tests/system/imagegc $(PYTEST_ARGS)

# The sans-IO protocol core is held to 100 % branch coverage by its own unit tests.
coverage-proto:
	$(BOOTSTRAP) --no-docker
	$(PY) -m pytest -q tests/unit/test_h2mux.py tests/unit/test_h2lean.py tests/unit/test_h2fast.py tests/unit/test_execframe.py tests/unit/test_routes.py \
	  tests/unit/proto/test_authz.py tests/unit/proto/test_jsonbody.py tests/unit/proto/test_tickets.py \
	  tests/unit/proto/test_replay_share.py \
	  --cov=agent.proto --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=100

# The node's and the master's state machines are held to 85 % branch coverage by the unit tests
# alone (fakes, no dockerd). The adapters to real systems are left out of that figure
# ([tool.coverage.run] omit in pyproject.toml): their contract suites prove them against the
# real thing in tests/integration.
coverage-units:
	$(BOOTSTRAP) --no-docker
	$(PY) -m pytest -q -n $(TEST_JOBS) tests/unit --cov=agent.node --cov=agent.master --cov-branch \
	  --cov-report=term:skip-covered --cov-fail-under=85

test-unit:
	$(BOOTSTRAP) --no-docker
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

lint:
	$(BOOTSTRAP) --no-docker
	$(VENV)/bin/ruff format --check agent tests bench packaging/tests
	$(VENV)/bin/ruff check agent tests bench packaging/tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt:
	$(BOOTSTRAP) --no-docker
	$(VENV)/bin/ruff format agent tests bench packaging/tests
	$(VENV)/bin/ruff check --fix agent tests bench packaging/tests

# A master (open policy) and an agent (node $(DEMO_NODE), config examples/agent-demo.toml) in the
# foreground; the demo pod is applied through nodectl. scripts/demo.sh prints how to look at it,
# and fails fast (with the dying daemon's log) when something is wrong. Its venv holds the
# runtime dependencies only: make test and make lint add the test tools.
run:
	$(BOOTSTRAP) --runtime
	bash scripts/demo.sh

# Several masters on this machine (issue 19 item 7): an etcd of its own (Debian's etcd-server, a
# data dir under HA_DIR), three masters from one data dir (init once, copies with only listen
# changed), two agents listing them, the demo pod; `nodectl get nodes -o wide` shows the master
# each node talks to. Ctrl-C or `make run-ha-stop` stops all of it and deletes HA_DIR
# (scripts/demo-ha.sh). A demo: not in CI (tests/unit/test_demo_ha_script.py checks its pieces).
.PHONY: run-ha run-ha-stop
run-ha:
	$(BOOTSTRAP) --runtime
	bash scripts/demo-ha.sh

run-ha-stop:
	bash scripts/demo-ha.sh --stop

# Issue 18's acceptance on hosts that boot systemd: the packages installed in containers of a
# debootstrapped bookworm image (tests/system/image/build.sh, cached by content hash under
# /var/cache/node-agent-ci). tests/system/README.md says what each test proves.
.PHONY: test-system-pkg
test-system-pkg: bootstrap
	$(PY) -m pytest -q -p no:cacheprovider tests/system/pkg $(PYTEST_ARGS)

# Image GC and disk pressure (issue 16) on a second dockerd of the test's own, its data root a
# 400 MiB tmpfs (the machine's engine untouched), and a node whose state dir is a small tmpfs.
# .ci/run runs it after make test; budget 120 s (about 55 s measured under load).
.PHONY: test-imagegc
test-imagegc: bootstrap
	$(PY) -m pytest -q -p no:cacheprovider tests/system/imagegc --durations=0 $(PYTEST_ARGS)

# The etcd store on a real etcd (Debian's etcd-server, installed by bootstrap): the Store contract
# suite and the etcd store's own tests, one throwaway etcd with TLS and client certificates
# (tests/etcd/server.py). .ci/run runs it after make test; budget 90 s.
.PHONY: test-etcd
test-etcd:
	$(BOOTSTRAP) --no-docker
	$(PY) -m pytest -q -p no:cacheprovider tests/etcd $(PYTEST_ARGS)

bench: bootstrap
	$(PY) bench/pod_start.py $(BENCH_ARGS)

# deb and rpm packages of node-agent and node-master into dist/ (docs/packaging.md);
# `make deb VERSION=0.2.0` builds another version from this tree. `make lock` refreshes
# packaging/requirements.lock after a dependency change. test-packaging checks what they built.
VERSION ?=
.PHONY: deb rpm lock test-packaging
deb:
	$(BOOTSTRAP) --no-docker --packaging
	VERSION=$(VERSION) bash packaging/build.sh deb

rpm:
	$(BOOTSTRAP) --no-docker --packaging
	VERSION=$(VERSION) bash packaging/build.sh rpm

lock:
	$(BOOTSTRAP) --no-docker
	bash packaging/lock.sh

test-packaging: deb rpm
	VERSION=$(VERSION) $(PY) -m pytest -q -p no:cacheprovider packaging/tests $(PYTEST_ARGS)

clean:
	if docker info >/dev/null 2>&1; then \
	  ids=$$(docker ps -aq --filter label=io.node-agent.node=$(DEMO_NODE)); \
	  [ -z "$$ids" ] || docker rm -f $$ids >/dev/null; \
	fi
	rm -rf $(VENV) build dist *.egg-info $(DEMO_DIR)
