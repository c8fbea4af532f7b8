#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 offline from Debian bookworm's
# source package `kubernetes`, with Debian's Go. The result is cached outside the repository; when the three
# binaries are already there and report v1.20.2 this script does nothing.
#
# usage: hack/build-kube.sh [OUT_DIR]     (default: $TIEREDKV_CACHE/kube-1.20.2, TIEREDKV_CACHE=~/.cache/tieredkv)
set -euo pipefail

KUBE_VERSION=v1.20.2
# Bump when the build recipe changes, so machines holding an older build rebuild once.
RECIPE="3: reflect2 1.0.2 + json-iterator 1.1.12 from Debian; OpenAPI zero-value check fixed for Go >= 1.18"
CACHE=${TIEREDKV_CACHE:-$HOME/.cache/tieredkv}
OUT=${1:-$CACHE/kube-1.20.2}
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)

built() {
  local b
  [ "$(cat "$OUT/.recipe" 2>/dev/null)" = "$RECIPE" ] || return 1
  for b in "${BINARIES[@]}"; do
    [ -x "$OUT/$b" ] || return 1
    "$OUT/$b" --version 2>/dev/null | grep -qx "Kubernetes $KUBE_VERSION" || return 1
  done
}

if built; then
  echo "kube $KUBE_VERSION binaries present in $OUT"
  exit 0
fi

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tieredkv-kube-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
step() { echo "[build-kube $(( $(date +%s) - started ))s] $*"; }
step "building Kubernetes $KUBE_VERSION into $OUT (once per machine: about 6 min on an idle 2-core machine, up to 15 under load)"

# Toolchain: Go 1.19 from bookworm, plus two Go libraries newer than the vendored ones: reflect2 1.0.2 (the
# vendored 1.0.1 faults under Go >= 1.18 on the first custom-object write) and json-iterator 1.1.12 (the
# vendored 1.1.10 paired with reflect2 1.0.2 decodes "" as null in custom objects).
GOCODE=/usr/share/gocode/src/github.com
if ! command -v go >/dev/null || [ ! -d $GOCODE/modern-go/reflect2 ] || [ ! -d $GOCODE/json-iterator/go ]; then
  step "1/4 installing Debian's Go toolchain (apt-get)"
  [ "$(id -u)" -eq 0 ] || { echo "need root to apt-get install golang-go (or install it yourself)" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends golang-go make rsync \
    golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
fi

step "2/4 fetching Debian's kubernetes source package (about 30 MB)"
# Fetch the source package through a private apt state so /etc/apt stays untouched.
APT="$WORK/apt"
mkdir -p "$APT/lists/partial" "$APT/parts" "$APT/cache/archives/partial"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$APT/parts/src.sources"
else
  sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >"$APT/parts/src.list"
fi
APT_OPTS=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$APT/parts"
          -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache")
apt-get "${APT_OPTS[@]}" update -qq
(cd "$WORK" && apt-get "${APT_OPTS[@]}" source --download-only -qq kubernetes 2>&1 \
  | grep -v 'unsandboxed' || true)
tar -C "$WORK" -xzf "$WORK"/kubernetes_*.orig.tar.gz
SRC="$WORK/kubernetes-1.20.2"

swap_vendored() {  # swap_vendored <import path>: replace the vendored package's sources with Debian's
  local dst="$SRC/vendor/github.com/$1"
  rm -f "$dst"/*.go "$dst"/*.s
  find "$GOCODE/$1" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$dst"/ \;
}
step "3/4 patching the vendored reflect2, json-iterator and OpenAPI zero-value check"
swap_vendored modern-go/reflect2
swap_vendored json-iterator/go
# The OpenAPI type validator treats a value as null when it DeepEquals reflect.Zero of its type. Under
# Go >= 1.18 an empty string boxed in an interface shares the runtime's zero value, so "" in a custom
# object was rejected as null. Only a real nil is null (the behaviour the code had under older Go).
for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go vendor/github.com/go-openapi/validate/type.go; do
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$SRC/$f"
  grep -q 'if data == nil {$' "$SRC/$f" || { echo "zero-value patch did not apply to $f" >&2; exit 1; }
done

mkdir -p "$SRC/.go/src/k8s.io"
ln -sfn ../../.. "$SRC/.go/src/k8s.io/kubernetes"
step "4/4 compiling kube-apiserver, kube-controller-manager, kube-scheduler (about 1,900 Go packages)"
# Go prints nothing while it compiles; a line every 30 s counts what its build cache (kube's build sets
# GOCACHE to _output/local/go/cache) holds so far. `set +e`: a failed count must not end the ticker.
(
  set +e
  while sleep 30; do
    n=$(find "$SRC/_output/local/go/cache" -type f -name '*-d' 2>/dev/null | wc -l)
    step "    compiling: $n of about 3,200 objects built"
  done
) &
ticker=$!
trap 'kill "$ticker" 2>/dev/null || true; rm -rf "$WORK"' EXIT
(
  cd "$SRC"
  export GOPATH="$SRC/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off HOME="$WORK/home"
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
)
kill "$ticker" 2>/dev/null || true
for b in "${BINARIES[@]}"; do
  install -m 0755 "$SRC/_output/local/bin/linux/amd64/$b" "$OUT/$b"
done
echo "$RECIPE" >"$OUT/.recipe"
built || { echo "build finished but binaries do not report $KUBE_VERSION" >&2; exit 1; }
echo "built kube $KUBE_VERSION into $OUT in $(( $(date +%s) - started ))s"
