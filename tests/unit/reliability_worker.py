"""Child-process entry points of the reliability tests, and the block contents both sides recompute.

Two kinds of child:

* `python -m tests.unit.reliability_worker ...` (the kill -9 test): stores blocks through the real
  `BlockFiles.store` (or `FileTier`), announcing `ready` on stdout once set up and `<status> <key hex>`
  after each store that returned, then waits on stdin for the SIGKILL. With `--pause-write K` /
  `--pause-rename K` it stops for good half-way through its K-th block write / just before its K-th
  rename and announces `paused <temp>`.
* `concurrent_worker` (the 8-process test), started with multiprocessing's spawn context.

Every block's bytes derive from its key alone (`block_content`), so a checker can verify any block
file it finds from its path (`key_of_path`).
"""

import argparse
import hashlib
import mmap
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tieredkv_agent.store.blockio import (
    DEFAULT_OPS,
    BlockFiles,
    Durability,
    FileOps,
    LoadStatus,
    StoreStatus,
    probe_o_direct,
)
from tieredkv_agent.store.naming import (
    GROUP_SUFFIX_BYTES,
    KvCacheGroup,
    Namespace,
    RunConfig,
    ensure_namespace,
    make_offload_key,
    namespace_for,
)

CONFIG = RunConfig("org/reliability", 16, 1, "bfloat16", (KvCacheGroup(16, ("l0", "l1")),))
PAGE = 4096
WAIT_S = 30.0
"""Upper bound for any single wait inside a child (a job completion, a barrier)."""


def block_key(label: str, n: int) -> bytes:
    """The offload key of block `n` of a test (sha256 spreads the keys over the hash directories)."""
    return make_offload_key(hashlib.sha256(f"{label}-{n}".encode()).digest(), 0)


