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
# Right after `ray start` the head's job agent may not have registered yet: Ray then refuses the submission ("No
# available agent to submit job, please try again later"), so that one answer is retried, for up to a minute.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for attempt in 1 2 3 4 5 6 7 8 9 10 11 12; do
  status=0
  ray job submit --address "$RAY_ADDRESS" --working-dir . --runtime-env jobs/runtime_env.yaml -- \
    python -m pipeline.run configs/demo.yaml \
    "source.urls=[\"$DEMO_DATA/demo-{000..003}.tar\"]" "output.dir=$PWD/outputs/demo" "$@" 2>&1 | tee "$log" || status=$?
  if [ "$status" -eq 0 ] || ! grep -q "No available agent to submit job" "$log"; then
    exit "$status"
  fi
  echo "submit_demo: the head's job agent is not up yet; trying again in 5 s ($attempt/12)" >&2
  sleep 5
done
exit "$status"
