"""Copies between the RAM pool and a client's mapped region done by the kernel, which cannot fault the agent.

The RAM tier's own copy engine copies in user space: on a client's region that the client truncated, that
would be SIGBUS. process_vm_readv/process_vm_writev on the agent's own pid copy the same bytes in the
kernel instead: a page of the region that is gone ends the copy early (a short count or EFAULT), and the
blocks copied before it are whole. So the RAM tier can serve loads straight into the region and cache
stores straight from it, one copy each, without a staging buffer.

`KernelCopier.probe()` returns None where the calls are not allowed (seccomp, old kernel): the socket
server then stages RAM-tier jobs as before. Threads: any; ctypes releases the GIL during each call.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence
from typing import Any

IOV_MAX = 1024
"""At most this many blocks per call (the kernel's limit on iovecs per side)."""


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


def address(view: memoryview) -> int:
    """The address of a writable, contiguous view's first byte (its bytes are not touched)."""
    anchor = ctypes.c_char.from_buffer(view)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


class KernelCopier:
    """Block copies within this process by process_vm_readv/process_vm_writev."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._pid = os.getpid()
        self._calls: dict[str, Any] = {}
        for name in ("process_vm_readv", "process_vm_writev"):
            call = getattr(libc, name)
            call.argtypes = [
                ctypes.c_int,
                ctypes.POINTER(_IoVec),
                ctypes.c_ulong,
                ctypes.POINTER(_IoVec),
                ctypes.c_ulong,
                ctypes.c_ulong,
            ]
            call.restype = ctypes.c_ssize_t
            self._calls[name] = call

    @classmethod
    def probe(cls) -> KernelCopier | None:
        """A copier if one page copies through the kernel here, else None."""
        try:
            copier = cls()
            source, target = bytearray(b"k" * 4096), bytearray(4096)
            done = copier.copy(
                "process_vm_writev", [address(memoryview(source))], [address(memoryview(target))], 4096
            )
        except (AttributeError, OSError):
            return None
        return copier if done == 1 and target == source else None

    def copy(self, call: str, local: Sequence[int], remote: Sequence[int], block_bytes: int) -> int:
        """Copy blocks local[i] -> remote[i] (writev) or remote[i] -> local[i] (readv), in order; the
        number of leading blocks copied whole. The remote side is the client's region: a page of it that is
        gone stops the copy there (EFAULT or a short count), it never raises a signal."""
        function = self._calls[call]
        copied = 0
        for start in range(0, len(local), IOV_MAX):
            count = min(IOV_MAX, len(local) - start)
            left = (_IoVec * count)(*(_IoVec(local[start + i], block_bytes) for i in range(count)))
            right = (_IoVec * count)(*(_IoVec(remote[start + i], block_bytes) for i in range(count)))
            done = int(function(self._pid, left, count, right, count, 0))
            if done < 0:
                code = ctypes.get_errno()
                if code == errno.EFAULT:
                    return copied
                raise OSError(code, os.strerror(code))
            whole = done // block_bytes
            copied += whole
            if whole < count:
                return copied
        return copied
