"""Child processes of the abuse suite: one well-behaved client and the misbehaving ones.

`python -m tests.unit.abuse_worker CASE SOCKET [ARGS]` runs one case against a running agent and prints
one JSON line with what it saw. Each case is what a hostile or broken pod on the node could do; the test
(`test_agent_abuse.py`) checks the agent's answer, that it stays alive and bounded, and that the
well-behaved client running meanwhile loses no bytes and little throughput.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import select
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tieredkv_agent.api.client import AgentClient
from tieredkv_agent.api.framing import FrameEncoder, server_decoder
from tieredkv_agent.api.protocol import (
    PROTOCOL_VERSION,
    CompatProfile,
    Drain,
    Error,
    Hello,
    HelloOk,
    JobDone,
    Load,
    ProtocolError,
    ServerMessage,
    Store,
    none_hash_fingerprint,
)
from tieredkv_agent.store.naming import make_offload_key

NAMESPACE = "org_abuse_0123456789ab"
"""The good client's namespace (and the one the block-size abuser claims with another size)."""
GOOD_BLOCK = 64 * 1024
GOOD_SLOTS = 32
WAIT_S = 20.0
FINGERPRINT = none_hash_fingerprint(b"\x02" * 32)


def key_of(salt: str, index: int) -> bytes:
    return make_offload_key(hashlib.sha256(f"{salt}-{index}".encode()).digest(), 0)


