# Two commands on a fresh machine with only python3:
#   make demo   sets everything up and runs a real job on the embedded default
#   make test   runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean deploy-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/orchestrator demo

test: $(STAMP)
	$(BIN)/pytest -q

# Validates the Dockerfile, compose stack, Helm chart and systemd units
# (docker-compose config, Helm lint/render via helm-python-sdk, systemd-analyze).
deploy-check: $(STAMP)
	$(BIN)/pytest -q tests/test_deploy_compose.py tests/test_helm_chart.py

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .orchestrator demo
