# Atalaia: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.atalaia-installed
export ATALAIA_HOME ?= $(CURDIR)/.atalaia

.PHONY: setup demo test lint format schemas models kafka-start kafka-stop postgres clean

$(STAMP): pyproject.toml scripts/setup.sh
	./scripts/system-deps.sh base
	./scripts/setup.sh

setup: $(STAMP)  ## venv + packages

models: setup  ## convert/check the models (cached)
	$(BIN)/atalaia models prepare

demo:  ## the whole slice on embedded defaults (local Kafka, SQLite)
	./scripts/system-deps.sh demo
	$(MAKE) --no-print-directory setup
	./scripts/wordnet.sh
	$(BIN)/atalaia demo

test:  ## unit + integration tests against real Kafka, PostgreSQL and models
	./scripts/system-deps.sh test
	$(MAKE) --no-print-directory setup
	./scripts/test.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: setup  ## regenerate docs/events/*.schema.json
	$(BIN)/atalaia schema export docs/events

kafka-start: setup
	./scripts/system-deps.sh demo
	$(BIN)/atalaia kafka start

kafka-stop: setup
	$(BIN)/atalaia kafka stop

postgres:
	./scripts/system-deps.sh test
	./scripts/postgres.sh start

clean:  ## remove the venv and local state (not the download caches)
	-$(BIN)/atalaia kafka stop
	rm -rf $(VENV) .atalaia
