# Two entry points: `make demo` (the main job on built-in data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/resnets: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[test,demo]"
	touch $(BIN)/resnets

.PHONY: install demo test
install: $(BIN)/resnets

demo: install
	$(BIN)/resnets demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
