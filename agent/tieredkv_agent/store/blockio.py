"""Block files on the shared volume: publish and load them exactly like vLLM's `fs` tier.

Threads: `probe_o_direct` runs once on the agent's startup thread; one `BlockFiles` is then shared
by all of the agent's I/O worker threads, which call `store` and `load` concurrently (it keeps
only a per-thread bounce buffer).

Store (first writer wins, never a partial file under the final name)::

    exists(dest)? -> ALREADY_PRESENT
    open(dest_<63-bit number>[_w<writer tag>].tmp, O_CREAT|O_EXCL|O_WRONLY|O_TRUNC[|O_DIRECT])
        ; [fchmod, only if the umask strips bits] ; write all ; [fdatasync] ; close
    renameat2(tmp, dest, RENAME_NOREPLACE)   EEXIST -> unlink tmp, ALREADY_PRESENT (another writer won)
      or, where the volume lacks it, link(tmp, dest) ; unlink(tmp)   (EEXIST likewise)
    any error -> unlink tmp, IO_ERROR(errno)

vLLM publishes with rename(2), which silently replaces a file that another writer published between the
existence check and the rename (same bytes, but a rewrite). renameat2(RENAME_NOREPLACE), or link(2), is the
atomic create-if-absent form of the same publish, so an existing block is never replaced, in as many
system calls as vLLM's rename; on a filesystem without hard links either (EPERM, EOPNOTSUPP, EXDEV, EMLINK)
the store falls back to vLLM's rename. Per block, a store is five system calls (access, open, write,
close, renameat2) and a load three (open, preadv, close): vLLM's own count.

Load: open(O_RDONLY[|O_DIRECT]) and one preadv of exactly the block size into the caller's buffer.
A file proven shorter than the block is deleted (SHORT_DELETED, never served); ENOENT and ESTALE (the
file was removed through another client of a network filesystem) are MISSING; any other error
leaves the file in place (IO_ERROR). Per-block failures are returned, never raised; only
programming errors (a read-only destination, a non-contiguous buffer) raise.

O_DIRECT needs 4 KiB-aligned addresses and lengths: an aligned caller buffer is used in place, an
unaligned one goes through a page-aligned mmap bounce buffer, a length that is not a multiple of
4 KiB uses buffered I/O, and EINVAL from a direct open/read/write retries the block buffered.
"""

import ctypes
import enum
import errno
import logging
import mmap
import os
import secrets
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from tieredkv_agent.store.modes import DIR_MODE, FILE_MODE, make_dirs
from tieredkv_agent.store.syscalls import NOT_SUPPORTED, rename_noreplace, umask_keeps

log = logging.getLogger(__name__)

O_DIRECT: int = getattr(os, "O_DIRECT", 0)
"""0 where the platform has no O_DIRECT (then the probe always says "unsupported")."""

DIRECT_ALIGNMENT = 4096
"""Address and length alignment used for O_DIRECT (covers 512 B and 4 KiB logical blocks)."""

TEMP_SUFFIX = ".tmp"
TEMP_NUMBER_MASK = (1 << 63) - 1
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK})
"""link(2) errors meaning "this filesystem has no hard links here", not "this store failed"."""
"""Temp files are `<final name>_<random 63-bit decimal>.tmp`, in the final file's directory."""
_GONE = frozenset({errno.ENOENT, errno.ESTALE})
"""A path that is not there, as a network filesystem says it: ESTALE when another client removed (or is
just creating) a directory or file whose handle this client still caches (NFS, GlusterFS)."""
CREATE_ATTEMPTS = 4
"""Opens of a temp file, each after (re)creating its directories: two clients creating one directory tree
at once can see ENOENT or ESTALE from it for a moment (GlusterFS's distribute layer does, while the other
client's mkdir has reached some bricks and not yet others)."""
CREATE_BACKOFF_S = 0.005
"""Pause before the third open, times 4 before each later one (5, 20 ms): only a racing mkdir waits."""

_CREATE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_TRUNC

Buffer = bytes | bytearray | memoryview | mmap.mmap
WritableBuffer = bytearray | memoryview | mmap.mmap


