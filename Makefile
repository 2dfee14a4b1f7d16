# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# The edge proxy: VMs' web servers at http://<vm_id>.vm.localhost:$(EDGE_PORT).
EDGE_PORT ?= 8081

.PHONY: install run test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install-system-packages.sh
	scripts/install-system-packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The guest image is built before serving (about a minute, once), so the first VM does
# not wait for it inside a request.
run: install
	$(BIN)/vers-orchestrator images build-default --if-missing >/dev/null
	@echo "In another shell, say where the server is and create an API key (README.md, 'A 60-second tour'):"
	@echo '  export VERS_BASE_URL=http://$(HOST):$(PORT)'
	@echo '  export VERS_API_KEY=$$($(BIN)/vers-orchestrator keys create --org acme --user alice --format token)'
	VERS_ORCHESTRATOR_EDGE_PORT="$${VERS_ORCHESTRATOR_EDGE_PORT:-$(EDGE_PORT)}" \
		$(BIN)/vers-orchestrator serve --host $(HOST) --port $(PORT)

# The whole suite, on SQLite and on PostgreSQL (started here if it is not running).
test: install
	VERS_ORCHESTRATOR_TEST_POSTGRES_URL="$${VERS_ORCHESTRATOR_TEST_POSTGRES_URL:-$$(scripts/ensure-postgres.sh)}" \
		$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# Loads a real server on loopback; see bench/README.md for what each measures.
bench: install
	$(BIN)/python bench/bench_create.py
	$(BIN)/python bench/registry_bench.py
	$(BIN)/python bench/driver_bench.py
	$(BIN)/python bench/guest_bench.py
	$(BIN)/python bench/image_bench.py
	$(BIN)/python bench/edge_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
