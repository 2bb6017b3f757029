# Two commands on a fresh machine with python3 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
DEMO_OUT ?= runs/demo
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-gpu install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@if [ -d "$(SHARED)/data/eu-moths/images" ]; then \
		echo "demo: the 50 EU-moths test species from $(SHARED)/data/eu-moths"; \
		$(BIN)/deepclust cluster "$(SHARED)/data/eu-moths/images" --split eu-moths --subset test \
			--labels folders --algorithm spectral --out $(DEMO_OUT); \
	else \
		echo "demo: $(SHARED)/data not found; using scikit-learn's digits written out as images"; \
		$(BIN)/python -m deepclust.data.examples digits runs/digits-images && \
		$(BIN)/deepclust cluster runs/digits-images --labels folders --out $(DEMO_OUT); \
	fi
	$(BIN)/deepclust evaluate $(DEMO_OUT) --algorithm kmeans spectral --seeds 5
	@echo "demo results: $(DEMO_OUT) (assignments.csv, metrics.json, evaluation.md)"
	@echo "What the figures mean: each image's true class is its folder. CA counts, in each cluster, the images"
	@echo "of its most common class; ACC matches clusters to classes one to one; NMI, AMI and ARI measure agreement"
	@echo "(1 is perfect, ARI 0 is chance). The table repeats K-means and Spectral over 5 seeds: average (SD)."
	@echo "See the clusters: $(BIN)/deepclust report $(DEMO_OUT)   (then open $(DEMO_OUT)/report/report.html)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Every CUDA path (tests/test_gpu.py) and the CUDA throughput benchmark; skipped without a GPU.
# On a bare GPU machine: sh scripts/prepare_gpu_check.sh here, then sh scripts/gpu_check.sh there.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -v -m gpu -rs tests/test_gpu.py
	$(BIN)/python benchmarks/gpu_throughput.py

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache
