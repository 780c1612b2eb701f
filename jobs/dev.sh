#!/usr/bin/env bash
# Developer entry point: `bash jobs/dev.sh demo` or `bash jobs/dev.sh test`.
# Both create .venv (torch 2.11 + torchaudio 2.11 and the rest of pyproject.toml) when it is
# missing or pyproject.toml changed, so a fresh clone needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

setup() {
  local stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test]"
    rm -f .venv/.installed-*; touch "$stamp"
  fi
  # the authors' tokenizer code, the tests' reference for codes (tests/authors_reference.py): downloaded, never
  # installed (it pins an old transformers)
  if ! ls .cache/boson-multimodal/boson_multimodal-0.1.1-*.whl >/dev/null 2>&1; then
    .venv/bin/python -m pip download -q --no-deps boson-multimodal==0.1.1 -d .cache/boson-multimodal
  fi
  export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
}

case "${1:-}" in
  setup) setup ;;
  demo)  # the corpus first (written once, by the demo, not by the driver), then the run
    setup; shift; python -m demo "demo_data/demo-{000..003}.tar"; python -m pipeline.run configs/demo.yaml "$@" ;;
  test)
    setup; shift
    python -m pytest -q --durations=25 "$@"
    ;;
  *) echo "usage: bash jobs/dev.sh {setup|demo|test} [args]" >&2; exit 2 ;;
esac
