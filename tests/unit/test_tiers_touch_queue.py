"""Load hits refresh their files' mtimes on a background thread, never on the load's I/O thread."""

from __future__ import annotations

import threading
import time

import pytest

from tieredkv_agent.tiers.touches import TouchQueue

pytestmark = pytest.mark.unit


def test_queued_paths_are_touched_in_order_on_another_thread_and_close_finishes_them() -> None:
    seen: list[tuple[str, str]] = []
    queue = TouchQueue(lambda path: seen.append((path, threading.current_thread().name)))
    for n in range(100):
        queue.put(f"/v/{n}")
    queue.close(5.0)
    assert [path for path, _ in seen] == [f"/v/{n}" for n in range(100)]
    assert {name for _, name in seen} == {"tkv-touch"}


def test_a_full_queue_drops_refreshes_and_counts_them_and_a_failing_touch_stops_nothing() -> None:
    gate = threading.Event()
    done: list[str] = []

    def touch(path: str) -> None:
        gate.wait(5.0)
        if path == "/v/bad":
            raise OSError("read-only volume")
        done.append(path)

    queue = TouchQueue(touch, max_pending=2)
    queue.put("/v/first")  # taken by the thread, which then waits on the gate
    deadline = time.monotonic() + 5.0
    while queue._paths and time.monotonic() < deadline:
        time.sleep(0.001)
    for path in ("/v/bad", "/v/ok", "/v/dropped"):
        queue.put(path)
    gate.set()
    queue.close(5.0)
    assert queue.dropped == 1
    assert done == ["/v/first", "/v/ok"]
