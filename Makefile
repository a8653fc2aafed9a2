# Two entry points for a fresh machine: `make demo` (the main job) and `make test`. Each installs what it needs
# into a local virtual environment (.venv). CPU installs are pinned through constraints-cpu.txt so that pip never
# pulls a CUDA build of torch; on a GPU machine set CONSTRAINTS= to keep your own torch.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= -c constraints-cpu.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssckit-installed
DEMO_OUT ?= demo_output

.PHONY: install test test-fast demo bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[dev]"
	@$(PY) -c "import shutil, sys, torch; sys.exit(0 if torch.__version__.endswith('+cpu') or shutil.which('nvidia-smi') else 'a CUDA build of torch got into a CPU install: ' + torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/ssckit demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) demo_data .pytest_cache
