"""Publishing and loading block files on real files in tmp dirs, with faults injected through `FileOps`."""

import errno
import mmap
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.unit.readonly import read_only_dir
from tieredkv_agent.store.blockio import (
    O_DIRECT,
    BlockFiles,
    Durability,
    FileOps,
    LoadStatus,
    StoreResult,
    StoreStatus,
    probe_o_direct,
)
from tieredkv_agent.store.naming import block_path, make_offload_key

pytestmark = pytest.mark.unit

BLOCK = 16 * 1024


def payload(size: int = BLOCK, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(size))


def key_path(root: Path, index: int = 0) -> str:
    return block_path(root / "ns_r0", make_offload_key(index.to_bytes(2, "big") * 16, 0))


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".bin")]


@pytest.fixture(scope="module")
def direct_supported(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return probe_o_direct(tmp_path_factory.mktemp("probe"))


@pytest.fixture(params=[False, True], ids=["buffered", "direct"])
def files(request: pytest.FixtureRequest, direct_supported: bool) -> BlockFiles:
    if request.param and not direct_supported:
        pytest.skip("the tmp filesystem does not take O_DIRECT")
    return BlockFiles(direct=request.param)


@pytest.fixture
def aligned() -> Iterator[mmap.mmap]:
    region = mmap.mmap(-1, 4 * BLOCK)
    yield region
    region.close()


class RecordingOps(FileOps):
    """Real files, but remembers the open flags and the order of data-affecting calls."""

    def __init__(self) -> None:
        self.opened: list[int] = []
        self.calls: list[str] = []

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        self.opened.append(flags)
        return super().open(path, flags, mode)

    def fdatasync(self, fd: int) -> None:
        self.calls.append("fdatasync")
        super().fdatasync(fd)

    def link(self, src: str, dst: str) -> None:
        self.calls.append("link")
        super().link(src, dst)

    def rename_noreplace(self, src: str, dst: str) -> None:
        self.calls.append("rename_noreplace")
        super().rename_noreplace(src, dst)


class FailingOps(FileOps):
    """Raises OSError(code) from one named call, lets every other call through."""

    def __init__(self, call: str, code: int) -> None:
        self.call, self.code = call, code

    def _maybe_fail(self, call: str) -> None:
        if call == self.call:
            raise OSError(self.code, os.strerror(self.code))

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        self._maybe_fail("open")
        return super().open(path, flags, mode)

    def write(self, fd: int, data: memoryview) -> int:
        self._maybe_fail("write")
        return super().write(fd, data)

    def preadv(self, fd: int, buffers: list[memoryview], offset: int) -> int:
        self._maybe_fail("preadv")
        return super().preadv(fd, buffers, offset)


# -- the happy path -------------------------------------------------------------------------------


def test_a_stored_block_loads_back_byte_identical(files: BlockFiles, tmp_path: Path) -> None:
    path = key_path(tmp_path)
    assert files.store(path, payload()).status is StoreStatus.STORED
    dest = bytearray(BLOCK)
    assert files.load(path, dest).ok
    assert dest == payload()
    assert Path(path).stat().st_size == BLOCK


def test_loads_fill_mmap_slices_aligned_or_not(files: BlockFiles, tmp_path: Path, aligned: mmap.mmap) -> None:
    path = key_path(tmp_path)
    aligned[BLOCK : 2 * BLOCK] = payload(seed=5)
    with memoryview(aligned) as whole:
        assert files.store(path, whole[BLOCK : 2 * BLOCK]).ok
        aligned[:] = bytes(len(aligned))
        assert files.load(path, whole[1 : 1 + BLOCK]).ok
        assert files.load(path, whole[2 * BLOCK : 3 * BLOCK]).ok
    assert aligned[1 : 1 + BLOCK] == aligned[2 * BLOCK : 3 * BLOCK] == payload(seed=5)


def test_multi_dimensional_and_signed_byte_views_are_flattened(files: BlockFiles, tmp_path: Path) -> None:
    path = key_path(tmp_path)
    source = memoryview(bytearray(payload())).cast("b")
    assert files.store(path, source).ok
    dest = bytearray(BLOCK)
    assert files.load(path, memoryview(dest).cast("B", (4, BLOCK // 4))).ok
    assert dest == payload()


def test_unaligned_buffers_in_direct_mode_go_through_the_bounce_buffer(
    direct_supported: bool, tmp_path: Path, aligned: mmap.mmap
) -> None:
    if not direct_supported:
        pytest.skip("the tmp filesystem does not take O_DIRECT")
    ops = RecordingOps()
    files = BlockFiles(direct=True, ops=ops)
    aligned[3 : 3 + BLOCK] = payload(seed=9)
    with memoryview(aligned) as whole:
        assert files.store(key_path(tmp_path), whole[3 : 3 + BLOCK]).ok
        assert all(flags & O_DIRECT for flags in ops.opened)
        assert Path(key_path(tmp_path)).read_bytes() == payload(seed=9)
        ops.opened.clear()
        assert files.load(key_path(tmp_path), whole[2 * BLOCK + 5 : 3 * BLOCK + 5]).ok
        assert ops.opened == [os.O_RDONLY | O_DIRECT]
    assert aligned[2 * BLOCK + 5 : 3 * BLOCK + 5] == payload(seed=9)


def test_direct_mode_uses_o_direct_only_for_block_sizes_that_are_multiples_of_4k(
    direct_supported: bool, tmp_path: Path
) -> None:
    if not direct_supported:
        pytest.skip("the tmp filesystem does not take O_DIRECT")
    ops = RecordingOps()
    files = BlockFiles(direct=True, ops=ops)
    files.store(key_path(tmp_path, 1), payload(BLOCK))
    aligned_opens, ops.opened = ops.opened, []
    files.store(key_path(tmp_path, 2), payload(5000))
    assert aligned_opens
    assert all(flags & O_DIRECT for flags in aligned_opens)
    assert not any(flags & O_DIRECT for flags in ops.opened)
    odd = bytearray(5000)
    assert files.load(key_path(tmp_path, 2), odd).ok
    assert odd == payload(5000)


def test_publishing_leaves_no_temp_file_behind(files: BlockFiles, tmp_path: Path) -> None:
    for index in range(5):
        files.store(key_path(tmp_path, index), payload(seed=index))
    assert leftovers(tmp_path) == []
    assert len(list(tmp_path.rglob("*.bin"))) == 5


def test_a_larger_file_fills_the_buffer_with_its_first_bytes(files: BlockFiles, tmp_path: Path) -> None:
    path = Path(key_path(tmp_path))
    path.parent.mkdir(parents=True)
    path.write_bytes(payload(2 * BLOCK))
    dest = bytearray(BLOCK)
    assert files.load(str(path), dest).ok
    assert dest == payload(2 * BLOCK)[:BLOCK]


# -- never rewrite, first writer wins --------------------------------------------------------------


def test_an_existing_block_is_never_rewritten(files: BlockFiles, tmp_path: Path) -> None:
    path = Path(key_path(tmp_path))
    path.parent.mkdir(parents=True)
    path.write_bytes(payload(seed=7))
    inode = path.stat().st_ino
    assert files.store(str(path), payload(seed=8)).status is StoreStatus.ALREADY_PRESENT
    assert path.read_bytes() == payload(seed=7)
    assert path.stat().st_ino == inode


def test_publishing_onto_a_name_another_writer_just_took_counts_as_success(tmp_path: Path) -> None:
    class AnotherWriterWins(FileOps):
        def rename_noreplace(self, src: str, dst: str) -> None:
            raise OSError(errno.EINVAL, "Invalid argument", dst)  # a volume without RENAME_NOREPLACE

        def link(self, src: str, dst: str) -> None:
            Path(dst).write_bytes(payload(seed=3))
            super().link(src, dst)

    result = BlockFiles(direct=False, ops=AnotherWriterWins()).store(key_path(tmp_path), payload())
    assert result.status is StoreStatus.ALREADY_PRESENT
    assert result.ok
    assert Path(key_path(tmp_path)).read_bytes() == payload(seed=3)
    assert leftovers(tmp_path) == []


def test_a_filesystem_without_hard_links_publishes_by_rename(tmp_path: Path) -> None:
    class NoHardLinks(FileOps):
        def rename_noreplace(self, src: str, dst: str) -> None:
            raise OSError(errno.ENOSYS, "Function not implemented", dst)

        def link(self, src: str, dst: str) -> None:
            raise OSError(errno.EPERM, "Operation not permitted", dst)

    result = BlockFiles(direct=False, ops=NoHardLinks()).store(key_path(tmp_path), payload())
    assert result.status is StoreStatus.STORED
    assert Path(key_path(tmp_path)).read_bytes() == payload()
    assert leftovers(tmp_path) == []


def test_concurrent_stores_of_one_key_leave_exactly_one_correct_file(
    files: BlockFiles, tmp_path: Path
) -> None:
    threads, keys = 8, 10
    start = threading.Barrier(threads)

    def store_all(_: int) -> list[StoreResult]:
        start.wait()
        return [files.store(key_path(tmp_path, index), payload(seed=index)) for index in range(keys)]

    with ThreadPoolExecutor(threads) as pool:
        results = [result for batch in pool.map(store_all, range(threads)) for result in batch]
    assert all(result.ok for result in results)
    stored = sum(1 for result in results if result.status is StoreStatus.STORED)
    assert stored == keys, "exactly one writer publishes each key; the others find it present"
    assert leftovers(tmp_path) == []
    assert len(list(tmp_path.rglob("*.bin"))) == keys
    for index in range(keys):
        assert Path(key_path(tmp_path, index)).read_bytes() == payload(seed=index)


# -- load failures ---------------------------------------------------------------------------------


def test_a_missing_block_is_reported_missing(files: BlockFiles, tmp_path: Path) -> None:
    assert files.load(key_path(tmp_path), bytearray(BLOCK)).status is LoadStatus.MISSING


def test_a_file_deleted_between_check_and_load_is_reported_missing(tmp_path: Path) -> None:
    class DeletedBeforeOpen(FileOps):
        def open(self, path: str, flags: int, mode: int = 0o644) -> int:
            if flags & os.O_ACCMODE == os.O_RDONLY:
                Path(path).unlink()
            return super().open(path, flags, mode)

    files = BlockFiles(direct=False, ops=DeletedBeforeOpen())
    path = key_path(tmp_path)
    files.store(path, payload())
    assert Path(path).exists()
    assert files.load(path, bytearray(BLOCK)).status is LoadStatus.MISSING


def test_a_short_file_is_deleted_and_reported_failed(files: BlockFiles, tmp_path: Path) -> None:
    path = Path(key_path(tmp_path))
    path.parent.mkdir(parents=True)
    path.write_bytes(payload(BLOCK - 100))
    result = files.load(str(path), bytearray(BLOCK))
    assert result.status is LoadStatus.SHORT_DELETED
    assert not result.ok
    assert not path.exists()


def test_an_injected_eio_fails_the_block_and_leaves_the_file(tmp_path: Path) -> None:
    path = key_path(tmp_path)
    BlockFiles(direct=False).store(path, payload())
    result = BlockFiles(direct=False, ops=FailingOps("preadv", errno.EIO)).load(path, bytearray(BLOCK))
    assert (result.status, result.errno) == (LoadStatus.IO_ERROR, errno.EIO)
    assert Path(path).read_bytes() == payload()


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES])
def test_an_open_error_other_than_enoent_or_estale_fails_the_block_and_leaves_the_file(
    tmp_path: Path, code: int
) -> None:
    path = key_path(tmp_path)
    BlockFiles(direct=False).store(path, payload())
    result = BlockFiles(direct=False, ops=FailingOps("open", code)).load(path, bytearray(BLOCK))
    assert (result.status, result.errno) == (LoadStatus.IO_ERROR, code)
    assert Path(path).exists()


def test_a_short_read_of_a_full_size_file_keeps_the_file(tmp_path: Path) -> None:
    class ShortRead(FileOps):
        def preadv(self, fd: int, buffers: list[memoryview], offset: int) -> int:
            return super().preadv(fd, [buffers[0][:100]], offset)

    path = key_path(tmp_path)
    BlockFiles(direct=False).store(path, payload())
    result = BlockFiles(direct=False, ops=ShortRead()).load(path, bytearray(BLOCK))
    assert (result.status, result.errno) == (LoadStatus.IO_ERROR, errno.EIO)
    assert Path(path).stat().st_size == BLOCK


def test_a_short_file_replaced_by_a_full_one_meanwhile_is_kept(tmp_path: Path) -> None:
    path = Path(key_path(tmp_path))

    class ReplacedAfterRead(FileOps):
        def fstat(self, fd: int) -> os.stat_result:
            opened = super().fstat(fd)
            fresh = path.with_name("fresh")
            fresh.write_bytes(payload())
            fresh.rename(path)
            return opened

    path.parent.mkdir(parents=True)
    path.write_bytes(payload(10))
    result = BlockFiles(direct=False, ops=ReplacedAfterRead()).load(str(path), bytearray(BLOCK))
    assert result.status is LoadStatus.IO_ERROR
    assert path.read_bytes() == payload()


def test_a_read_only_destination_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="writable"):
        BlockFiles(direct=False).load(key_path(tmp_path), memoryview(bytes(BLOCK)))


def test_an_empty_block_is_a_programming_error(files: BlockFiles, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        files.store(key_path(tmp_path), b"")
    with pytest.raises(ValueError, match="non-empty"):
        files.load(key_path(tmp_path), bytearray())


# -- store failures --------------------------------------------------------------------------------


def test_a_non_writable_directory_fails_the_store_without_raising(tmp_path: Path) -> None:
    with read_only_dir(tmp_path / "ns_r0"):
        result = BlockFiles(direct=False).store(key_path(tmp_path), payload())
    assert result.status is StoreStatus.IO_ERROR
    assert result.errno in (errno.EACCES, errno.EROFS)
    assert list(tmp_path.rglob("*.bin")) == []


def test_a_permission_error_creating_the_temp_file_fails_the_store_without_raising(tmp_path: Path) -> None:
    result = BlockFiles(direct=False, ops=FailingOps("open", errno.EACCES)).store(
        key_path(tmp_path), payload()
    )
    assert (result.status, result.errno) == (StoreStatus.IO_ERROR, errno.EACCES)
    assert leftovers(tmp_path) == []


def test_a_blocks_directory_that_is_a_file_fails_the_store_with_enotdir(tmp_path: Path) -> None:
    (tmp_path / "ns_r0").write_bytes(b"not a directory")
    result = BlockFiles(direct=False).store(key_path(tmp_path), payload())
    assert (result.status, result.errno) == (StoreStatus.IO_ERROR, errno.ENOTDIR)


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_failed_write_removes_the_temp_file_and_publishes_nothing(tmp_path: Path, code: int) -> None:
    result = BlockFiles(direct=False, ops=FailingOps("write", code)).store(key_path(tmp_path), payload())
    assert (result.status, result.errno) == (StoreStatus.IO_ERROR, code)
    assert list(tmp_path.rglob("*.*")) == []


def test_partial_writes_are_continued_until_the_block_is_whole(tmp_path: Path) -> None:
    class ShortWrite(FileOps):
        def write(self, fd: int, data: memoryview) -> int:
            return super().write(fd, data[:100])

    path = key_path(tmp_path)
    result = BlockFiles(direct=False, ops=ShortWrite()).store(path, payload())
    assert result.status is StoreStatus.STORED
    assert Path(path).read_bytes() == payload()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_volume_filling_mid_write_is_reported_as_no_space_not_as_a_short_write(
    tmp_path: Path, code: int
) -> None:
    class FillsUp(FileOps):
        def write(self, fd: int, data: memoryview) -> int:
            if data.nbytes < BLOCK:  # the kernel wrote part of the block, then the volume was full
                raise OSError(code, os.strerror(code))
            return super().write(fd, data[:100])

    result = BlockFiles(direct=False, ops=FillsUp()).store(key_path(tmp_path), payload())
    assert (result.status, result.errno) == (StoreStatus.IO_ERROR, code)
    assert list(tmp_path.rglob("*.*")) == []


# -- durability and O_DIRECT -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("durability", "expected"),
    [(Durability.NONE, ["rename_noreplace"]), (Durability.FDATASYNC, ["fdatasync", "rename_noreplace"])],
)
def test_fdatasync_runs_before_the_publish_only_when_asked(
    tmp_path: Path, durability: Durability, expected: list[str]
) -> None:
    ops = RecordingOps()
    assert BlockFiles(direct=False, durability=durability, ops=ops).store(key_path(tmp_path), payload()).ok
    assert ops.calls == expected


def test_einval_from_o_direct_falls_back_to_buffered_io(tmp_path: Path) -> None:
    class RejectsDirect(FileOps):
        """Like overlayfs: the O_DIRECT open creates the file, then fails with EINVAL."""

        def open(self, path: str, flags: int, mode: int = 0o644) -> int:
            if flags & O_DIRECT:
                if flags & os.O_CREAT:
                    os.close(super().open(path, flags & ~O_DIRECT, mode))
                raise OSError(errno.EINVAL, "Invalid argument")
            return super().open(path, flags, mode)

    files = BlockFiles(direct=True, ops=RejectsDirect())
    if not files.direct:
        pytest.skip("no O_DIRECT on this platform")
    path = key_path(tmp_path)
    assert files.store(path, payload()).status is StoreStatus.STORED
    assert leftovers(tmp_path) == []
    dest = bytearray(BLOCK)
    assert files.load(path, dest).ok
    assert dest == payload()


def test_the_probe_reports_o_direct_support_and_leaves_no_file(tmp_path: Path) -> None:
    assert isinstance(probe_o_direct(tmp_path), bool)
    assert list(tmp_path.iterdir()) == []


def test_the_probe_says_no_when_the_volume_rejects_o_direct(tmp_path: Path) -> None:
    class RejectsDirect(FileOps):
        def open(self, path: str, flags: int, mode: int = 0o644) -> int:
            fd = super().open(path, flags & ~O_DIRECT, mode)
            if flags & O_DIRECT:
                os.close(fd)
                raise OSError(errno.EINVAL, "Invalid argument")
            return fd

    assert probe_o_direct(tmp_path, ops=RejectsDirect()) is False
    assert list(tmp_path.iterdir()) == []
    assert BlockFiles.for_volume(tmp_path, ops=RejectsDirect()).direct is False


def test_publishing_by_renameat2_onto_a_name_another_writer_just_took_keeps_the_winner(
    tmp_path: Path,
) -> None:
    class AnotherWriterWins(RecordingOps):
        def rename_noreplace(self, src: str, dst: str) -> None:
            Path(dst).write_bytes(payload(seed=3))
            super().rename_noreplace(src, dst)

    ops = AnotherWriterWins()
    result = BlockFiles(direct=False, ops=ops).store(key_path(tmp_path), payload())
    assert result.status is StoreStatus.ALREADY_PRESENT
    assert Path(key_path(tmp_path)).read_bytes() == payload(seed=3)
    assert leftovers(tmp_path) == []
    assert ops.calls == ["rename_noreplace"]  # no link: renameat2 answered EEXIST itself


def test_a_volume_without_renameat2_publishes_by_link_from_then_on(tmp_path: Path) -> None:
    class NoRenameat2(RecordingOps):
        def rename_noreplace(self, src: str, dst: str) -> None:
            self.calls.append("rename_noreplace")
            raise OSError(errno.EINVAL, "Invalid argument", dst)

    ops = NoRenameat2()
    files = BlockFiles(direct=False, ops=ops)
    assert files.store(key_path(tmp_path, 1), payload(seed=1)).status is StoreStatus.STORED
    assert files.store(key_path(tmp_path, 2), payload(seed=2)).status is StoreStatus.STORED
    assert ops.calls == ["rename_noreplace", "link", "link"]
    assert Path(key_path(tmp_path, 2)).read_bytes() == payload(seed=2)
    assert leftovers(tmp_path) == []
