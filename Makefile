# Two commands on a fresh machine with only python3 and make:
#   make run    -- the main job on the embedded default config
#   make test   -- lint + the test suite (everything but @slow)
# Each creates .venv when missing and (re)installs the project when setup.cfg changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= workdir/quickstart
# pytest-xdist processes for the tests (each simulates its own 8 CPU devices)
TEST_WORKERS ?= 2

.PHONY: run test test-all lint format clean

$(PY):
	@echo ">> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): setup.cfg pyproject.toml | $(PY)
	@echo ">> installing lcm and its dev extras into $(VENV)"
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	@echo ">> main job: train configs/quickstart.py in $(WORKDIR) (resumes if it holds checkpoints)"
	$(PY) -m lcm.train --config configs/quickstart.py --workdir $(WORKDIR)
	@echo ">> perplexity at 1x-8x the training length, as trained"
	$(PY) -m lcm.eval --config configs/quickstart.py --workdir $(WORKDIR)
	@echo ">> the same with training-free YaRN (factor 8) applied at eval time"
	$(PY) -m lcm.eval --config configs/quickstart.py --workdir $(WORKDIR) --config.eval.label=yarn8 \
		--config.model.positional.rope_scaling.rope_type=yarn \
		--config.model.positional.rope_scaling.factor=8.0 \
		--config.model.positional.rope_scaling.original_max_position_embeddings=512

lint: $(STAMP)
	@echo ">> ruff check + ruff format --check"
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	@echo ">> pytest (all but @slow)"
	$(PY) -m pytest -m "not slow" -q -n $(TEST_WORKERS) --durations=40

test-all: lint
	@echo ">> pytest (everything, including @slow)"
	$(PY) -m pytest -q -n $(TEST_WORKERS)

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
