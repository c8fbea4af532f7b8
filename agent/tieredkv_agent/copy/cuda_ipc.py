"""ctypes bindings for the few CUDA calls the direct GPU path needs, and nothing else.

Runtime (libcudart, the copy torch loaded):  cudaIpcGetMemHandle, cudaIpcOpenMemHandle, cudaIpcCloseMemHandle
Driver (libcuda.so.1):                       cuMemGetAddressRange, cuStreamWriteValue64, cuStreamWaitValue64,
                                             cuDeviceGetAttribute

Memory handles rendezvous inside the kernel driver, so they work between containers that share neither
`/dev/shm` nor the IPC namespace; torch's own CUDA tensor sharing (`share_memory_`, `reduce_tensor`) keeps a
reference-count file in `/dev/shm` and is deliberately not used. A handle names a whole allocation and opens
at its base: exporters ship `data_ptr - allocation base` as well (see gpu_region.py).

Every call runs with `device` current on the calling thread (cudaSetDevice + cudaFree(0) binds the primary
context, which the driver calls need) and restores the caller's device afterwards. Failures raise CopyError
with CUDA's own error text. Any thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tieredkv_agent.copy.plan import CopyError

HANDLE_BYTES = 64
IPC_LAZY_ENABLE_PEER_ACCESS = 1
"""cudaIpcMemLazyEnablePeerAccess: the only flag cudaIpcOpenMemHandle accepts."""
ATTRIBUTE_64_BIT_STREAM_MEM_OPS = 93
"""CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS."""
WAIT_VALUE_GEQ = 0
"""CU_STREAM_WAIT_VALUE_GEQ: wait until (int64)(*addr - value) >= 0."""
WRITE_VALUE_DEFAULT = 0

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}


class IpcMemHandle(ctypes.Structure):
    """cudaIpcMemHandle_t: 64 opaque bytes, passed by value."""

    _fields_ = [("reserved", ctypes.c_ubyte * HANDLE_BYTES)]


def _loaded_cudart() -> str:
    """The path of the libcudart this process already mapped (torch's), else the linker's best guess."""
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.rsplit(" ", 1)[-1]
            if "/libcudart.so" in path:
                return path
    except OSError:
        pass
    found = ctypes.util.find_library("cudart")
    if found is None:
        raise CopyError("libcudart is not loaded and not found; initialise torch.cuda first")
    return found


def _lib(kind: str) -> ctypes.CDLL:
    with _lock:
        lib = _libs.get(kind)
        if lib is None:
            try:
                lib = ctypes.CDLL(_loaded_cudart() if kind == "runtime" else "libcuda.so.1")
            except OSError as exc:
                raise CopyError(f"cannot load the CUDA {kind} library: {exc}") from exc
            _declare(lib, kind)
            _libs[kind] = lib
        return lib


def _driver_symbol(lib: ctypes.CDLL, name: str) -> Any:
    """The `_v2` entry point where the driver has one (what cuda.h maps the name to since CUDA 12)."""
    for candidate in (f"{name}_v2", name):
        try:
            return getattr(lib, candidate)
        except AttributeError:
            continue
    raise CopyError(f"the CUDA driver has no {name}")


def _declare(lib: ctypes.CDLL, kind: str) -> None:
    c_int, c_uint, c_size, c_ptr, c_u64 = (
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_uint64,
    )
    signatures: dict[str, list[Any]]
    if kind == "runtime":
        signatures = {
            "cudaSetDevice": [c_int],
            "cudaGetDevice": [ctypes.POINTER(c_int)],
            "cudaFree": [c_ptr],
            "cudaIpcGetMemHandle": [ctypes.POINTER(IpcMemHandle), c_ptr],
            "cudaIpcOpenMemHandle": [ctypes.POINTER(c_ptr), IpcMemHandle, c_uint],
            "cudaIpcCloseMemHandle": [c_ptr],
        }
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        lib.cudaGetErrorString.argtypes = [c_int]
    else:
        signatures = {
            "cuDeviceGet": [ctypes.POINTER(c_int), c_int],
            "cuDeviceGetAttribute": [ctypes.POINTER(c_int), c_int, c_int],
            "cuGetErrorString": [c_int, ctypes.POINTER(ctypes.c_char_p)],
        }
        for name, argtypes in (
            ("cuMemGetAddressRange", [ctypes.POINTER(c_u64), ctypes.POINTER(c_size), c_u64]),
            ("cuStreamWriteValue64", [c_ptr, c_u64, c_u64, c_uint]),
            ("cuStreamWaitValue64", [c_ptr, c_u64, c_u64, c_uint]),
        ):
            function = _driver_symbol(lib, name)
            function.restype, function.argtypes = c_int, argtypes
            setattr(lib, f"tkv_{name}", function)
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = c_int, argtypes


def _check_runtime(status: int, what: str) -> None:
    if status != 0:
        text = _lib("runtime").cudaGetErrorString(status)
        raise CopyError(f"{what} failed: CUDA error {status} ({(text or b'?').decode()})")


def _check_driver(status: int, what: str) -> None:
    if status != 0:
        text = ctypes.c_char_p()
        _lib("driver").cuGetErrorString(status, ctypes.byref(text))
        raise CopyError(f"{what} failed: CUDA driver error {status} ({(text.value or b'?').decode()})")


@contextlib.contextmanager
def bound(device: int) -> Iterator[None]:
    """`device`'s primary context current on this thread for the block (driver calls need one).

    The caller's current device is restored afterwards, so a vLLM worker thread is left as it was.
    """
    runtime, previous = _lib("runtime"), ctypes.c_int(-1)
    _check_runtime(runtime.cudaGetDevice(ctypes.byref(previous)), "cudaGetDevice")
    _check_runtime(runtime.cudaSetDevice(device), f"cudaSetDevice({device})")
    try:
        _check_runtime(runtime.cudaFree(None), "cudaFree(0)")
        yield
    finally:
        if previous.value not in (-1, device):
            runtime.cudaSetDevice(previous.value)


def address_range(pointer: int, device: int) -> tuple[int, int]:
    """(base, size) of the allocation that contains `pointer`."""
    base, size = ctypes.c_uint64(), ctypes.c_size_t()
    with bound(device):
        status = _lib("driver").tkv_cuMemGetAddressRange(ctypes.byref(base), ctypes.byref(size), pointer)
    _check_driver(status, "cuMemGetAddressRange")
    return int(base.value), int(size.value)


def get_mem_handle(base: int, device: int) -> bytes:
    """The 64-byte IPC handle of the allocation starting at `base` (cudaMalloc'd memory only)."""
    handle = IpcMemHandle()
    with bound(device):
        status = _lib("runtime").cudaIpcGetMemHandle(ctypes.byref(handle), base)
    _check_runtime(status, "cudaIpcGetMemHandle (expandable segments and cudaMallocAsync cannot export)")
    return bytes(handle.reserved)


def open_mem_handle(handle: bytes, device: int) -> int:
    """Map another process's allocation into this one; returns its base address here."""
    if len(handle) != HANDLE_BYTES:
        raise CopyError(f"an IPC memory handle has {HANDLE_BYTES} bytes, not {len(handle)}")
    pointer = ctypes.c_void_p()
    value = IpcMemHandle.from_buffer_copy(handle)
    with bound(device):
        status = _lib("runtime").cudaIpcOpenMemHandle(
            ctypes.byref(pointer), value, IPC_LAZY_ENABLE_PEER_ACCESS
        )
    _check_runtime(status, "cudaIpcOpenMemHandle (a process cannot open its own handle)")
    return int(pointer.value or 0)


def close_mem_handle(base: int, device: int) -> None:
    """Unmap an allocation opened with `open_mem_handle` (after every copy using it finished)."""
    with bound(device):
        status = _lib("runtime").cudaIpcCloseMemHandle(base)
    _check_runtime(status, "cudaIpcCloseMemHandle")


def stream_mem_ops(device: int) -> bool:
    """True when `device` supports 64-bit stream write/wait operations."""
    driver, handle, value = _lib("driver"), ctypes.c_int(), ctypes.c_int()
    with bound(device):
        _check_driver(driver.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
        status = driver.cuDeviceGetAttribute(
            ctypes.byref(value), ATTRIBUTE_64_BIT_STREAM_MEM_OPS, handle.value
        )
    _check_driver(status, "cuDeviceGetAttribute")
    return bool(value.value)


def stream_write_value(stream: int, address: int, value: int, device: int) -> None:
    """Queue `*address = value` (8 bytes) on `stream`, after the work queued before it."""
    with bound(device):
        status = _lib("driver").tkv_cuStreamWriteValue64(stream, address, value, WRITE_VALUE_DEFAULT)
    _check_driver(status, "cuStreamWriteValue64")


def stream_wait_value(stream: int, address: int, value: int, device: int) -> None:
    """Make `stream` wait until the 8 bytes at `address` reach `value` (cyclic >=)."""
    with bound(device):
        status = _lib("driver").tkv_cuStreamWaitValue64(stream, address, value, WAIT_VALUE_GEQ)
    _check_driver(status, "cuStreamWaitValue64")
