"""The CPU region as vLLM makes it: one MAP_SHARED mapping of `/dev/shm/vllm_offload_<engine>.mmap`.

`primary_kv_view` is a memoryview of shape (num_chunks, row_stride) over that mapping, as vLLM passes
to its secondary tiers. Owned by the engine's main thread.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

import numpy as np


def shm_dir() -> Path:
    """/dev/shm where it is writable (as in a vLLM pod), else the temp directory."""
    shm = Path("/dev/shm")
    return shm if os.access(shm, os.W_OK) else Path(os.environ.get("TMPDIR", "/tmp"))


class SharedRegion:
    """A region file of `num_chunks` rows of `row_bytes`, mapped shared; unlinked on close."""

    def __init__(
        self, engine_id: str, num_chunks: int, row_bytes: int, directory: Path | None = None
    ) -> None:
        self.path = (directory or shm_dir()) / f"vllm_offload_{engine_id}.mmap"
        self.num_chunks = num_chunks
        self.row_bytes = row_bytes
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, num_chunks * row_bytes)
            self._map = mmap.mmap(fd, num_chunks * row_bytes, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._array = np.frombuffer(self._map, dtype=np.uint8).reshape(num_chunks, row_bytes)
        self.view = memoryview(self._array)  # type: ignore[arg-type]  # ndarray has the buffer protocol
        """vLLM's `primary_kv_view`: shape (num_chunks, row_bytes), strides[0] == row_bytes."""

    def write(self, slot: int, data: bytes) -> None:
        self._array[slot, :] = np.frombuffer(data, dtype=np.uint8)

    def read(self, slot: int) -> bytes:
        return bytes(self._array[slot].tobytes())

    def close(self) -> None:
        self.view.release()
        del self._array
        with contextlib.suppress(BufferError):  # a tier still holds a view; it goes with that
            self._map.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SharedRegion:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
