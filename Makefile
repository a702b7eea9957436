# Two commands on a fresh machine with only python3:
#   make demo   sets everything up and runs a real job on the embedded default
#   make test   runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean deploy-check lint lock release-check runbooks-check fuzz-shell

$(STAMP): pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/dev.lock -e '.[dev,bench,lint,release,browser,vault]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/orchestrator demo

# The suite runs under coverage, worker and CLI subprocesses included
# (pyproject [tool.coverage]); the build fails below the thresholds: overall
# (fail_under in pyproject) and per package (COVER_EVENTS, COVER_POLICY).
# The issue asks 95 for both. Measured 2026-12-02 on the event, store, upcast,
# verify, audit-digest and policy tests alone (tests/test_events_edges.py and
# tests/security/test_policy_edges.py included): events/ 95.7%, the policy
# 99.8%. The full suite runs those tests too, so it can only add to them.
COVER_EVENTS ?= 95
COVER_POLICY ?= 95
# The policy: its document, rules, built-in rules, decisions, sed/awk analysis, globs.
POLICY_FILES = orchestrator/guard/policy.py,orchestrator/guard/rules.py,orchestrator/guard/builtin_rules.py,orchestrator/guard/decision.py,orchestrator/guard/sed_awk.py,orchestrator/guard/globs.py
# Test modules run on TEST_WORKERS processes (pytest-xdist, a module per process:
# module fixtures and each module's own Redis db stay together); 0 runs them in
# this process. The slowest tests are listed at the end, to keep the run short.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report
	@echo "events/ (at least $(COVER_EVENTS)%):"
	$(BIN)/coverage report --include='events/*' --fail-under=$(COVER_EVENTS)
	@echo "the policy, $(POLICY_FILES) (at least $(COVER_POLICY)%):"
	$(BIN)/coverage report --include='$(POLICY_FILES)' --fail-under=$(COVER_POLICY)

# ruff (lint and format check), mypy (strict on events/ and the policy) and the
# workflow schemas: the checks .ci/run and ci.yml run besides the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml

# requirements/*.lock from pyproject.toml: what CI installs and pip-audit checks.
LOCK := $(BIN)/uv pip compile --quiet pyproject.toml --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"
lock: $(STAMP)
	$(LOCK) --upgrade --extra browser --extra vault -o requirements/runtime.lock
	$(LOCK) --upgrade --extra dev --extra bench --extra lint --extra release \
		--extra browser --extra vault -o requirements/dev.lock

# Everything a release does except publishing (docs/releasing.md).
release-check: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash .ci/release-check

# Validates the Dockerfile, compose stack, Helm chart and systemd units
# (docker-compose config, Helm lint/render via helm-python-sdk, systemd-analyze).
deploy-check: $(STAMP)
	$(BIN)/pytest -q tests/test_deploy_compose.py tests/test_helm_chart.py

bench: $(STAMP)
	$(BIN)/python -m bench

# The shell analysis against real bash, longer than the suite's bounded run
# (tests/security/test_shell_differential.py): generated lines, each run in a
# bubblewrap box of recording shims under strace (docs/security.md). Needs
# bubblewrap and strace. Exits 1 on any escape.
FUZZ_LINES ?= 30000
FUZZ_SEED ?= 16
fuzz-shell: $(STAMP)
	$(BIN)/python -m tests.security.differential --lines $(FUZZ_LINES) --seed $(FUZZ_SEED)

clean:
	rm -rf $(VENV) .orchestrator demo

# Every command in runbooks/*.md and docs/troubleshooting.md resolves to a real
# CLI command and option; the read-only ones run on a real embedded deployment
# (convention: runbooks/README.md). Also loads compose/config/ samples.
runbooks-check: $(STAMP)
	$(BIN)/pytest -q tests/test_runbooks.py
