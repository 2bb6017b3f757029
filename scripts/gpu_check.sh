#!/bin/sh
# Run on the GPU machine, in the repository's root, with .gpu carried (scripts/prepare_gpu_check.sh):
# installs deepclust with no dependencies against that machine's own PyTorch, then runs
# `pytest -m gpu` and the throughput benchmark. Logs go to ${OUT:-.}/gpu-check.log.
set -u
LOG=${OUT:-.}/gpu-check.log
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl . \
    || exit 1
export PYTHONPATH=/tmp/site DEEPCLUST_SHARED=$PWD/.gpu/shared PYTHONUNBUFFERED=1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.device_count())'
python3 -m pytest -q -m gpu -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$LOG"
status=$?
python3 benchmarks/gpu_throughput.py 2>&1 | tee -a "$LOG"
exit $status
