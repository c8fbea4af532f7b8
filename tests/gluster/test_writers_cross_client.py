"""Dead-writer temp sweeping across GlusterFS clients: a writer's flock, taken through node 1's client,
protects its temp files from node 2's sweeper while it lives and frees them the moment it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gluster.conftest import TwoClients
from tests.unit.test_reliability_kill9 import REPO_ROOT, read_line
from tieredkv_agent.store.writers import WRITERS_DIR_NAME, sweep_dead_writers

pytestmark = pytest.mark.gluster


def test_a_writer_on_one_client_keeps_its_temp_files_until_killed_then_the_other_client_sweeps_them(
    clients: TwoClients,
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.gluster.writer_worker", str(clients.one)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        said = read_line(child, 30.0)
        assert said.startswith("paused "), said
        temp_on_two = clients.two / Path(said.removeprefix("paused ")).relative_to(clients.one)
        assert temp_on_two.exists()

        alive = sweep_dead_writers(clients.two, own_tag="")
        assert (alive.dead_writers, alive.temp_files) == (0, 0)
        assert temp_on_two.exists(), "a live writer's temp file was swept through the other client"
    finally:
        child.kill()
        child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL

    dead = sweep_dead_writers(clients.two, own_tag="")
    assert (dead.dead_writers, dead.temp_files) == (1, 1)
    assert not temp_on_two.exists()
    assert list((clients.one / WRITERS_DIR_NAME).iterdir()) == []
