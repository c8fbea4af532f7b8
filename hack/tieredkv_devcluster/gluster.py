"""GlusterFS under the dev cluster's `tieredkv-gluster` StorageClass: glusterd, one volume, FUSE clients.

One glusterd per cluster (per state directory), with its own working directory, run directory, CLI socket
and log under `<state>/gluster`. Bricks and clients find glusterd at `<brick host>:24007`, so the port cannot
move; the address can: each glusterd listens on its own loopback address `127.77.x.y` (gluster refuses
127.0.0.1 as a brick host but takes any other 127/8 address), so several clusters on one machine never
meet. One distribute volume (`tkv`) spans two bricks, `<state>/gluster/bricks/b1` and `b2`; every mount of it
is a separate `glusterfs` FUSE client process with its own caches.

Processes and who records them: glusterd runs in the foreground (`-N`) and is recorded by the control plane
like etcd; the brick daemons and FUSE clients daemonize, so they are recorded from their pid files (with
their start time, see `procs`). A brick's socket and log land in gluster's fixed directories under /var/run
and /var/log; their paths are recorded so `down` removes them.

Called from `controlplane.up` / `down` (main thread), the node simulator's main thread (one client per
node) and, standalone through `standalone()`, from tests/gluster and bench/gluster_io.py.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tieredkv_devcluster import procs

VOLUME = "tkv"
GLUSTERD_PORT = 24007
BINARIES = ("glusterd", "gluster", "glusterfs")
BRICKS = 2
TEMP_HASH_REGEX = "^(.+[.]bin)_[0-9]+(_w[0-9a-f]+)?[.]tmp$"
"""`cluster.extra-hash-regex`: a block's temp file `<block>.bin_<random>[_w<tag>].tmp` is placed by the hash
of `<block>.bin`, on the brick of its final name, so the publishing `link(2)` stays on one brick (see
docs/dev-cluster.md: without it, two clients linking one name across bricks can expose DHT link files).
No backslashes: gluster's volfile parser stops at them."""
VOLUME_OPTIONS = {"cluster.extra-hash-regex": TEMP_HASH_REGEX}


def missing_binaries() -> list[str]:
    """The GlusterFS programs not on PATH (`make gluster` installs them)."""
    return [name for name in BINARIES if shutil.which(name) is None]


