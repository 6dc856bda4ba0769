# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench bench-gpu lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Distil the built-in digits teacher (a few minutes on 2 CPU cores), then report and picture. The report is over
# 5,000 samples: at 1,000, two sets of exact samples score 10 +- 2.4 FID against each other, more than the gaps it
# is read for; at 5,000, 2.2 +- 0.2 for 2 min of evaluation (docs/benchmarks.md, "Digits demo").
demo: $(STAMP)
	$(BIN)/distill fit recipes/demo.yaml
	$(BIN)/distill eval runs/demo --steps 1,2 --teacher-nfe 1,3,5,9,17,35 --num 5000 --out runs/demo/report.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Step overhead (demo and CIFAR-10 DDPM++ sizes) and 1-step sampling speedup on the CPU (docs/benchmarks.md).
bench: $(STAMP)
	$(BIN)/distill bench step --size demo,cifar10 --json runs/bench/step.json
	$(BIN)/distill bench sample --json runs/bench/sample.json

# bf16 DDPM++ distillation on one CUDA GPU: samples/s, model FLOP utilisation, peak memory (< 8 minutes).
bench-gpu: $(STAMP)
	$(BIN)/python scripts/bench_gpu.py --json runs/bench/gpu.json

lint: $(STAMP)
	$(BIN)/ruff check distill teachers tests

clean:
	rm -rf runs .pytest_cache
