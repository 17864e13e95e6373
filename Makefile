# Two entry points: `make demo` (the main job on built-in data) and `make test`.
# Each creates .venv when it is missing and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[demo]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test,demo]"
	touch $@

.PHONY: install demo test fuzz
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/resnets demo --out runs/demo

# Tests marked serial time things or race a signal: they run alone, once the parallel part is done,
# so that another worker's training cannot slow them mid-measurement.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -q -m serial

# The fuzz tests with many more examples per property (about ten minutes on two cores); shrunk
# failures are kept as plain tests in tests/test_fuzz_*.py, which `make test` runs at the default budget.
fuzz: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider --hypothesis-profile=fuzz --hypothesis-show-statistics tests/test_fuzz_readers.py
