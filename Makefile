# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A GPU user installs a CUDA torch into $(VENV) first; it is kept (torch is only installed when absent).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO ?= demo

.PHONY: install test demo reproduce bundle benchmarks clean-demo

install: $(STAMP)

$(STAMP): Trainer/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e "Trainer[test,slicer]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q Testing

demo: $(STAMP)
	$(PY) scripts/demo.py --out $(DEMO)

reproduce: $(STAMP)
	$(PY) scripts/reproduce.py $(ARGS)

bundle: $(STAMP)
	$(PY) scripts/build_default_model.py $(ARGS)

benchmarks: $(STAMP)
	$(PY) Testing/benchmarks/bench_loss.py
	$(PY) Testing/benchmarks/bench_train.py
	$(PY) Testing/benchmarks/bench_predict.py
	$(PY) Testing/benchmarks/bench_process.py
	$(PY) Testing/benchmarks/bench_preprocess.py

clean-demo:
	rm -rf $(DEMO)
