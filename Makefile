# The two commands of the README. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-run

.PHONY: demo test lint env clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; free < 8 and print(f"warning: {free:.1f} GiB free here; .venv takes about 6 GiB (torch with its CUDA libraries): the install may stop with No space left on device", file=sys.stderr)'
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check scl_cli tests
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	bash scripts/demo.sh $(DEMO)

lint: $(STAMP)
	$(BIN)/ruff check scl_cli tests
	$(BIN)/lint-imports
	$(BIN)/ruff format --check scl_cli tests

clean:
	rm -rf $(DEMO) .pytest_cache
