#!/usr/bin/env bash
# Put Debian's prometheus and promtool binaries into $TIEREDKV_CACHE/tools (default ~/.cache/tieredkv/tools).
# The .deb is downloaded and unpacked, never installed: no system user, no service, no /etc changes.
# The demo and the k8s tests start their own Prometheus on loopback; the unit tests run promtool.
set -euo pipefail
OUT=${1:-${TIEREDKV_CACHE:-$HOME/.cache/tieredkv}/tools}
if [ -x "$OUT/prometheus" ] && [ -x "$OUT/promtool" ] && "$OUT/promtool" --version >/dev/null 2>&1; then
  echo "prometheus and promtool present in $OUT"; exit 0
fi
command -v apt-get >/dev/null || { echo "need apt-get (Debian/Ubuntu) to fetch Debian's prometheus package;" \
  "or put prometheus and promtool binaries into $OUT yourself" >&2; exit 1; }
mkdir -p "$OUT"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
echo "fetching Debian's prometheus package (about 30 MB) into $OUT, without installing it"
(cd "$TMP" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; })
dpkg-deb -x "$TMP"/prometheus_*.deb "$TMP/root"
for b in prometheus promtool; do
  install -m 0755 "$TMP/root/usr/bin/$b" "$OUT/$b.part"
  mv "$OUT/$b.part" "$OUT/$b"
done
"$OUT/promtool" --version | head -1
