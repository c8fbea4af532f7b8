"""Jobs cut off by a lost connection: the agent may still be doing their I/O, so their slots stay held.

The agent here is a fake that accepts the Hello, takes jobs and never answers them, then drops the
connection: exactly an agent that died (or was cut off) mid-job.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tieredkv_agent.api.framing import FrameEncoder, client_decoder
from tieredkv_agent.api.protocol import Hello, HelloOk, Load, Store
from tieredkv_agent.standin.driver import ReqContext, TransferJob
from tieredkv_agent.standin.engine import build_tier, engine_spec, prompt, request_keys
from tieredkv_agent.standin.region import SharedRegion
from tieredkv_agent.vllm import TieredKVTier, compat

pytestmark = pytest.mark.unit

BLOCK = 4096
GRACE_S = 0.3


class SilentAgent:
    """Accepts one connection, answers its Hello, records its jobs and never answers them (own thread)."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.jobs: list[int] = []
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        decoder, encoder = client_decoder(), FrameEncoder()
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 4)
            except OSError:
                return
            for fd in fds:
                os.close(fd)
            if not data:
                return
            for message in decoder.feed(data):
                if isinstance(message, Hello):
                    slots = message.region_bytes // message.profile.block_bytes
                    ok = HelloOk(
                        version=1,
                        agent_version="silent",
                        region_slots=slots,
                        max_frame_bytes=1 << 22,
                        max_keys=1024,
                        max_inflight_jobs=64,
                    )
                    conn.sendall(encoder.encode(ok))
                elif isinstance(message, Store | Load):
                    self.jobs.append(message.job_id)

    def die(self) -> None:
        assert self.conn is not None
        self.conn.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self.listener.close()


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[tuple[TieredKVTier, SilentAgent]]:
    agent = SilentAgent(tmp_path / "agent.sock")
    region = SharedRegion(f"cut-{os.getpid()}", 8, BLOCK)
    entry = {
        "type": "TieredKVTier",
        "module_path": "tieredkv_agent.vllm",
        "socket_path": str(tmp_path / "agent.sock"),
        "startup_wait_s": 5.0,
        "release_grace_s": GRACE_S,
    }
    tier = build_tier(entry, engine_spec(environ={"PYTHONHASHSEED": "7"}), region.view)
    yield tier, agent
    tier.shutdown()
    region.close()


def submit(tier: TieredKVTier, agent: SilentAgent, job_id: int, *, load: bool) -> None:
    keys = request_keys(engine_spec(environ={"PYTHONHASHSEED": "7"}), prompt(job_id, 16 * 2))
    job = TransferJob(job_id, keys, np.arange(2), load, ReqContext(f"r{job_id}"))
    (tier.submit_load if load else tier.submit_store)(job)
    deadline = time.monotonic() + 5
    while job_id not in agent.jobs and time.monotonic() < deadline:
        time.sleep(0.005)


def poll_until(tier: TieredKVTier, want: int, timeout_s: float = 5.0) -> tuple[list[Any], float]:
    started, results = time.monotonic(), []
    while len(results) < want and time.monotonic() - started < timeout_s:
        results += tier.get_finished_jobs()
        time.sleep(0.005)
    return results, time.monotonic() - started


def test_a_cut_off_load_is_failed_at_once_with_a_deferred_release_set_only_after_the_grace(
    plugin: tuple[TieredKVTier, SilentAgent],
) -> None:
    tier, agent = plugin
    submit(tier, agent, 1, load=True)
    agent.die()
    (result,), waited = poll_until(tier, 1)
    assert not result.success and waited < GRACE_S
    assert result.deferred_release is not None and not result.deferred_release.is_set()
    assert tier.has_pending_work()
    time.sleep(GRACE_S)
    tier.get_finished_jobs()
    assert result.deferred_release.is_set() and not tier.has_pending_work()


def test_a_cut_off_store_is_reported_failed_only_after_the_grace(
    plugin: tuple[TieredKVTier, SilentAgent],
) -> None:
    tier, agent = plugin
    submit(tier, agent, 2, load=False)
    agent.die()
    (result,), waited = poll_until(tier, 1)
    assert not result.success and waited >= GRACE_S
    assert result.deferred_release is None


def test_without_deferred_release_a_cut_off_load_is_held_back_like_a_store(
    plugin: tuple[TieredKVTier, SilentAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat, "supports_deferred_release", lambda: False)  # vLLM 0.32 / 0.33
    tier, agent = plugin
    submit(tier, agent, 3, load=True)
    agent.die()
    (result,), waited = poll_until(tier, 1)
    assert not result.success and waited >= GRACE_S


def test_drain_returns_only_when_every_cut_off_slot_is_released(
    plugin: tuple[TieredKVTier, SilentAgent],
) -> None:
    tier, agent = plugin
    submit(tier, agent, 4, load=True)
    submit(tier, agent, 5, load=False)
    agent.die()
    results, _ = poll_until(tier, 1)
    started = time.monotonic()
    tier.drain_jobs()
    assert time.monotonic() - started >= GRACE_S * 0.5
    results += tier.get_finished_jobs()
    assert sorted(r.job_id for r in results) == [4, 5]
    assert all(r.deferred_release is None or r.deferred_release.is_set() for r in results)
    assert not tier.has_pending_work()
