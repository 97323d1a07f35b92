#!/usr/bin/env bash
# Create .venv with every pinned dependency (requirements/dev.lock, hash-checked) and the project.
# Usage: scripts/install.sh            (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: Python 3.11 is required; $python is $("$python" --version 2>&1)" >&2
    echo "       set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r requirements/bootstrap.lock
# Byte-compile at install time: the interpreter may be told not to write .pyc files, and without
# them every start of a pipeline stage recompiles DVC, pandas and LightGBM from source.
.venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode --require-hashes \
    -r requirements/dev.lock
.venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode --no-deps -e .
echo "installed into .venv ($(.venv/bin/python --version))"
