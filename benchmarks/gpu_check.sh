#!/usr/bin/env bash
# Check dpodiag's CUDA path on a machine with an NVIDIA GPU and a CUDA build of torch:
# install the package into a virtual environment that uses the system's torch, run the CUDA
# test, and time the CPU against the GPU recompute on 10M- and 30M-row pair logs.
#
# A GPU machine without internet needs the packages its Python lacks as wheels in .whl/.
# Fetch them first, on a machine with internet, in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl \
#       polars==2.1.0 polars-runtime-32==2.1.0 plotly==7.1.0 narwhals==2.29.0
# Then, on the GPU machine, in the repository root (estimated at a few minutes, most of them
# spent writing the two logs; not yet run on a GPU):
#   bash benchmarks/gpu_check.sh
# Settings: PYTHON (the interpreter that has CUDA torch, default python3), VENV, DATA (where
# the logs are written, default /tmp/dpodiag-bench), SIZES (default 10M,30M).
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-/tmp/dpodiag-gpu-venv}
DATA=${DATA:-/tmp/dpodiag-bench}
SIZES=${SIZES:-10M,30M}

"$PYTHON" -m venv --system-site-packages "$VENV"
if [ -d .whl ]; then
    "$VENV/bin/python" -m pip install -q --no-index --no-deps .whl/*.whl
fi
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"

export PYTHONUNBUFFERED=1
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/compute/test_cuda.py
"$VENV/bin/python" benchmarks/gpu_recompute.py --sizes "$SIZES" --data-dir "$DATA"
