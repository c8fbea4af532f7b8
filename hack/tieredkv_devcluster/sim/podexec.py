"""Exec one container's command inside a private mount namespace with its volumes bind-mounted.

Run by the pod supervisor as `python -m tieredkv_devcluster.sim.podexec PLAN.json`; it becomes the
container process (execvpe), so its PID is the one the supervisor records. Needs root (CAP_SYS_ADMIN).

A volumeMount with `mountPropagation: Bidirectional` (a CSI node plugin's kubelet directory) stays a peer of
the node's mount: the simulator first makes that host directory a shared mount (`share_host_dir`), and here
every other mount is made private one by one instead of all at once, so what the container mounts below it
reaches the node, as with a real container runtime.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000
MS_SHARED = 0x100000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source else None
    _check(_libc.mount(src, target.encode(), None, flags, None), f"mount {source} -> {target}")


def share_host_dir(path: Path) -> None:
    """Make `path` a shared mount point in the simulator's namespace (a bind onto itself), for Bidirectional
    volumeMounts of it; `unshare_host_dir` undoes it at shutdown. Called by the pod controller."""
    path.mkdir(parents=True, exist_ok=True)
    _mount(str(path), str(path), MS_BIND)
    _mount(None, str(path), MS_SHARED)


def unshare_host_dir(path: Path) -> None:
    _check(_libc.umount2(str(path).encode(), MNT_DETACH), f"unmount {path}")


def _mount_points() -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split(" ")[4].replace("\\040", " ") for line in lines]


def _make_private(keep: list[str]) -> None:
    """Every mount private, except those at or below a path in `keep` (they stay peers of the node's)."""
    if not keep:
        _mount(None, "/", MS_REC | MS_PRIVATE)
        return
    for point in _mount_points():
        if any(point == k or point.startswith(k.rstrip("/") + "/") for k in keep):
            continue
        try:
            _mount(None, point, MS_PRIVATE)
        except OSError:
            continue  # a point hidden under a later mount: that later one is made private itself


def enter_namespace(mounts: list[dict[str, object]]) -> None:
    """unshare(CLONE_NEWNS), make mounts private, then bind every mount (read-only where asked)."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS) (the simulator needs root)")
    _make_private([str(m["source"]) for m in mounts if m.get("bidirectional")])
    for m in mounts:
        source, target = str(m["source"]), str(m["target"])
        if os.path.normpath(target) == "/":
            raise OSError(f"refusing to mount over / ({source})")
        if not Path(source).exists():
            Path(source).mkdir(parents=True)  # as kubelet does for a subPath that does not exist yet
        if Path(source).is_dir():
            Path(target).mkdir(parents=True, exist_ok=True)
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).touch(exist_ok=True)
        _mount(source, target, MS_BIND | MS_REC)
        if m.get("read_only"):
            _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text())
    try:
        enter_namespace(plan["mounts"])
        if plan.get("workdir"):
            os.chdir(plan["workdir"])
        os.execvpe(plan["argv"][0], plan["argv"], plan["env"])  # does not return
    except OSError as exc:
        print(f"tieredkv-sim: cannot start container: {exc}", file=sys.stderr, flush=True)
        return 127 if isinstance(exc, FileNotFoundError) else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv))
