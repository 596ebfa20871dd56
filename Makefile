# Every target creates and uses the local .venv by itself, so each is one command on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Main job: train the default tokenizer on the built-in synthetic scenes (about 10 minutes on 2 CPU cores).
demo: $(STAMP)
	$(BIN)/accelerate launch scripts/train_tokenizer.py --output-dir runs/demo
	@echo "model, metrics.json and reconstructions.png are in runs/demo/"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python scripts/bench_tokenizer.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
