#!/usr/bin/env bash
# Submit the offline demo to a Ray cluster as a Ray job (the same way a real run is submitted).
#   RAY_ADDRESS=http://127.0.0.1:8265 bash jobs/submit_demo.sh [key=value ...]
# DEMO_DATA: the folder of the demo corpus (default demo_data/), written here first unless it is there.
# Paths are made absolute: the job runs in a copy of this folder that Ray unpacks on the head node.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
: "${DEMO_DATA:=$PWD/demo_data}"
# the corpus is written here, before submitting: the job reads it by absolute path
python -m demo "$DEMO_DATA/demo-{000..003}.tar"
exec ray job submit --address "$RAY_ADDRESS" --working-dir . --runtime-env jobs/runtime_env.yaml -- \
  python -m pipeline.run configs/demo.yaml \
  "source.urls=[\"$DEMO_DATA/demo-{000..003}.tar\"]" "output.dir=$PWD/outputs/demo" "$@"
