"""Shared helpers of the socket API tests, and the child-process client (started with spawn).

`store_in_child` runs in its own process: it makes its own region file, passes it to the agent with the
Hello (so the descriptor crosses a process boundary), stores blocks whose bytes derive from their keys,
and reports the outcome through a queue.
"""

import hashlib
import mmap
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.protocol import CompatProfile, JobDone, none_hash_fingerprint
from tieredkv_agent.store.naming import make_offload_key

BLOCK = 4096
WAIT_S = 10.0
FINGERPRINT = none_hash_fingerprint(b"\x01" * 32)


def profile(namespace: str, fingerprint: str = FINGERPRINT) -> CompatProfile:
    return CompatProfile(
        namespace=namespace, block_bytes=BLOCK, hash_algo="sha256", none_hash_fingerprint=fingerprint
    )


def key(index: int, salt: str = "") -> bytes:
    return make_offload_key(hashlib.sha256(f"{salt}{index}".encode()).digest(), 0)


def content(k: bytes) -> bytes:
    return random.Random(k).randbytes(BLOCK)


@dataclass
class Region:
    """A region file as vLLM makes one: an mmap'd file in /dev/shm (else a temp dir), and its fd."""

    path: str
    fd: int
    size: int
    map: mmap.mmap

    def slot(self, index: int) -> bytes:
        return self.map[index * BLOCK : (index + 1) * BLOCK]

    def fill(self, index: int, data: bytes) -> None:
        self.map[index * BLOCK : (index + 1) * BLOCK] = data


def shm_dir(fallback: str) -> str:
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else fallback


@contextmanager
def region_file(size: int, directory: str | None = None) -> Iterator[Region]:
    """A region file of `size` bytes, unlinked and closed afterwards."""
    fd, path = tempfile.mkstemp(prefix="vllm_offload_tkvtest_", suffix=".mmap", dir=directory)
    try:
        os.ftruncate(fd, size)
        mapped = mmap.mmap(fd, size, mmap.MAP_SHARED) if size else mmap.mmap(-1, 1)
        try:
            yield Region(path, fd, size, mapped)
        finally:
            mapped.close()
    finally:
        os.close(fd)
        Path(path).unlink()


def wait_jobs(client: AgentClient, count: int) -> list[JobDone]:
    """Poll until `count` JobDones arrived (or WAIT_S passed)."""
    import time

    deadline = time.monotonic() + WAIT_S
    done: list[JobDone] = []
    while len(done) < count and time.monotonic() < deadline:
        done += client.poll()
        time.sleep(0.005)
    return done


def store_in_child(socket_path: str, namespace: str, salt: str, blocks: int, queue: Any) -> None:
    """Child process: store `blocks` blocks keyed with `salt`; put (success flags, error text)."""
    try:
        with region_file(blocks * BLOCK, shm_dir(tempfile.gettempdir())) as region:
            keys = [key(index, salt) for index in range(blocks)]
            for index, k in enumerate(keys):
                region.fill(index, content(k))
            with AgentClient(
                socket_path,
                instance_id=f"child/{salt}",
                vllm_version="0.33.0",
                profile=profile(namespace),
                region_fd=region.fd,
                region_bytes=region.size,
                timeout_s=WAIT_S,
            ) as client:
                client.submit_store(7, namespace, keys, list(range(blocks)))
                done = wait_jobs(client, 1)
                drained = client.drain(WAIT_S)
            queue.put(([d.success for d in done], drained, ""))
    except Exception as exc:
        queue.put(([], False, repr(exc)))
