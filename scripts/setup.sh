#!/usr/bin/env bash
# Create .venv with a CPU build of PyTorch and diffusionkit installed in editable mode,
# with everything the tests, docs and examples need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build);
# the library itself only asks for torch>=2.1, so users bring their own.
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[test,docs,data]"
echo "diffusionkit installed in .venv ($(.venv/bin/python -c 'import diffusionkit; print(diffusionkit.__version__)'))"
