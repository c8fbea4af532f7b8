"""Typed wrappers for the few torch.cuda constructors torch leaves untyped (Event, Stream, cudart).

Thin on purpose: each returns exactly what torch returns. Any thread.
"""

from __future__ import annotations

from typing import Any

import torch


def new_event(*, blocking: bool = False) -> torch.cuda.Event:
    """A CUDA event; `blocking` makes `synchronize` sleep instead of spin (cudaEventBlockingSync)."""
    return torch.cuda.Event(blocking=blocking)  # type: ignore[no-untyped-call]


def new_stream(device: torch.device | int) -> torch.cuda.Stream:
    """A new CUDA stream on `device`."""
    return torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]


def cudart() -> Any:
    """torch's CUDA runtime module (cudaHostRegister, cudaHostUnregister, ...)."""
    return torch.cuda.cudart()  # type: ignore[no-untyped-call]
