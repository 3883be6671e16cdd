# Every target does its own set-up, so a fresh machine (no torch, no venv) needs only `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13 lies on this machine's disk; installing it first keeps pip from pulling CUDA builds.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install lint test demo demo-quick clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# pyflakes + import order (ruff) and the dependency layers (import-linter, contracts in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

test: lint
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/python -m pytest -q

# the whole pipeline with a report (runs/demo/report.html); re-running resumes. <= 45 min on a 2-core CPU
demo: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/defi demo --preset full --run-dir runs/demo

# the same in <= 10 min, with numbers that are only a smoke test
demo-quick: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/defi demo --preset quick --run-dir runs/demo-quick

clean:
	rm -rf $(VENV) runs .pytest_cache
