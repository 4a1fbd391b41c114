# pixelkit: every target sets itself up on a fresh machine (a .venv in the repo).
#   make quickstart   shapes world -> four training stages -> report (CPU, minutes)
#   make test         the whole test suite on the locked versions (CPU, no network)
#   make test-min     the core tests on the lowest supported versions (.venv-min)
#   make lock         re-resolve every dependency (the only way versions move), then test

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
MIN_VENV := .venv-min
OUT     ?= outputs/quickstart
# uv is pinned in pyproject's dev group; the bootstrap installs that same version.
UV_VERSION := $(shell sed -n 's/.*"uv==\([0-9.]*\)".*/\1/p' pyproject.toml)
UV      := $(BIN)/uv
TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline
# The min-versions job: the core's tests (no browser, notebooks, wheel or extras).
CORE_TESTS := tests/test_modeling.py tests/test_decoding.py tests/test_stages.py \
	tests/test_evaluate.py tests/test_metrics.py tests/test_predictor.py tests/test_loading.py \
	tests/test_formats.py tests/test_alignment.py tests/test_datamodule.py \
	tests/test_transforms.py tests/test_synth.py tests/test_inspect.py tests/test_runtime.py \
	tests/test_fuzz_readers.py tests/test_resume.py tests/test_robustness.py tests/test_runs.py \
	tests/test_packed.py tests/test_frozen_checkpoints.py tests/test_hub.py tests/test_distributed.py \
	tests/test_install.py::test_core_runs_without_the_extras

.PHONY: setup test test-min lock quickstart clean

$(UV):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"

# Exactly uv.lock: every extra, the dev group, pixelkit itself (editable). `--locked` fails
# when uv.lock no longer matches pyproject.toml (run `make lock`). `--compile-bytecode`:
# uv leaves the .pyc files out by default, so with PYTHONDONTWRITEBYTECODE set every
# process compiled torch, transformers and lightning again (~8 s of each pixelkit command).
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --all-extras --compile-bytecode --python $(BIN)/python
	@bash scripts/ensure_system_deps.sh
	@touch $(STAMP)

setup: $(STAMP)

test: setup
	$(TEST_ENV) PIXELKIT_ALL_EXTRAS=1 $(BIN)/python -m pytest

# The lowest supported versions (pyproject's lower bounds, pinned in requirements/min.txt),
# the core only: no extra is installed, so this is also the core-only environment.
test-min: | $(UV)
	@test -x $(MIN_VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(MIN_VENV)
	$(UV) pip sync -q --compile-bytecode --python $(MIN_VENV)/bin/python requirements/min.txt
	$(UV) pip install -q --python $(MIN_VENV)/bin/python --no-deps -e .
	$(TEST_ENV) $(MIN_VENV)/bin/python -m pytest -p no:cacheprovider $(CORE_TESTS)

lock: | $(UV)
	$(UV) lock --upgrade
	$(UV) export -q --frozen --all-extras --no-emit-project --no-hashes -o requirements/lock.txt
	$(UV) pip compile -q pyproject.toml --group test --resolution lowest-direct --universal \
		--no-header -o requirements/min.txt
	rm -f $(STAMP)
	$(MAKE) test test-min

quickstart: setup
	$(TEST_ENV) $(BIN)/pixelkit quickstart --out $(OUT)

clean:
	rm -rf $(VENV) $(MIN_VENV) outputs .pytest_cache
