#!/usr/bin/env bash
# Submit the offline demo to a Ray cluster as a Ray job (the same way a real run is submitted).
#   RAY_ADDRESS=http://127.0.0.1:8265 bash jobs/submit_demo.sh [key=value ...]
# Paths are made absolute: the job runs in a copy of this folder that Ray unpacks on the head node.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
exec ray job submit --address "$RAY_ADDRESS" --working-dir . --runtime-env jobs/runtime_env.yaml -- \
  python -m pipeline.run configs/demo.yaml \
  "source.urls=[\"$PWD/demo_data/demo-{000..003}.tar\"]" "output.dir=$PWD/outputs/demo" "$@"
