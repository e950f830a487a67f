#!/usr/bin/env bash
# Wheels that bench/gpu_training.py needs on the lent GPU machines and that their image lacks.
# That image (Python 3.12) has JAX with CUDA, NumPy, OpenCV, tifffile, h5py, rich, absl-py, ml-dtypes
# but no Keras and no TensorFlow; nothing can be fetched there, so the wheels travel in .whl/ (git-ignored;
# name it in the device tool's `carry`). Keras's other needs are in that image already.
set -euo pipefail
cd "$(dirname "$0")/.."
keras=$(sed -n 's/.*"keras==\([^"]*\)".*/\1/p' pyproject.toml)  # the version the project pins
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    "keras==$keras" namex==0.1.0 optree==0.20.0
ls -l .whl
