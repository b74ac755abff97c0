# The two commands: `make up` (the default lab) and `make test` (every test).
# Both install what they need: a Docker engine where none runs (Debian/Ubuntu
# as root) and a virtualenv with emu and its test tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
TOPOLOGY ?= topologies/default.yaml

.PHONY: up down test unit integration bench docker uml venv clean

up: venv docker
	$(BIN)/emu up $(TOPOLOGY)

down: venv docker  
	$(BIN)/emu down --all

test: venv docker
	$(BIN)/python -m pytest --durations=15 tests

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv docker
	$(BIN)/python -m pytest tests/integration

bench: venv docker
	$(BIN)/python bench/up.py

docker:
	@scripts/ensure-docker.sh

# User-mode Linux, for nodes with a kernel of their own (docs/uml.md).
uml:
	@scripts/ensure-uml.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: could not create a virtualenv; install python3-venv (Debian/Ubuntu) and retry" >&2; exit 1; }
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache
