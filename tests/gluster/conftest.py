"""Fixtures of the gluster tier: one real GlusterFS volume per session, mounted by two FUSE clients.

The volume is the dev cluster's (`tieredkv_devcluster.gluster`): a private glusterd on its own loopback
address, a distribute volume over two bricks, and two `glusterfs` client processes, each with its own
caches, standing for two nodes. Each test gets its own directory of the volume, seen through both.
Without GlusterFS installed (`make gluster`) every test of the tier is skipped, saying so.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tieredkv_devcluster import gluster


@dataclass(frozen=True)
class TwoClients:
    """One directory of the volume as node 1's client (`one`) and node 2's client (`two`) see it."""

    one: Path
    two: Path


@pytest.fixture(scope="session")
def mounts() -> Iterator[list[Path]]:
    if missing := gluster.missing_binaries():
        pytest.skip(f"GlusterFS is not installed ({', '.join(missing)}): run `make gluster`")
    if not Path("/dev/fuse").exists():
        pytest.skip("no /dev/fuse here: GlusterFS clients cannot mount (the dev cluster uses tieredkv-local)")
    root = Path(tempfile.mkdtemp(prefix="tieredkv-gluster-tier-"))
    try:
        with gluster.standalone(root) as points:
            yield points
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def clients(mounts: list[Path]) -> Iterator[TwoClients]:
    name = f"t-{uuid.uuid4().hex[:12]}"
    (mounts[0] / name).mkdir()
    yield TwoClients(mounts[0] / name, mounts[1] / name)
    shutil.rmtree(mounts[0] / name, ignore_errors=True)
