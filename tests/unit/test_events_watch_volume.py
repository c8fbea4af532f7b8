"""The watch tool's view of the volume: each block file once, nothing raised for what GC removes meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_events_summary import CONFIG, put
from tieredkv_agent.events.watch import volume_blocks
from tieredkv_agent.store.naming import ensure_namespace, namespace_for

pytestmark = pytest.mark.unit


def test_the_volume_view_lists_each_block_file_and_ignores_other_files(tmp_path: Path) -> None:
    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    for n in range(3):
        put(namespace.blocks_dir, n)
    (tmp_path / "stray.bin").write_bytes(b"x")
    assert len(volume_blocks(tmp_path)) == 3


def test_a_volume_or_directory_that_vanished_is_an_empty_view_not_an_error(tmp_path: Path) -> None:
    assert volume_blocks(tmp_path / "gone") == set()
    namespace = namespace_for(tmp_path, CONFIG)
    ensure_namespace(namespace)
    put(namespace.blocks_dir, 1)
    for leaf in namespace.blocks_dir.glob("*/*"):
        for file in leaf.iterdir():
            file.unlink()
        leaf.rmdir()
    assert volume_blocks(tmp_path) == set()
