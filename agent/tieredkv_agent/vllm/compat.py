"""vLLM's tiering types when vLLM is importable, stand-ins with the same names and fields when it is not.

The plugin subclasses vLLM's real `SecondaryTierManager` and answers with vLLM's own `LookupResult` and
`JobResult` whenever vLLM is installed, so vLLM's isinstance checks and dataclass fields hold. Without
vLLM (the agent image, tests, the demo's stand-in engine) the module still imports and the plugin works
with the stand-ins below. Releases differ (reference: vllm-kv-offload.md §1):

* `LookupResult` (MISS/HIT/HIT_PENDING/RETRY) exists from about 0.25; older releases take
  `True`/`False`/`None` from `lookup`. `lookup_answer` converts.
* `JobResult` gained `successful_keys`, `transfer_time` and `transfer_bytes` over time;
  `make_job_result` passes only the fields the installed class has.
* `TransferJob.chunk_ids` (0.32 on) was `block_ids` in older releases; `job_slots` reads either.
* `JobResult.deferred_release` (0.34 on): a failed load whose I/O may still write into its slots hands
  vLLM an event to set once it cannot; `make_job_result` drops it on releases without the field.
* `on_new_request` must return a `RequestOffloadingContext` (vLLM reads its `policy`); `request_context`
  builds vLLM's default one, or a stand-in.

Imported once, on the thread that imports the plugin; everything here is immutable afterwards.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import logging
import threading
from collections.abc import Collection, Iterable
from typing import Any

log = logging.getLogger(__name__)

_BASE_MODULES = ("vllm.v1.kv_offload.tiering.base",)
_TYPE_MODULES = ("vllm.v1.kv_offload.tiering.base", "vllm.v1.kv_offload.base")


def _find(name: str, modules: Iterable[str]) -> Any:
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # vLLM absent, or present but broken on this machine: use the stand-in
            continue
        if hasattr(module, name):
            return getattr(module, name)
    return None


class FallbackLookupResult(enum.Enum):
    """vLLM's `LookupResult` values, for when vLLM is not installed."""

    MISS = 0
    HIT = 1
    HIT_PENDING = 2
    RETRY = 3


@dataclasses.dataclass
class FallbackJobResult:
    """vLLM 0.33's `JobResult` fields, for when vLLM is not installed."""

    job_id: int
    success: bool
    successful_keys: Collection[bytes] | None = None
    transfer_time: float | None = None
    transfer_bytes: int | None = None
    deferred_release: threading.Event | None = None


@dataclasses.dataclass
class FallbackRequestOffloadingContext:
    """vLLM's per-request tier preference, for when vLLM is not installed (block level, the default)."""

    policy: str = "CHUNK_LEVEL"


class FallbackSecondaryTierManager:
    """The state vLLM's base class keeps, for when vLLM is not installed."""

    medium: Any = None
    tolerates_off_thread_polling = False

    def __init__(self, offloading_spec: Any, primary_kv_view: memoryview, tier_type: str) -> None:
        self._offloading_spec = offloading_spec
        self._primary_kv_view = primary_kv_view
        self.tier_type = tier_type
        self.locality: Any = None


VLLM_BASE: Any = _find("SecondaryTierManager", _BASE_MODULES)
VLLM_LOOKUP_RESULT: Any = _find("LookupResult", _TYPE_MODULES)
VLLM_JOB_RESULT: Any = _find("JobResult", _TYPE_MODULES)
MEDIUM_STORAGE: Any = getattr(_find("Medium", _TYPE_MODULES), "STORAGE", None)
"""vLLM's `Medium.STORAGE` (hits count as disk hits), or None without vLLM."""

BASE: type = VLLM_BASE if VLLM_BASE is not None else FallbackSecondaryTierManager
LOOKUP_RESULT: Any = (
    VLLM_LOOKUP_RESULT if VLLM_LOOKUP_RESULT is not None or VLLM_BASE is not None else FallbackLookupResult
)
"""None when vLLM is installed but predates LookupResult (lookups then answer True/False/None)."""
JOB_RESULT: Any = VLLM_JOB_RESULT if VLLM_JOB_RESULT is not None else FallbackJobResult
VLLM_REQUEST_CONTEXT: Any = _find("RequestOffloadingContext", _TYPE_MODULES)
REQUEST_CONTEXT: Any = (
    VLLM_REQUEST_CONTEXT if VLLM_REQUEST_CONTEXT is not None else FallbackRequestOffloadingContext
)
_JOB_RESULT_FIELDS = (
    frozenset(f.name for f in dataclasses.fields(JOB_RESULT))
    if dataclasses.is_dataclass(JOB_RESULT)
    else None
)


def lookup_answer(code: str) -> Any:
    """The value `lookup` returns for "HIT", "MISS" or "RETRY" on the installed vLLM."""
    if LOOKUP_RESULT is None:
        return {"HIT": True, "MISS": False, "RETRY": None}[code]
    return getattr(LOOKUP_RESULT, code)


def make_job_result(
    job_id: int,
    success: bool,
    *,
    successful_keys: Collection[bytes] | None,
    transfer_time: float,
    transfer_bytes: int,
    deferred_release: threading.Event | None = None,
) -> Any:
    """A JobResult with whichever of the optional fields the installed class has."""
    values: dict[str, Any] = {
        "job_id": job_id,
        "success": success,
        "successful_keys": successful_keys,
        "transfer_time": transfer_time,
        "transfer_bytes": transfer_bytes,
        "deferred_release": deferred_release,
    }
    if _JOB_RESULT_FIELDS is not None:
        values = {name: value for name, value in values.items() if name in _JOB_RESULT_FIELDS}
    return JOB_RESULT(**values)


def supports_deferred_release() -> bool:
    """True when the installed JobResult carries `deferred_release` (vLLM 0.34 on, and the stand-in)."""
    return _JOB_RESULT_FIELDS is None or "deferred_release" in _JOB_RESULT_FIELDS


def request_context() -> Any:
    """A fresh default `RequestOffloadingContext` (what `on_new_request` returns)."""
    return REQUEST_CONTEXT()


def job_slots(job: Any) -> list[int]:
    """The primary-tier slot of each key: `chunk_ids` (0.33 on) or `block_ids` (before)."""
    slots = getattr(job, "chunk_ids", None)
    if slots is None:
        slots = getattr(job, "block_ids", None)
    if slots is None:
        raise TypeError(f"{type(job).__name__} has neither chunk_ids nor block_ids")
    return [int(slot) for slot in slots]


def request_id(req_context: Any) -> str | None:
    """vLLM's request id from a ReqContext (or None for a context without one)."""
    value = getattr(req_context, "req_id", None)
    return None if value is None else str(value)


def base_init_kwargs(backpressure_detector: Any) -> dict[str, Any]:
    """Extra keyword arguments the installed base class's constructor takes (0.33: the detector)."""
    if VLLM_BASE is None:
        return {}
    try:
        import inspect

        parameters = inspect.signature(VLLM_BASE.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {"backpressure_detector": backpressure_detector} if "backpressure_detector" in parameters else {}
