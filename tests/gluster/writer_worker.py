"""A writer for the cross-client sweep test: `python -m tests.gluster.writer_worker ROOT`.

Registers as a writer on ROOT (through its node's client), starts storing one block with its writer tag and
stops for good half-way through the write, announcing `paused <temp file>`; then waits for the SIGKILL.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.unit.reliability_worker import (
    CONFIG,
    PausingOps,
    block_content,
    block_key,
    wait_for_parent,
)
from tieredkv_agent.store.blockio import BlockFiles
from tieredkv_agent.store.naming import ensure_namespace, namespace_for
from tieredkv_agent.store.writers import WriterRegistration

BLOCK = 256 * 1024


def main(root: Path) -> None:
    registration = WriterRegistration(root)
    tag = registration.register()
    if not tag:
        sys.exit("the volume cannot lock: no writer tag")
    namespace = namespace_for(root, CONFIG)
    ensure_namespace(namespace)
    files = BlockFiles(direct=False, ops=PausingOps(pause_write=1, pause_rename=0), writer_tag=tag)
    key = block_key("sweep", 0)
    files.store(namespace.block_path(key), block_content(key, BLOCK))  # pauses inside, never returns
    wait_for_parent()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
