#!/usr/bin/env bash
# Install Debian's GlusterFS server and FUSE client (glusterfs-server, glusterfs-client) for the dev cluster's
# `tieredkv-gluster` StorageClass. Installed with apt-get (the translators live at paths compiled into the
# binaries, so unpacking is not enough) but never started as a service: while apt-get runs, a policy-rc.d
# that refuses every service start is in place (the one already there is kept), and nothing is enabled.
# The dev cluster starts its own glusterd, with its own working directory, and stops it by PID.
set -euo pipefail
have() { command -v glusterd >/dev/null && command -v glusterfs >/dev/null && command -v gluster >/dev/null; }
if have; then
  echo "glusterfs present: $(glusterfs --version | head -1)"; exit 0
fi
command -v apt-get >/dev/null || { echo "need apt-get (Debian/Ubuntu) for glusterfs-server and glusterfs-client;" \
  "or install GlusterFS >= 10 yourself" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "installing glusterfs needs root (apt-get)" >&2; exit 1; }
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# tieredkv hack/get-gluster.sh: no service starts while glusterfs is installed\nexit 101\n' > "$POLICY"
  chmod 0755 "$POLICY"
  trap 'rm -f "$POLICY"' EXIT
fi
echo "installing Debian's glusterfs-server and glusterfs-client (about 15 MB), without starting glusterd"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends glusterfs-server glusterfs-client >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends glusterfs-server glusterfs-client >/dev/null; }
have || { echo "glusterd/glusterfs/gluster still missing after apt-get" >&2; exit 1; }
glusterfs --version | head -1