class FileOps:
    """The system calls block I/O makes, in one object so that tests can replace single calls.

    Stateless and thread-safe: forwards to `os`. A test subclasses it and overrides, say, `preadv`
    to raise OSError(EIO) while every other call still hits real files.
    """

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def preadv(self, fd: int, buffers: list[memoryview], offset: int) -> int:
        return os.preadv(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def stat(self, path: str) -> os.stat_result:
        return Path(path).stat()

    def exists(self, path: str) -> bool:
        return os.access(path, os.F_OK)

    def rename(self, src: str, dst: str) -> None:
        Path(src).rename(dst)

    def rename_noreplace(self, src: str, dst: str) -> None:
        rename_noreplace(src, dst)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def unlink(self, path: str) -> None:
        Path(path).unlink()

    def makedirs(self, path: str, *, chmod: bool = True) -> None:
        make_dirs(path, chmod=chmod)

    def fchmod(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)


DEFAULT_OPS = FileOps()


class Durability(enum.Enum):
    """What a store does before publishing the file."""

    NONE = "none"
    """Like vLLM: no sync at all; the data is as durable as the filesystem makes it."""
    FDATASYNC = "fdatasync"
    """fdatasync the temp file before the rename (about 0.3x store throughput on a real disk)."""


class StoreStatus(enum.Enum):
    STORED = "stored"
    ALREADY_PRESENT = "already_present"
    IO_ERROR = "io_error"


class LoadStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    SHORT_DELETED = "short_deleted"
    IO_ERROR = "io_error"


@dataclass(frozen=True, slots=True)
class StoreResult:
    """Outcome of one block store; `errno` is set for IO_ERROR only."""

    status: StoreStatus
    errno: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the block is on the volume afterwards (stored now or already there)."""
        return self.status is not StoreStatus.IO_ERROR


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Outcome of one block load; on anything but OK the destination bytes are undefined."""

    status: LoadStatus
    errno: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is LoadStatus.OK


_STORED = StoreResult(StoreStatus.STORED)
_ALREADY_PRESENT = StoreResult(StoreStatus.ALREADY_PRESENT)
_LOADED = LoadResult(LoadStatus.OK)
_MISSING = LoadResult(LoadStatus.MISSING)


def _store_failed(exc: OSError) -> StoreResult:
    return StoreResult(StoreStatus.IO_ERROR, exc.errno or errno.EIO, str(exc))


def _load_failed(exc: OSError) -> LoadResult:
    return LoadResult(LoadStatus.IO_ERROR, exc.errno or errno.EIO, str(exc))


def _byte_view(buf: Buffer) -> memoryview:
    """A flat unsigned-byte view of `buf`; ValueError if it is empty or not C-contiguous."""
    view = memoryview(buf)
    if not view.c_contiguous or view.nbytes == 0:
        raise ValueError("block buffers must be non-empty and C-contiguous")
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _is_aligned(view: memoryview) -> bool:
    """True when `view` is writable and starts on a DIRECT_ALIGNMENT boundary (read-only: False)."""
    if view.readonly:
        return False
    anchor = ctypes.c_char.from_buffer(view)
    try:
        return ctypes.addressof(anchor) % DIRECT_ALIGNMENT == 0
    finally:
        del anchor


def _is_einval_in_direct(exc: OSError, direct: bool) -> bool:
    return direct and exc.errno == errno.EINVAL


def probe_o_direct(directory: str | os.PathLike[str], *, ops: FileOps = DEFAULT_OPS) -> bool:
    """Whether `directory`'s filesystem takes O_DIRECT: write and read back one aligned page.

    Called once from the agent's startup thread; leaves no file behind. Any OSError means "no".
    """
    if not O_DIRECT:
        return False
    path = f"{os.fspath(directory)}/.o_direct_probe_{secrets.randbits(63)}{TEMP_SUFFIX}"
    page = mmap.mmap(-1, DIRECT_ALIGNMENT)
    try:
        with memoryview(page) as view:
            return _probe_page(path, view, ops)
    except OSError as exc:
        log.warning("O_DIRECT unusable in %s (%s); block I/O will be buffered", directory, exc)
        return False
    finally:
        with suppress(OSError):
            ops.unlink(path)
        page.close()


def _probe_page(path: str, view: memoryview, ops: FileOps) -> bool:
    fd = ops.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | O_DIRECT, 0o644)
    try:
        written = ops.write(fd, view)
    finally:
        ops.close(fd)
    fd = ops.open(path, os.O_RDONLY | O_DIRECT)
    try:
        read = ops.preadv(fd, [view], 0)
    finally:
        ops.close(fd)
    return written == read == DIRECT_ALIGNMENT