def content(k: bytes, size: int) -> bytes:
    seed = hashlib.blake2b(k, digest_size=64).digest()
    return (seed * (size // 64 + 1))[:size]


def profile(namespace: str, block: int) -> CompatProfile:
    return CompatProfile(
        namespace=namespace, block_bytes=block, hash_algo="sha256", none_hash_fingerprint=FINGERPRINT
    )


def region(size: int) -> tuple[int, mmap.mmap]:
    """A region file as vLLM makes one, already unlinked: its descriptor and a mapping of it."""
    directory = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    fd, path = tempfile.mkstemp(prefix="vllm_offload_abuse_", suffix=".mmap", dir=directory)
    Path(path).unlink()
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size, mmap.MAP_SHARED)


class Raw:
    """A hand-driven protocol client: sends what it is told, reads replies only when asked."""

    def __init__(self, socket_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(socket_path)
        self.encoder = FrameEncoder()
        self.decoder = server_decoder()
        self.pending: list[ServerMessage | ProtocolError] = []

    def hello(self, namespace: str, block: int, fd: int, size: int) -> ServerMessage | ProtocolError:
        hello = Hello(
            version=PROTOCOL_VERSION,
            instance_id="abuser/0\nFORGED log line",
            vllm_version="0.33.0",
            profile=profile(namespace, block),
            region_bytes=size,
        )
        socket.send_fds(self.sock, [self.encoder.encode(hello)], [fd])
        return self.next()

    def send(self, message: Store | Load | Drain) -> None:
        self.sock.sendall(self.encoder.encode(message))

    def next(self) -> ServerMessage | ProtocolError:
        while not self.pending:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the agent closed the connection")
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)


# -- the well-behaved client ------------------------------------------------------------------------


def good(socket_path: str, until: str, salt: str) -> dict[str, Any]:
    """Store and load back blocks, verifying every byte, for `until` seconds or until the file `until`
    exists; blocks moved per second."""
    stop = Path(until) if not until.replace(".", "", 1).isdigit() else None
    seconds = float(until) if stop is None else 3600.0
    fd, mapped = region(GOOD_BLOCK * GOOD_SLOTS)
    half = GOOD_SLOTS // 2
    moved = wrong = failed = 0
    started = time.monotonic()
    with AgentClient(
        socket_path,
        instance_id=f"good/{salt}",
        vllm_version="0.33.0",
        profile=profile(NAMESPACE, GOOD_BLOCK),
        region_fd=fd,
        region_bytes=GOOD_BLOCK * GOOD_SLOTS,
        timeout_s=WAIT_S,
    ) as client:
        round_ = 0
        while time.monotonic() - started < seconds and not (stop is not None and stop.exists()):
            keys = [key_of(f"{salt}-{round_}", index) for index in range(half)]
            for slot, k in enumerate(keys):
                mapped[slot * GOOD_BLOCK : (slot + 1) * GOOD_BLOCK] = content(k, GOOD_BLOCK)
            client.submit_store(2 * round_, NAMESPACE, keys, list(range(half)))
            done = _wait(client, 1)
            failed += sum(not d.success for d in done) + (1 - len(done))
            client.submit_load(2 * round_ + 1, NAMESPACE, keys, list(range(half, GOOD_SLOTS)))
            done = _wait(client, 1)
            failed += sum(not d.success for d in done) + (1 - len(done))
            for index, k in enumerate(keys):
                slot = half + index
                if mapped[slot * GOOD_BLOCK : (slot + 1) * GOOD_BLOCK] != content(k, GOOD_BLOCK):
                    wrong += 1
            moved += 2 * half
            round_ += 1
    elapsed = time.monotonic() - started
    return {"blocks_per_s": moved / elapsed, "wrong": wrong, "failed": failed, "rounds": round_}


def _wait(client: AgentClient, count: int) -> list[JobDone]:
    deadline = time.monotonic() + WAIT_S
    done: list[JobDone] = []
    while len(done) < count and time.monotonic() < deadline:
        done += client.poll()
        time.sleep(0.001)
    return done


# -- the abusers ------------------------------------------------------------------------------------


def shrink(socket_path: str) -> dict[str, Any]:
    """Store a block, truncate the region file to nothing, then store and load through it."""
    fd, _mapped = region(GOOD_BLOCK * 4)
    raw = Raw(socket_path)
    assert isinstance(raw.hello(NAMESPACE, GOOD_BLOCK, fd, GOOD_BLOCK * 4), HelloOk)
    k = key_of("shrink", 0)
    os.pwrite(fd, content(k, GOOD_BLOCK), 0)
    raw.send(Store(job_id=1, namespace=NAMESPACE, keys=[k], slots=[0]))
    first = raw.next()
    os.ftruncate(fd, 0)
    raw.send(Store(job_id=2, namespace=NAMESPACE, keys=[key_of("shrink", 1)], slots=[1]))
    store = raw.next()
    raw.send(Load(job_id=3, namespace=NAMESPACE, keys=[k], slots=[2]))
    load = raw.next()
    return {
        "first_ok": isinstance(first, JobDone) and first.success,
        "store": _describe(store),
        "load": _describe(load),
    }


def slow_reader(socket_path: str) -> dict[str, Any]:
    """Ask for replies (Drains) and never read one; how long until the agent cuts the connection."""
    fd, _mapped = region(GOOD_BLOCK)
    raw = Raw(socket_path)
    assert isinstance(raw.hello(NAMESPACE, GOOD_BLOCK, fd, GOOD_BLOCK), HelloOk)
    frames = b"".join(raw.encoder.encode(Drain(request_id=n)) for n in range(1000))
    started = time.monotonic()
    raw.sock.settimeout(2.0)
    while time.monotonic() - started < WAIT_S:
        try:
            raw.sock.sendall(frames)
        except (BrokenPipeError, ConnectionResetError):
            return {"cut_off": True, "seconds": time.monotonic() - started}
        except TimeoutError:
            continue  # the agent's reader is behind; keep pushing
    return {"cut_off": False, "seconds": time.monotonic() - started}


def stuck(socket_path: str) -> dict[str, Any]:
    """Fill the socket with unread replies, say so, then hold the connection until killed."""
    fd, _mapped = region(GOOD_BLOCK)
    raw = Raw(socket_path)
    assert isinstance(raw.hello(NAMESPACE, GOOD_BLOCK, fd, GOOD_BLOCK), HelloOk)
    raw.sock.sendall(b"".join(raw.encoder.encode(Drain(request_id=n)) for n in range(20_000)))
    print(json.dumps({"stuck": True}), flush=True)
    time.sleep(3600)
    return {}


def partial(socket_path: str, connections: str = "12") -> dict[str, Any]:
    """Open connections that each send 1 MiB of a 4 MiB frame and stop; how many the agent closed."""
    socks = []
    cut_while_sending = 0
    for _ in range(int(connections)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(socket_path)
        try:
            sock.sendall(struct.pack(">I", 4 * 1024 * 1024 - 16) + b"\0" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            cut_while_sending += 1  # refused before the MiB was in (a limit hit mid-send)
            sock.close()
            continue
        socks.append(sock)
    closed = cut_while_sending + _closed_by_agent(socks, 1.0)
    for sock in socks:
        sock.close()
    return {"opened": int(connections), "closed": closed}


def flood(socket_path: str, connections: str = "40") -> dict[str, Any]:
    """Open many connections without a Hello; how many were refused with an error."""
    socks = []
    for _ in range(int(connections)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(socket_path)
        socks.append(sock)
    refused = _closed_by_agent(socks, 1.0)
    for sock in socks:
        sock.close()
    return {"opened": len(socks), "refused": refused}


def wrong_block(socket_path: str) -> dict[str, Any]:
    """Claim the good client's namespace with another block size."""
    fd, _mapped = region(GOOD_BLOCK * 4)
    return {"hello": _describe(Raw(socket_path).hello(NAMESPACE, GOOD_BLOCK * 2, fd, GOOD_BLOCK * 4))}


def tiny_blocks(socket_path: str) -> dict[str, Any]:
    """One-byte blocks in a namespace of its own: store 256 of them (the RAM pool must not size itself)."""
    fd, _mapped = region(256)
    raw = Raw(socket_path)
    namespace = "org_tiny_0123456789ab"
    hello = raw.hello(namespace, 1, fd, 256)
    keys = [key_of("tiny", index) for index in range(256)]
    raw.send(Store(job_id=1, namespace=namespace, keys=keys, slots=list(range(256))))
    return {"hello": _describe(hello), "store": _describe(raw.next())}


def bad_namespace(socket_path: str) -> dict[str, Any]:
    fd, _mapped = region(GOOD_BLOCK)
    return {"hello": _describe(Raw(socket_path).hello("x\ny_0123456789ab", GOOD_BLOCK, fd, GOOD_BLOCK))}


def too_much_in_flight(socket_path: str, slots: str = "64", keys_: str = "300") -> dict[str, Any]:
    """A Store of more bytes than a connection may stage (run in chunks, its bytes verified by a Load),
    then one of more keys than a connection may have in flight (refused)."""
    count = int(slots)
    fd, mapped = region(GOOD_BLOCK * count * 2)
    raw = Raw(socket_path)
    assert isinstance(raw.hello(NAMESPACE, GOOD_BLOCK, fd, GOOD_BLOCK * count * 2), HelloOk)
    keys = [key_of("inflight", index) for index in range(count)]
    for slot, k in enumerate(keys):
        mapped[slot * GOOD_BLOCK : (slot + 1) * GOOD_BLOCK] = content(k, GOOD_BLOCK)
    raw.send(Store(job_id=1, namespace=NAMESPACE, keys=keys, slots=list(range(count))))
    big_store = _describe(raw.next())
    raw.send(Load(job_id=2, namespace=NAMESPACE, keys=keys, slots=list(range(count, 2 * count))))
    big_load = _describe(raw.next())
    wrong = sum(
        mapped[(count + i) * GOOD_BLOCK : (count + i + 1) * GOOD_BLOCK] != content(k, GOOD_BLOCK)
        for i, k in enumerate(keys)
    )
    many = [key_of("many", index) for index in range(int(keys_))]
    raw.send(Store(job_id=3, namespace=NAMESPACE, keys=many, slots=[0] * len(many)))
    return {"big_store": big_store, "big_load": big_load, "wrong": wrong, "many_keys": _describe(raw.next())}


def _describe(message: ServerMessage | ProtocolError) -> dict[str, Any]:
    if isinstance(message, Error):
        return {
            "type": "error",
            "code": message.code.name,
            "message": message.message,
            "fatal": message.fatal,
        }
    if isinstance(message, JobDone):
        return {"type": "job_done", "success": message.success, "reason": message.reason}
    return {"type": type(message).__name__}


def _closed_by_agent(socks: list[socket.socket], seconds: float) -> int:
    """How many of these connections the agent closed within `seconds` (after an Error, if it sent one)."""
    open_ = {sock.fileno(): sock for sock in socks}
    closed = 0
    deadline = time.monotonic() + seconds
    while open_ and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(open_), [], [], left)
        for fd in ready:
            try:
                data = open_[fd].recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                del open_[fd]
                closed += 1
    return closed


CASES: dict[str, Callable[..., dict[str, Any]]] = {
    "good": good,
    "shrink": shrink,
    "slow_reader": slow_reader,
    "stuck": stuck,
    "partial": partial,
    "flood": flood,
    "wrong_block": wrong_block,
    "tiny_blocks": tiny_blocks,
    "bad_namespace": bad_namespace,
    "too_much_in_flight": too_much_in_flight,
}


def several(socket_path: str, *cases: str) -> dict[str, Any]:
    """Run argument-less cases one after the other in this process (one interpreter start for all)."""
    return {case: CASES[case](socket_path) for case in cases}


if __name__ == "__main__":
    if sys.argv[1] == "several":
        print(json.dumps(several(*sys.argv[2:])), flush=True)
    else:
        print(json.dumps(CASES[sys.argv[1]](*sys.argv[2:])), flush=True)
