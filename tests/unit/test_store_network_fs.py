"""Block I/O on a network filesystem: what another client's deletes and directory creations look like here.

On NFS and GlusterFS a path that another client removed can answer ESTALE (this client still caches its
handle), and a directory tree that two clients create at once can answer ENOENT or ESTALE for a moment.
A load seeing ESTALE is a clean miss; a store retries the temp file's directories. The real thing runs in
tests/gluster through two FUSE clients; these tests pin the rules with injected errors on real files.
"""

import errno
import os
from pathlib import Path

import pytest

from tieredkv_agent.store.blockio import CREATE_ATTEMPTS, BlockFiles, FileOps, LoadStatus, StoreStatus
from tieredkv_agent.store.naming import block_path, make_offload_key

pytestmark = pytest.mark.unit

BLOCK = 16 * 1024


def _path(root: Path) -> str:
    return block_path(root / "ns_r0", make_offload_key(b"\x07" * 32, 0))


def _payload() -> bytes:
    return bytes(i % 253 for i in range(BLOCK))


class StaleOps(FileOps):
    """Real files; `call` raises ESTALE for its first `times` calls (read opens or temp creations)."""

    def __init__(self, call: str, times: int) -> None:
        self.call, self.left, self.calls = call, times, 0

    def _stale(self, call: str) -> None:
        if call == self.call:
            self.calls += 1
            if self.left > 0:
                self.left -= 1
                raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        self._stale("create" if flags & os.O_CREAT else "open")
        return super().open(path, flags, mode)

    def preadv(self, fd: int, buffers: list[memoryview], offset: int) -> int:
        self._stale("preadv")
        return super().preadv(fd, buffers, offset)

    def makedirs(self, path: str, *, chmod: bool = True) -> None:
        self._stale("makedirs")
        super().makedirs(path, chmod=chmod)


@pytest.mark.parametrize("call", ["open", "preadv"])
def test_estale_while_loading_a_block_is_a_clean_miss_that_leaves_the_file(tmp_path: Path, call: str) -> None:
    path = _path(tmp_path)
    assert BlockFiles(direct=False).store(path, _payload()).status is StoreStatus.STORED
    result = BlockFiles(direct=False, ops=StaleOps(call, times=1)).load(path, bytearray(BLOCK))
    assert result.status is LoadStatus.MISSING
    assert Path(path).read_bytes() == _payload()


@pytest.mark.parametrize("call", ["create", "makedirs"])
def test_a_directory_answering_estale_while_another_client_creates_it_is_retried(
    tmp_path: Path, call: str
) -> None:
    path = _path(tmp_path)
    ops = StaleOps(call, times=1)
    assert BlockFiles(direct=False, ops=ops).store(path, _payload()).status is StoreStatus.STORED
    assert ops.calls >= 1
    assert Path(path).read_bytes() == _payload()


def test_a_temp_file_that_stays_stale_fails_the_store_after_a_bounded_number_of_attempts(
    tmp_path: Path,
) -> None:
    path = _path(tmp_path)
    ops = StaleOps("create", times=1_000)
    result = BlockFiles(direct=False, ops=ops).store(path, _payload())
    assert (result.status, result.errno) == (StoreStatus.IO_ERROR, errno.ESTALE)
    assert ops.calls == CREATE_ATTEMPTS
    assert not Path(path).exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_mkdir_failing_because_another_client_created_the_directory_meanwhile_still_stores(
    tmp_path: Path,
) -> None:
    class RacedMkdir(FileOps):
        """The directory appears (the other client's mkdir) and this client's mkdir fails with EIO."""

        def makedirs(self, path: str, *, chmod: bool = True) -> None:
            super().makedirs(path, chmod=chmod)
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    path = _path(tmp_path)
    assert BlockFiles(direct=False, ops=RacedMkdir()).store(path, _payload()).status is StoreStatus.STORED
    assert Path(path).read_bytes() == _payload()


def test_a_mkdir_failing_without_creating_the_directory_fails_the_store_with_its_error(
    tmp_path: Path,
) -> None:
    class BrokenMkdir(FileOps):
        def makedirs(self, path: str, *, chmod: bool = True) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    result = BlockFiles(direct=False, ops=BrokenMkdir()).store(_path(tmp_path), _payload())
    assert (result.status, result.errno) == (StoreStatus.IO_ERROR, errno.EIO)
