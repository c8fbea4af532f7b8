"""The plugin's batched lookups: known verdicts at once, unknown keys asked once per step, off-thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from tieredkv_agent.vllm.lookups import AsyncLookups, Verdict

pytestmark = pytest.mark.unit


class FakeAgent:
    """Answers from a dict of verdicts and records each batch it was asked (the lookup thread)."""

    def __init__(self, present: dict[bytes, Verdict]) -> None:
        self.present = present
        self.batches: list[tuple[list[bytes], str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, keys: Sequence[bytes], request_id: str) -> list[Verdict]:
        self.gate.wait(5)
        self.batches.append((list(keys), request_id))
        return [self.present.get(key, False) for key in keys]


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent({b"a": True, b"b": True, b"c": False})


@pytest.fixture
def lookups(agent: FakeAgent) -> Iterator[AsyncLookups]:
    made = AsyncLookups(agent)
    yield made
    made.close()


def settle(lookups: AsyncLookups, key: bytes, request: str) -> Verdict:
    deadline = time.monotonic() + 5
    while (verdict := lookups.lookup(key, request)) is None and time.monotonic() < deadline:
        time.sleep(0.001)
    return verdict


def test_an_unknown_key_is_answered_none_at_once_and_asked_only_when_the_step_ends(
    lookups: AsyncLookups, agent: FakeAgent
) -> None:
    assert lookups.lookup(b"a", "r1") is None
    assert lookups.lookup(b"b", "r1") is None
    time.sleep(0.05)
    assert agent.batches == []
    lookups.flush()
    assert settle(lookups, b"a", "r1") is True
    assert lookups.lookup(b"b", "r1") is True
    assert agent.batches == [([b"a", b"b"], "r1")]


def test_a_verdict_is_kept_while_a_request_needs_it_and_shared_with_a_second_request(
    lookups: AsyncLookups, agent: FakeAgent
) -> None:
    lookups.lookup(b"c", "r1")
    lookups.flush()
    assert settle(lookups, b"c", "r1") is False
    assert lookups.lookup(b"c", "r2") is False
    lookups.forget("r1")
    assert lookups.lookup(b"c", "r2") is False
    lookups.forget("r2")
    assert lookups.lookup(b"c", "r3") is None  # nobody needed it any more: asked again
    assert len(agent.batches) == 1


def test_a_failed_load_marks_its_keys_missing_even_when_the_agent_said_hit(lookups: AsyncLookups) -> None:
    lookups.lookup(b"a", "r1")
    lookups.flush()
    assert settle(lookups, b"a", "r1") is True
    lookups.mark_miss([b"a"])
    assert lookups.lookup(b"a", "r1") is False


def test_an_agent_retry_is_not_kept_so_the_key_is_asked_again(agent: FakeAgent) -> None:
    agent.present[b"w"] = None
    lookups = AsyncLookups(agent)
    try:
        lookups.lookup(b"w", "r1")
        lookups.flush()
        deadline = time.monotonic() + 5
        while len(agent.batches) < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.01)
        assert lookups.lookup(b"w", "r1") is None
        lookups.flush()
        while len(agent.batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(agent.batches) == 2
    finally:
        lookups.close()


def test_a_request_that_finished_while_its_probe_was_in_flight_leaves_nothing_behind(
    lookups: AsyncLookups, agent: FakeAgent
) -> None:
    agent.gate.clear()
    lookups.lookup(b"a", "r1")
    lookups.flush()
    lookups.forget("r1")
    agent.gate.set()
    deadline = time.monotonic() + 5
    while not agent.batches and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.01)
    lookups.flush()  # applies the late answer
    assert lookups._states == {}


def test_an_agent_error_answers_miss_for_the_batch_and_the_thread_survives(agent: FakeAgent) -> None:
    calls = []

    def broken(keys: Sequence[bytes], request_id: str) -> list[Verdict]:
        calls.append(request_id)
        if len(calls) == 1:
            raise OSError("connection reset")
        return [True] * len(keys)

    lookups = AsyncLookups(broken)
    try:
        lookups.lookup(b"x", "r1")
        lookups.flush()
        assert settle(lookups, b"x", "r1") is False
        lookups.lookup(b"y", "r2")
        lookups.flush()
        assert settle(lookups, b"y", "r2") is True
    finally:
        lookups.close()
