#!/usr/bin/env bash
# Every GPU measurement in one call (at most ~8 minutes on one GPU): writes gpu_check.json and prints a table.
#   bash jobs/gpu_check.sh                 # on the GPU machine, from the repository root
#   bash jobs/gpu_check.sh --download      # on a machine with the package registry: fetch the wheels first
# The GPU machine has python 3.12, torch, torchaudio, transformers, numpy, scipy and pyarrow; what else
# jobs/gpu_check.py needs installs from wheels under .gpu_wheels/ (git-ignored, at most 48 MiB), fetched here
# where the registry is reachable. Today it needs nothing else: codec/ and demo/ import only those packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=.gpu_wheels
EXTRA=()  # pip requirement specifiers beyond the machine's packages, pinned; none needed today
if [[ "${1:-}" == "--download" ]]; then
    mkdir -p "$WHEELS"
    if ((${#EXTRA[@]})); then
        "$PYTHON" -m pip download --only-binary=:all: --python-version 3.12 --no-deps -d "$WHEELS" "${EXTRA[@]}"
    fi
    du -sh "$WHEELS"
    shift
fi
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PYTHON" -m pip install --no-index --no-deps --quiet "$WHEELS"/*.whl
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PYTHON" jobs/gpu_check.py --json gpu_check.json "$@"
