# pixelkit: every target sets itself up on a fresh machine (a .venv in the repo).
#   make quickstart   shapes world -> four training stages -> report (CPU, minutes)
#   make test         the whole test suite (CPU, no network)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= outputs/quickstart

.PHONY: setup test quickstart clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	# torch + torchvision come from PyPI together (CPU here, CUDA where there is a GPU).
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[dev]"
	@bash scripts/ensure_system_deps.sh
	@touch $(STAMP)

setup: $(STAMP)

test: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest

quickstart: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(BIN)/pixelkit quickstart --out $(OUT)

clean:
	rm -rf $(VENV) outputs .pytest_cache
