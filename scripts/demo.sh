#!/usr/bin/env bash
# Install everything (if needed) and run the TriSpec demo. Extra args go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${TRISPEC_VENV:-.venv}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec "$VENV/bin/trispec-vllm" demo "$@"
