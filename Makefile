# Two commands do all the set-up on a fresh machine:
#   make book   build the course into _build/html (executes every chapter)
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Offline stand-ins for WikiText-103 and the hub's gpt2 tokenizer: used when ../shared exists and the
# variables are not set already. Without them the loaders try the hub, then fall back to a demo corpus.
SHARED := $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/data/wikitext-2/valid.txt),)
export QWEN_MINIMAL_DATA ?= $(SHARED)/data/wikitext-2
export QWEN_MINIMAL_TOKENIZER ?= $(SHARED)/tokenizers/gpt2
endif

.PHONY: book book-demo test browser-test clean

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

book: $(BIN)/.installed
	bash scripts/fetch_book_assets.sh
	$(BIN)/jupyter-book build . -W --keep-going

# PYTEST_ARGS: more pytest options, e.g. make test PYTEST_ARGS="-x -k checkpoint" (.ci/run asks for a JUnit report).
test: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q tests $(PYTEST_ARGS)

# The book as a fresh machine builds it, on the offline demo corpus (no local data, hub off), in a folder of its
# own: jupyter-book's cache of executed notebooks keys on the notebook, not on the data it ran on.
book-demo: $(BIN)/.installed
	bash scripts/fetch_book_assets.sh
	env -u QWEN_MINIMAL_DATA -u QWEN_MINIMAL_TOKENIZER HF_HUB_OFFLINE=1 \
	    $(BIN)/jupyter-book build . -W --keep-going --path-output _build/demo

# The rendered site in headless Chromium: the book of `make book`, then, if it was built, that of
# `make book-demo` (whose own test checks what the pages say about the demo corpus). Needs Debian's chromium
# and chromium-driver (.ci/run installs them).
browser-test: $(BIN)/.installed
	$(BIN)/pytest -q tests/browser --ignore=tests/browser/test_demo_build.py
	if [ -d _build/demo/_build/html ]; then BOOK_HTML=_build/demo/_build/html $(BIN)/pytest -q tests/browser; fi

clean:
	rm -rf _build
