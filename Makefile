# Signalbox: `make run` starts everything, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test test-fast test-browser fuzz lint format audit lock bench bench-engine bench-ingest bench-push bench-growth bench-pages bench-hosts bench-tracing screenshots chaos soak clean

$(VENV)/.python-ok:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' \
		|| { echo "Signalbox needs Python 3.11 (found: $$($(PYTHON) --version 2>&1)); set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) \
		|| { rm -rf $(VENV); echo "could not create $(VENV); on Debian: apt-get install python3.11-venv"; exit 1; }
	@touch $@

$(VENV)/.installed: requirements.lock $(VENV)/.python-ok
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.lock
	@touch $@

$(VENV)/.installed-dev: requirements-dev.lock $(VENV)/.installed
	$(PIP) install --quiet -r requirements-dev.lock
	@touch $@

# One simple command, so make runs the launcher itself (no shell in between): make forwards
# SIGTERM to it, and the launcher notices a SIGINT sent to make alone (see launcher.py).
run: $(VENV)/.installed
	@$(PY) -m orchestrator.launcher

# ARGS go to pytest, e.g. `make test ARGS="-k spine -x"`. The last line is "N passed, N failed".
test: $(VENV)/.installed-dev
	@$(PY) -m tests.runner $(ARGS)

# Parts of `make test`, for a quicker loop while working: all but the browser tests and the
# fault suite, or the browser tests alone.
test-fast: $(VENV)/.installed-dev
	@$(PY) -m tests.runner --only rest $(ARGS)

test-browser: $(VENV)/.installed-dev
	@$(PY) -m tests.runner --only browser $(ARGS)

# Every check always runs, so one pass shows every problem; any failing fails lint.
lint: $(VENV)/.installed-dev
	@status=0; \
	echo "ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo "ruff format --check ."; $(VENV)/bin/ruff format --check --output-format concise . || status=1; \
	echo "lint-imports (the import contract in pyproject.toml)"; $(VENV)/bin/lint-imports --no-cache || status=1; \
	exit $$status

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The locked dependencies (both lock files) against PyPI's vulnerability data, with pip-audit.
# It needs that service over the network (pypi.org's JSON API; `AUDIT_ARGS="-s osv"` asks
# api.osv.dev instead): --strict makes a package it could not look up a failure, never a
# silent pass. Accepted findings go in AUDIT_IGNORE (vulnerability ids), each explained in
# docs/security.md under "Supply chain".
AUDIT_IGNORE :=
audit: $(VENV)/.installed-dev
	$(VENV)/bin/pip-audit --strict --no-deps --disable-pip --progress-spinner off \
		-r requirements.lock -r requirements-dev.lock \
		$(foreach id,$(AUDIT_IGNORE),--ignore-vuln $(id)) $(AUDIT_ARGS)

# Regenerate both lock files from the direct pins in pyproject.toml, in throwaway venvs.
lock:
	rm -rf var/lock && mkdir -p var/lock
	$(PYTHON) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		open("var/lock/rt.txt", "w").write("\n".join(p["dependencies"])); \
		open("var/lock/dev.txt", "w").write("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))'
	$(PYTHON) -m venv var/lock/rt && var/lock/rt/bin/pip install -q -r var/lock/rt.txt
	var/lock/rt/bin/pip freeze --all --exclude pip --exclude setuptools > requirements.lock
	$(PYTHON) -m venv var/lock/dev && var/lock/dev/bin/pip install -q -r var/lock/dev.txt
	var/lock/dev/bin/pip freeze --all --exclude pip --exclude setuptools > requirements-dev.lock
	rm -rf var/lock

clean:
	rm -rf $(VENV) var/staticfiles
# Every benchmark beside its same-run baselines; rewrites the results in docs/benchmarks.md.
# ARGS=--quick for a smoke run. Never part of `make test`.
bench: $(VENV)/.installed-dev ; @$(PY) -m bench.all $(ARGS)
# Every fault scenario at full size (minutes); `make test` runs each at a bounded size.
chaos: $(VENV)/.installed-dev ; @$(PY) -m tests.chaos $(ARGS)
# schemathesis against the whole API at full size (minutes; a new seed each run, named in a
# failure, SIGNALBOX_FUZZ_SEED=N repeats one); `make test` runs a few fixed-seed examples.
fuzz: $(VENV)/.installed-dev
	@SIGNALBOX_FUZZ=full $(PY) -m pytest tests/test_openapi.py -p no:randomly -k schemathesis $(ARGS)
# Ten minutes of steady load with 200 dashboard pages open; `make test` runs a short one.
soak: $(VENV)/.installed-dev ; @$(PY) -m tests.chaos.soak $(ARGS)
bench-engine: $(VENV)/.installed-dev ; @$(PY) -m bench.engine $(ARGS)
bench-ingest: $(VENV)/.installed-dev ; @$(PY) -m bench.ingest $(ARGS)
bench-push: $(VENV)/.installed-dev ; @$(PY) -m bench.push $(ARGS)
bench-growth: $(VENV)/.installed-dev ; @$(PY) -m bench.growth $(ARGS)
# Every dashboard page's server time at a million runs, flagging those at or over 300 ms.
bench-pages: $(VENV)/.installed-dev ; @$(PY) -m bench.pages $(ARGS)
# Throughput with workers on 1 and then 2 hosts (network namespaces; needs root).
bench-hosts: $(VENV)/.installed-dev ; @$(PY) -m tests.chaos.hosts $(ARGS)
# What the tracing hooks cost per event, off and on (docs/operations.md).
bench-tracing: $(VENV)/.installed-dev ; @$(PY) -m bench.tracing $(ARGS)

# The README's dashboard pictures (runs, run, editor, flow-map, phone-menu) from a throwaway
# stack seeded with the demo workflows (bench/screenshots.py). Never part of `make test`.
screenshots: $(VENV)/.installed-dev ; @$(PY) -m bench.screenshots $(ARGS)