class BlockFiles:
    """Stores and loads whole block files; one instance shared by all I/O worker threads.

    `direct` should come from `probe_o_direct` on the volume; `durability` defaults to vLLM's (none).
    """

    def __init__(
        self,
        *,
        direct: bool,
        durability: Durability = Durability.NONE,
        ops: FileOps = DEFAULT_OPS,
        writer_tag: str = "",
    ) -> None:
        """`writer_tag` (from `store.writers`) goes into every temp file name, so that the temp files of
        this process can be swept as soon as it is provably gone."""
        self._temp_suffix = f"_w{writer_tag}{TEMP_SUFFIX}" if writer_tag else TEMP_SUFFIX
        self.direct = bool(direct and O_DIRECT)
        self.durability = durability
        self._ops = ops
        self._local = threading.local()
        self._chmod = not umask_keeps(FILE_MODE | DIR_MODE)
        """Set modes explicitly: the umask (read once, here; the agent never changes it) would strip bits."""
        self._noreplace = True
        """Publish with renameat2(RENAME_NOREPLACE) until the volume says it cannot (then link + unlink)."""

    @classmethod
    def for_volume(
        cls,
        directory: str | os.PathLike[str],
        *,
        durability: Durability = Durability.NONE,
        ops: FileOps = DEFAULT_OPS,
    ) -> "BlockFiles":
        """Probe `directory` for O_DIRECT and build the instance (startup thread)."""
        return cls(direct=probe_o_direct(directory, ops=ops), durability=durability, ops=ops)

    # -- store ----------------------------------------------------------------------------------

    def store(self, path: str, data: Buffer) -> StoreResult:
        """Publish `data` as the block file `path` unless it exists (I/O worker threads).

        Concurrent stores of one path from several threads or hosts leave exactly one complete file.
        """
        view = _byte_view(data)
        ops = self._ops
        if ops.exists(path):
            return _ALREADY_PRESENT
        tmp = f"{path}_{self._temp_number()}{self._temp_suffix}"
        try:
            self._write_temp(tmp, view)
        except OSError as exc:
            self._discard(tmp)
            return _store_failed(exc)
        return self._publish(tmp, path)

    def _temp_number(self) -> int:
        """A 63-bit number for a temp name: a random start per thread, then counting (I/O worker threads).

        Unique per thread and, by its random start, across threads and hosts, at the cost of one counter
        step instead of a call into the OS random source per block."""
        local = self._local
        number: int | None = getattr(local, "temp_number", None)
        number = secrets.randbits(63) if number is None else (number + 1) & TEMP_NUMBER_MASK
        local.temp_number = number
        return number

    def _publish(self, tmp: str, path: str) -> StoreResult:
        """Give the complete temp file its final name unless that name exists (I/O worker threads).

        One renameat2(RENAME_NOREPLACE) where the volume supports it, else link + unlink."""
        ops = self._ops
        if self._noreplace:
            published = self._publish_noreplace(tmp, path)
            if published is not None:
                return published
        try:
            ops.link(tmp, path)
        except FileExistsError:
            self._discard(tmp)
            return _ALREADY_PRESENT
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                self._discard(tmp)
                return _store_failed(exc)
            return self._publish_by_rename(tmp, path)
        self._discard(tmp)
        return _STORED

    def _publish_noreplace(self, tmp: str, path: str) -> StoreResult | None:
        """renameat2(RENAME_NOREPLACE); None (and link from now on) where the volume does not have it."""
        try:
            self._ops.rename_noreplace(tmp, path)
        except FileExistsError:
            self._discard(tmp)
            return _ALREADY_PRESENT
        except OSError as exc:
            if exc.errno not in NOT_SUPPORTED:
                self._discard(tmp)
                return _store_failed(exc)
            self._noreplace = False
            log.info("renameat2(RENAME_NOREPLACE) unsupported here (%s): publishing by link", exc)
            return None
        return _STORED

    def _publish_by_rename(self, tmp: str, path: str) -> StoreResult:
        try:
            self._ops.rename(tmp, path)
        except FileExistsError:
            self._discard(tmp)
            return _ALREADY_PRESENT
        except OSError as exc:
            self._discard(tmp)
            return _store_failed(exc)
        return _STORED

    def _write_temp(self, tmp: str, view: memoryview) -> None:
        """Write the whole temp file, direct when possible; EINVAL from O_DIRECT retries buffered."""
        direct = self.direct and view.nbytes % DIRECT_ALIGNMENT == 0
        try:
            self._write_temp_once(tmp, view, direct)
        except OSError as exc:
            if not _is_einval_in_direct(exc, direct):
                raise
            self._discard(tmp)
            self._write_temp_once(tmp, view, direct=False)

    def _write_temp_once(self, tmp: str, view: memoryview, direct: bool) -> None:
        ops = self._ops
        fd = self._create(tmp, _CREATE_FLAGS | (O_DIRECT if direct else 0))
        try:
            if direct and not _is_aligned(view):
                with self._bounce_view(view.nbytes) as bounce:
                    bounce[:] = view
                    written = ops.write(fd, bounce)
            else:
                written = self._write_all(fd, view)
            if written != view.nbytes:
                raise OSError(errno.EIO, f"short write: {written} of {view.nbytes} bytes")
            if self.durability is Durability.FDATASYNC:
                ops.fdatasync(fd)
        finally:
            ops.close(fd)

    def _write_all(self, fd: int, view: memoryview) -> int:
        """Write all of `view` (buffered I/O), continuing after partial writes: a filling volume ends a
        partial write with the next call's ENOSPC or EDQUOT, which is raised as such."""
        written = 0
        while written < view.nbytes:
            count = self._ops.write(fd, view[written:])
            if count <= 0:
                break
            written += count
        return written

    def _create(self, tmp: str, flags: int) -> int:
        """Open the temp file; on ENOENT or ESTALE (re)create the block's directories and try again."""
        directory = tmp.rpartition("/")[0]
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                fd = self._ops.open(tmp, flags, FILE_MODE)
                break
            except OSError as exc:
                if exc.errno not in _GONE or attempt == CREATE_ATTEMPTS:
                    raise
            if attempt > 1:
                time.sleep(CREATE_BACKOFF_S * 4 ** (attempt - 2))
            self._make_dirs(directory)
        try:
            if self._chmod:  # the umask would strip bits of FILE_MODE
                self._ops.fchmod(fd, FILE_MODE)
        except OSError:
            self._ops.close(fd)
            raise
        return fd

    def _make_dirs(self, directory: str) -> None:
        """Create the block's directories. A failure that leaves the directory there after all was another
        client's mkdir racing this one (GlusterFS answers some such races with EIO): the next open decides."""
        try:
            self._ops.makedirs(directory, chmod=self._chmod)
        except OSError as exc:
            if exc.errno not in _GONE and not self._ops.exists(directory):
                raise

    def _discard(self, path: str) -> None:
        with suppress(OSError):
            self._ops.unlink(path)

    # -- load -----------------------------------------------------------------------------------

    def load(self, path: str, dest: WritableBuffer) -> LoadResult:
        """Read the block file `path` into all of `dest` with one preadv (I/O worker threads).

        A file larger than `dest` fills it with its first bytes, like vLLM.
        """
        view = _byte_view(dest)
        if view.readonly:
            raise ValueError("load destination must be writable")
        direct = self.direct and view.nbytes % DIRECT_ALIGNMENT == 0
        try:
            try:
                got, opened = self._read(path, view, direct)
            except OSError as exc:
                if not _is_einval_in_direct(exc, direct):
                    raise
                got, opened = self._read(path, view, direct=False)
        except (FileNotFoundError, NotADirectoryError):
            return _MISSING
        except OSError as exc:
            return _MISSING if exc.errno == errno.ESTALE else _load_failed(exc)
        if got == view.nbytes:
            return _LOADED
        return self._on_short_read(path, view.nbytes, got, opened)

    def _read(self, path: str, view: memoryview, direct: bool) -> tuple[int, os.stat_result | None]:
        """(bytes read, fstat of the file if the read was short) for one open + preadv."""
        ops = self._ops
        fd = ops.open(path, os.O_RDONLY | (O_DIRECT if direct else 0))
        try:
            if direct and not _is_aligned(view):
                with self._bounce_view(view.nbytes) as bounce:
                    got = ops.preadv(fd, [bounce], 0)
                    view[:got] = bounce[:got]
            else:
                got = ops.preadv(fd, [view], 0)
            return got, (ops.fstat(fd) if got < view.nbytes else None)
        finally:
            with suppress(OSError):
                ops.close(fd)

    def _on_short_read(self, path: str, wanted: int, got: int, opened: os.stat_result | None) -> LoadResult:
        """Delete the file only if it is provably short and still the same file; else keep it."""
        detail = f"short read: {got} of {wanted} bytes"
        if opened is None or opened.st_size >= wanted:
            return LoadResult(LoadStatus.IO_ERROR, errno.EIO, f"{detail}, file is full size; kept")
        try:
            current = self._ops.stat(path)
            if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
                return LoadResult(LoadStatus.IO_ERROR, errno.EIO, f"{detail}; file replaced meanwhile, kept")
            self._ops.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return LoadResult(LoadStatus.IO_ERROR, exc.errno, f"{detail}; could not delete it: {exc}")
        return LoadResult(LoadStatus.SHORT_DELETED, None, detail)

    # -- per-thread bounce buffer ---------------------------------------------------------------

    def _bounce_view(self, nbytes: int) -> memoryview:
        """A page-aligned scratch view of `nbytes`, owned by the calling thread; release it after use."""
        buf: mmap.mmap | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:
            size = -(-nbytes // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT
            buf = mmap.mmap(-1, size)
            self._local.buf = buf
        return memoryview(buf)[:nbytes]
