# Every target does its own set-up, so a fresh machine (no torch, no venv) needs only `make test` or `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13 lies on this machine's disk; installing it first keeps pip from pulling CUDA builds.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/python -m pytest -q

demo: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/defi demo

bench: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