def block_content(key: bytes, size: int) -> bytes:
    """The deterministic bytes of `key`'s block: a distinct 64-byte digest per 4 KiB page, repeated."""
    pages = (
        hashlib.blake2b(key + page.to_bytes(4, "big"), digest_size=64).digest() * (PAGE // 64)
        for page in range(-(-size // PAGE))
    )
    return b"".join(pages)[:size]


def key_of_path(path: str | os.PathLike[str]) -> bytes:
    """The offload key of a block file `<blocks_dir>/<h[0:3]>/<h[3:5]>_g<group>/<h>.bin`."""
    p = Path(path)
    group = int(p.parent.name.rpartition("_g")[2])
    return bytes.fromhex(p.name.removesuffix(".bin")) + group.to_bytes(GROUP_SUFFIX_BYTES, "big")


def announce(line: str) -> None:
    """One line to the parent, unbuffered."""
    os.write(1, f"{line}\n".encode())


def wait_for_parent() -> None:
    """Block until the parent kills us or closes our stdin (so an orphaned child never lingers)."""
    sys.stdin.buffer.read()
    sys.exit(0)


class PausingOps(FileOps):
    """Real files; stops for good half-way through the K-th block write or before the K-th publish (link)."""

    def __init__(self, pause_write: int, pause_rename: int) -> None:
        self.pause_write = pause_write
        self.pause_rename = pause_rename
        self.writes = 0
        self.renames = 0
        self.paths: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def write(self, fd: int, data: memoryview) -> int:
        self.writes += 1
        if self.writes != self.pause_write:
            return super().write(fd, data)
        half = data.nbytes // 2 // PAGE * PAGE  # stays 4 KiB-aligned for O_DIRECT
        written = super().write(fd, data[:half])
        if written != half:
            raise OSError(f"half write wrote {written} of {half} bytes")
        announce(f"paused {self.paths[fd]}")
        wait_for_parent()
        raise AssertionError("unreachable")

    def _publishing(self, src: str) -> None:
        self.renames += 1
        if self.renames == self.pause_rename:
            announce(f"paused {src}")
            wait_for_parent()

    def rename_noreplace(self, src: str, dst: str) -> None:
        self._publishing(src)
        super().rename_noreplace(src, dst)

    def link(self, src: str, dst: str) -> None:
        self._publishing(src)
        super().link(src, dst)


def _store_with_block_files(args: argparse.Namespace, keys: list[bytes]) -> None:
    namespace = namespace_for(args.root, CONFIG)
    ensure_namespace(namespace)
    ops: FileOps = DEFAULT_OPS
    if args.pause_write or args.pause_rename:
        ops = PausingOps(args.pause_write, args.pause_rename)
    files = BlockFiles(direct=probe_o_direct(args.root), durability=Durability(args.durability), ops=ops)
    announce("ready")
    for key in keys:
        result = files.store(namespace.block_path(key), block_content(key, args.block))
        if not result.ok:
            sys.exit(f"store of {key.hex()} failed: {result}")
        announce(f"{result.status.value} {key.hex()}")


def _store_with_file_tier(args: argparse.Namespace, keys: list[bytes]) -> None:
    """Store through FileTier, or with `--ram` through the RAM tier layered over it (write-through)."""
    from tieredkv_agent.engine.jobs import BlockJob, CompletionQueue
    from tieredkv_agent.tiers.base import Tier
    from tieredkv_agent.tiers.file import FileTier

    files = FileTier(root_dir=args.root, read_threads=1, write_threads=2, durability=args.durability)
    tier: Tier = files
    if args.ram:
        from tieredkv_agent.tiers.layered import LayeredTier
        from tieredkv_agent.tiers.ram import RamPool

        tier = LayeredTier(ram=RamPool(8 * args.block), lower=files)
    namespace = files.namespace(CONFIG)
    source = memoryview(mmap.mmap(-1, len(keys) * args.block))
    for index, key in enumerate(keys):
        source[index * args.block : (index + 1) * args.block] = block_content(key, args.block)
    queue = CompletionQueue()
    announce("ready")
    per_job = 4
    for job_id, first in enumerate(range(0, len(keys), per_job)):
        chunk = range(first, min(first + per_job, len(keys)))
        blocks = [(keys[i], source[i * args.block : (i + 1) * args.block]) for i in chunk]
        tier.submit_store(BlockJob(job_id, namespace, blocks), queue)
    for _ in range(-(-len(keys) // per_job)):
        result = queue.get(WAIT_S)
        if result is None or not result.success:
            sys.exit(f"store job failed or hung: {result}")
        for key, status in zip(result.keys, result.statuses, strict=True):
            announce(f"{status.value} {key.hex()}")
    tier.shutdown(5.0)


def store_main(argv: list[str]) -> None:
    """The kill -9 child: store keys `label-first` .. `label-(first+count-1)` in a seeded random order."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--label", required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--block", type=int, required=True)
    parser.add_argument("--durability", default=Durability.NONE.value)
    parser.add_argument("--tier", action="store_true", help="store through FileTier instead of BlockFiles")
    parser.add_argument("--ram", action="store_true", help="with --tier: through the RAM tier over FileTier")
    parser.add_argument("--pause-write", type=int, default=0)
    parser.add_argument("--pause-rename", type=int, default=0)
    args = parser.parse_args(argv)
    keys = [block_key(args.label, n) for n in range(args.first, args.first + args.count)]
    random.Random(args.seed).shuffle(keys)
    if args.tier:
        _store_with_file_tier(args, keys)
    else:
        _store_with_block_files(args, keys)
    announce("done")
    wait_for_parent()


# -- the 8-process store/load test ---------------------------------------------------------------


class _Report:
    """What one concurrent worker saw; sent back to the parent as a plain dict."""

    def __init__(self, index: int, mode: str) -> None:
        self.data: dict[str, Any] = {
            "index": index,
            "mode": mode,
            "errors": [],
            "early_missing": 0,
            "racing_ok": 0,
            "racing_missing": 0,
            "stored": [],
            "already_present": 0,
            "final_ok": 0,
        }

    def error(self, message: str) -> None:
        if len(self.data["errors"]) < 50:
            self.data["errors"].append(f"worker {self.data['index']} ({self.data['mode']}): {message}")


def _garbage(view: memoryview) -> None:
    """Fill a load destination with bytes no block has, so stale contents cannot pass for a load."""
    view[:] = b"\xa5" * view.nbytes


class _Blocks:
    """Per-key store and load through BlockFiles, or through FileTier jobs (one key per job)."""

    def __init__(self, root: str, block: int, use_tier: bool) -> None:
        self.block = block
        self.tier: Any = None
        self.files: BlockFiles | None = None
        self.queue: Any = None
        self.job_id = 0
        if use_tier:
            from tieredkv_agent.engine.jobs import CompletionQueue
            from tieredkv_agent.tiers.file import FileTier

            self.tier = FileTier(root_dir=root, read_threads=2, write_threads=2)
            self.namespace: Namespace = self.tier.namespace(CONFIG)
            self.queue = CompletionQueue()
        else:
            self.files = BlockFiles.for_volume(root)
            self.namespace = namespace_for(root, CONFIG)
            ensure_namespace(self.namespace)
        # an aligned buffer (O_DIRECT in place) and an unaligned one (the bounce buffer path)
        self._aligned = memoryview(mmap.mmap(-1, block))
        self._unaligned = memoryview(bytearray(block + 1))[1:]

    def _run_job(self, store: bool, key: bytes, view: memoryview) -> str:
        from tieredkv_agent.engine.jobs import BlockJob

        self.job_id += 1
        job = BlockJob(self.job_id, self.namespace, [(key, view)])
        (self.tier.submit_store if store else self.tier.submit_load)(job, self.queue)
        result = self.queue.get(WAIT_S)
        if result is None:
            return "hung"
        return str(result.statuses[0].value)

    def store(self, key: bytes) -> str:
        """Returns "stored", "present" or an error description."""
        data = block_content(key, self.block)
        if self.files is None:
            status = self._run_job(True, key, memoryview(data))
            return {"done": "stored", "present": "present"}.get(status, status)
        result = self.files.store(self.namespace.block_path(key), data)
        if result.status is StoreStatus.STORED:
            return "stored"
        return "present" if result.status is StoreStatus.ALREADY_PRESENT else str(result)

    def load(self, key: bytes, aligned: bool) -> tuple[str, bytes]:
        """("ok" | "missing" | an error description, the destination's bytes)."""
        view = self._aligned if aligned else self._unaligned
        _garbage(view)
        if self.files is None:
            status = self._run_job(False, key, view)
            return {"done": "ok"}.get(status, status), bytes(view)
        result = self.files.load(self.namespace.block_path(key), view)
        if result.status is LoadStatus.OK:
            return "ok", bytes(view)
        return ("missing" if result.status is LoadStatus.MISSING else str(result)), bytes(view)

    def close(self) -> None:
        if self.tier is not None:
            self.tier.shutdown(5.0)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one concurrent worker does (picklable, for the spawn context)."""

    index: int
    root: str
    label: str
    count: int
    block: int
    use_tier: bool


class _ConcurrentRun:
    """The three phases of one concurrent worker, recording into its report."""

    def __init__(self, spec: WorkerSpec, blocks: _Blocks, report: _Report) -> None:
        self.blocks = blocks
        self.report = report
        self.rng = random.Random(spec.index)
        self.keys = [block_key(spec.label, n) for n in range(spec.count)]
        self.expected = {key: block_content(key, spec.block) for key in self.keys}

    def shuffled(self) -> list[bytes]:
        return self.rng.sample(self.keys, len(self.keys))

    def load(self, key: bytes) -> str:
        """Load `key`: "ok" (bytes checked), "missing", or "error" (recorded)."""
        status, got = self.blocks.load(key, aligned=self.rng.random() < 0.5)
        if status == "ok" and got != self.expected[key]:
            self.report.error(f"load of {key.hex()} returned wrong bytes")
            return "error"
        if status not in ("ok", "missing"):
            self.report.error(f"load of {key.hex()}: {status}")
            return "error"
        return status

    def load_before_any_store(self) -> None:
        for key in self.shuffled():
            if self.load(key) == "missing":
                self.report.data["early_missing"] += 1

    def store_with_racing_loads(self) -> None:
        for key in self.shuffled():
            for racing in (key, *self.rng.sample(self.keys, 2)):
                status = self.load(racing)
                if status != "error":
                    self.report.data[f"racing_{status}"] += 1
            stored = self.blocks.store(key)
            if stored == "stored":
                self.report.data["stored"].append(key.hex())
            elif stored == "present":
                self.report.data["already_present"] += 1
            else:
                self.report.error(f"store of {key.hex()}: {stored}")
            if self.rng.random() < 0.2:
                time.sleep(0.0005)  # vary the interleaving a little

    def load_all(self) -> None:
        for key in self.shuffled():
            status = self.load(key)
            if status == "ok":
                self.report.data["final_ok"] += 1
            elif status == "missing":
                self.report.error(f"load of {key.hex()} after every store returned: missing")


def concurrent_worker(spec: WorkerSpec, barrier: Any, results: Any) -> None:
    """One of the 8 processes: load all (all missing) | store all, racing loads | load all (all ok).

    Phase 1 runs entirely before any worker stores (a barrier separates the phases), so every load
    in it must be a clean MISSING. In phase 2 each worker, in its own key order, loads the key and two
    random ones (ok or missing: other workers may or may not have stored them yet), then stores the key;
    any ok load must hold exactly the key's bytes. Phase 3 loads every key: all must be ok.
    Always puts its report on `results`, errors included.
    """
    report = _Report(spec.index, "tier" if spec.use_tier else "blockfiles")
    blocks: _Blocks | None = None
    try:
        blocks = _Blocks(spec.root, spec.block, spec.use_tier)
        run = _ConcurrentRun(spec, blocks, report)
        barrier.wait(WAIT_S)
        run.load_before_any_store()
        barrier.wait(WAIT_S)
        run.store_with_racing_loads()
        run.load_all()
    except Exception as exc:  # the parent fails the test with this text
        report.error(f"{type(exc).__name__}: {exc}")
    finally:
        if blocks is not None:
            try:
                blocks.close()
            except Exception as exc:
                report.error(f"close: {type(exc).__name__}: {exc}")
        results.put(report.data)


if __name__ == "__main__":
    store_main(sys.argv[1:])
