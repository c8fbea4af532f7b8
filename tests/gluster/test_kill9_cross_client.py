"""kill -9 of writers on two GlusterFS clients at once never leaves a torn, short or wrong block on either.

Each round starts two block-writing children (`tests.unit.reliability_worker`, the same as the unit tier's
kill -9 test), one on node 1's mount and one on node 2's, storing the same keys in different orders (through
`BlockFiles`, or through `FileTier` in every third round), and SIGKILLs both at random moments. After each
round every final block name holds its key's full bytes as both clients read it, and no block a child saw
stored is missing. At the end the capacity manager, running through node 2's client, sweeps every temp file
either node left, and keeps every block.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.gluster.conftest import TwoClients
from tests.unit.reliability_worker import CONFIG, block_key
from tests.unit.test_reliability_kill9 import (
    KEYS_PER_CHILD,
    Children,
    Round,
    read_line,
    verify_block,
    volume_files,
)
from tieredkv_agent.capacity import CapacityManager
from tieredkv_agent.store.naming import namespace_for

pytestmark = pytest.mark.gluster

ROUNDS = 24
MAX_KILL_DELAY_S = 0.08
"""Longer than the unit tier's 15 ms: a block store through FUSE takes a few milliseconds here."""


def _run_round(children: Children, roots: tuple[Path, Path], spec: Round, rng: random.Random) -> set[bytes]:
    """Both children of one round, killed at random moments; the keys they reported stored."""
    started = [
        children.start(root, Round(spec.number, spec.label, spec.first, seed=spec.seed + n, tier=spec.tier))
        for n, root in enumerate(roots)
    ]
    lines: list[str] = []
    try:
        for child in started:
            assert (said := read_line(child, 30.0)) == "ready", f"child said {said!r}"
        time.sleep(rng.uniform(0.0, MAX_KILL_DELAY_S))
        for child in started:
            os.kill(child.pid, signal.SIGKILL)
            time.sleep(rng.uniform(0.0, MAX_KILL_DELAY_S / 4))
    finally:
        for child in started:
            stdout, stderr = children.reap(child)
            assert child.returncode == -signal.SIGKILL, f"child ended {child.returncode}: {stderr.decode()}"
            lines += stdout.decode().splitlines()
    return {bytes.fromhex(line.split()[1]) for line in lines if line != "done"}


def _check_round(clients: TwoClients, spec: Round, reported: set[bytes]) -> None:
    for root in (clients.one, clients.two):
        namespace = namespace_for(root, CONFIG)
        for n in range(spec.first, spec.first + KEYS_PER_CHILD):
            key = block_key(spec.label, n)
            path = Path(namespace.block_path(key))
            if path.exists():
                verify_block(path)
            else:
                assert key not in reported, f"{path} was stored before the kill and is missing via {root}"


def test_writers_on_two_clients_killed_at_random_moments_leave_only_complete_blocks_and_sweepable_temps(
    clients: TwoClients,
) -> None:
    rng, children = random.Random(16), Children()
    plan = [Round(n, "x9", n * KEYS_PER_CHILD // 2, seed=2 * n, tier=n % 3 == 2) for n in range(ROUNDS)]
    stored = 0
    try:
        for spec in plan:
            reported = _run_round(children, (clients.one, clients.two), spec, rng)
            _check_round(clients, spec, reported)
            stored += len(reported)
    finally:
        children.kill_all()
    assert stored > 0, "no child stored anything before its kill: the kills came too early to test much"

    blocks, temps = volume_files(namespace_for(clients.two, CONFIG))
    for path in blocks:
        verify_block(path)
    now = time.time()
    manager = CapacityManager(
        clients.two,
        grace_s=0.0,
        temp_timeout_s=0.0,
        watch_filesystem=False,
        scan_threads=2,
        clock=lambda: now + 5,
    )
    report = manager.run_pass()
    assert (report.scan.unknown_count, report.scan.errors) == (0, [])
    assert (report.scan.files, report.eviction.files, report.sweep.temp_files) == (len(blocks), 0, len(temps))
    blocks_after, temps_after = volume_files(namespace_for(clients.one, CONFIG))
    assert temps_after == []
    assert len(blocks_after) == len(blocks)
    for path in blocks_after:
        verify_block(path)
