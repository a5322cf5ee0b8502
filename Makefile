# Every target creates .venv itself; a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench soak sim clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

## run: a local cluster in the foreground, data under ./data (Ctrl-C stops it)
run: $(STAMP)
	$(BIN)/ringfs cluster up --nodes 3 --base-port 7001 --data-root ./data

## test: lint, type-check and the whole suite (under 10 minutes on 2 cores)
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check ringfs simulations bench tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

## bench: every benchmark, each printing ringfs against its reference
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

## sim: 200 random VOPR seeds; replay one with `python -m simulations run/vopr --seed...`
sim: $(STAMP)
	$(BIN)/python -m simulations vopr --seeds 200

## soak: long randomized campaigns (10,000 VOPR seeds, long state machines)
soak: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m slow --hypothesis-profile=soak

clean:
	rm -rf $(VENV) build *.egg-info