@dataclass(frozen=True)
class GlusterInfo:
    """What a running server is: recorded in cluster.json under "gluster"."""

    root: str
    """`<state>/gluster`: glusterd's directories, the bricks, client records."""
    address: str
    volume: str = VOLUME
    outside_files: tuple[str, ...] = ()
    """Brick sockets and logs that gluster puts under /var/run/gluster and /var/log/glusterfs."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GlusterInfo:
        return cls(
            root=data["root"],
            address=data["address"],
            volume=data.get("volume", VOLUME),
            outside_files=tuple(data.get("outside_files", ())),
        )

    @property
    def socket(self) -> Path:
        return Path(self.root) / "run" / "glusterd.socket"

    @property
    def clients_dir(self) -> Path:
        return Path(self.root) / "clients"


def pick_address() -> str:
    """A 127.77.x.y address whose port 24007 is free right now."""
    for _ in range(200):
        address = f"127.77.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as probe:
            try:
                probe.bind((address, GLUSTERD_PORT))
            except OSError:
                continue
            return address
    raise RuntimeError(f"no 127.77.x.y address with port {GLUSTERD_PORT} free (or a glusterd on 0.0.0.0)")


def _glusterd_vol(root: Path, address: str) -> str:
    return (
        "volume management\n    type mgmt/glusterd\n"
        f"    option working-directory {root / 'work'}\n"
        f"    option run-directory {root / 'run'}\n"
        f"    option glusterd-sockfile {root / 'run' / 'glusterd.socket'}\n"
        "    option transport-type socket\n    option transport.address-family inet\n"
        f"    option transport.socket.bind-address {address}\n"
        "    option ping-timeout 0\n    option event-threads 1\nend-volume\n"
    )


def cli(info: GlusterInfo, *args: str, check: bool = True) -> str:
    """Run `gluster <args>` against this server's CLI socket; its output."""
    argv = [
        "gluster",
        "--mode=script",
        f"--glusterd-sock={info.socket}",
        f"--log-file={Path(info.root) / 'log' / 'cli.log'}",
        *args,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and out.returncode != 0:
        raise RuntimeError(f"gluster {' '.join(args)} failed: {(out.stdout + out.stderr).strip()}")
    return out.stdout


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_server(root: Path) -> tuple[GlusterInfo, list[procs.ProcessRecord]]:
    """Start glusterd, create and start the volume; (info, [glusterd, bricks...]) (main thread).

    On failure whatever was started is stopped before the error propagates.
    """
    if missing := missing_binaries():
        raise FileNotFoundError(f"GlusterFS is not installed ({', '.join(missing)}): run `make gluster`")
    for sub in ("work", "run", "log", "bricks", "clients"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    address = pick_address()
    info = GlusterInfo(root=str(root), address=address)
    (root / "glusterd.vol").write_text(_glusterd_vol(root, address))
    argv = ["glusterd", "-N", "-f", str(root / "glusterd.vol"), "-l", str(root / "log" / "glusterd.log")]
    _proc, glusterd = procs.spawn("glusterd", [*argv, "--log-level=WARNING"], root / "log" / "glusterd.out")
    records = [glusterd]
    try:
        _wait(lambda: glusterd.alive() and cli(info, "volume", "list") is not None, 30, "glusterd's CLI")
        bricks = [f"{address}:{root / 'bricks' / f'b{n}'}" for n in range(1, BRICKS + 1)]
        cli(info, "volume", "create", VOLUME, "transport", "tcp", *bricks, "force")
        for option, value in VOLUME_OPTIONS.items():
            cli(info, "volume", "set", VOLUME, option, value)
        cli(info, "volume", "start", VOLUME)
        brick_records = _brick_records(root)
        records += brick_records
        info = GlusterInfo(str(root), address, VOLUME, tuple(_outside_files(brick_records)))
    except BaseException:
        for record in reversed(records + _brick_records(root)):
            procs.stop(record, timeout=5)
        raise
    return info, records


def _brick_records(root: Path) -> list[procs.ProcessRecord]:
    """The brick daemons, from the pid files glusterd keeps under run/vols/<volume>/."""
    out = []
    for n, pid_file in enumerate(sorted((root / "run" / "vols" / VOLUME).glob("*.pid")), start=1):
        record = _record_from_pid_file(f"gluster-brick-{n}", pid_file)
        if record is not None:
            out.append(record)
    return out


def _record_from_pid_file(name: str, pid_file: Path) -> procs.ProcessRecord | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    ticks = procs.start_ticks(pid)
    return None if ticks is None else procs.ProcessRecord(name, pid, ticks, str(pid_file))


def _outside_files(records: Sequence[procs.ProcessRecord]) -> Iterator[str]:
    """The `-S <socket>` and `-l <log>` of each brick: files gluster keeps outside our root."""
    for record in records:
        try:
            argv = Path(f"/proc/{record.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for flag in (b"-S", b"-l"):
            if flag in argv[:-1]:
                yield argv[argv.index(flag) + 1].decode()


def mount(info: GlusterInfo, mountpoint: Path, name: str) -> procs.ProcessRecord:
    """Mount the volume at `mountpoint` with a new FUSE client; its record is kept in clients/<name>.json.

    Waits until the mount answers (a stat of its root through FUSE).
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    logs, pid_file = Path(info.root) / "log", info.clients_dir / f"{name}.pid"
    argv = [
        "glusterfs",
        f"--volfile-server={info.address}",
        f"--volfile-id={info.volume}",
        f"--pid-file={pid_file}",
        f"--log-file={logs / f'client-{name}.log'}",
        "--log-level=WARNING",
        str(mountpoint),
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    _wait(lambda: is_mounted(mountpoint), 30, f"the gluster mount at {mountpoint}")
    record = _record_from_pid_file(f"gluster-client-{name}", pid_file)
    if record is None:
        raise RuntimeError(f"the gluster client for {mountpoint} left no pid in {pid_file}")
    (info.clients_dir / f"{name}.json").write_text(json.dumps({**record.to_json(), "mount": str(mountpoint)}))
    return record


def is_mounted(path: Path) -> bool:
    """True when `path` is the root of a gluster FUSE mount in this mount namespace."""
    return str(path.resolve()) in gluster_mounts()


def gluster_mounts(under: Path | None = None) -> list[str]:
    """Mount points of gluster FUSE mounts (optionally only those under `under`), from mountinfo."""
    prefix = str(under.resolve()) + "/" if under is not None else "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        point = fields[4].replace("\\040", " ")
        if fstype == "fuse.glusterfs" and (point + "/").startswith(prefix):
            found.append(point)
    return found


def unmount(name: str, info: GlusterInfo) -> None:
    """Unmount the client `name` (clients/<name>.json) and stop its process (any thread)."""
    rec_file = info.clients_dir / f"{name}.json"
    try:
        data = json.loads(rec_file.read_text())
    except (OSError, ValueError):
        return
    _umount(Path(data["mount"]))
    procs.stop(procs.ProcessRecord.from_json({k: v for k, v in data.items() if k != "mount"}), timeout=5)
    rec_file.unlink(missing_ok=True)


def _umount(point: Path) -> None:
    """umount, lazily if the mount is busy; a path that is no mount is left alone."""
    if not is_mounted(point):
        return
    if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def cleanup(info: GlusterInfo, state_root: Path) -> None:
    """After the processes are stopped: unmount and stop every client left, remove gluster's outside files.

    Every gluster mount under `state_root` is unmounted, recorded or not (e.g. the simulator was SIGKILLed).
    """
    for rec_file in sorted(info.clients_dir.glob("*.json")) if info.clients_dir.exists() else []:
        unmount(rec_file.stem, info)
    for point in gluster_mounts(state_root):
        _umount(Path(point))
    for path in info.outside_files:
        Path(path).unlink(missing_ok=True)


def stop_server(info: GlusterInfo, records: Sequence[procs.ProcessRecord], state_root: Path) -> None:
    """Unmount every client, then stop bricks and glusterd (reverse start order)."""
    cleanup(info, state_root)
    for record in reversed(records):
        procs.stop(record, timeout=10)
    cleanup(info, state_root)


@contextlib.contextmanager
def standalone(root: Path, clients: Sequence[str] = ("client-1", "client-2")) -> Iterator[list[Path]]:
    """A private server with one FUSE mount per name under `root/mnt/<name>`; everything stopped after."""
    info, records = start_server(root / "gluster")
    try:
        yield [(root / "mnt" / name, mount(info, root / "mnt" / name, name))[0] for name in clients]
    finally:
        stop_server(info, records, root)
