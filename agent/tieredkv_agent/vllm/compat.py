"""vLLM's tiering types when vLLM is importable, stand-ins with the same names and fields when it is not.

The plugin subclasses vLLM's real `SecondaryTierManager` and answers with vLLM's own `LookupResult` and
`JobResult` whenever vLLM is installed, so vLLM's isinstance checks and dataclass fields hold. Without
vLLM (the agent image, tests, the demo's stand-in engine) the module still imports and the plugin works
with the stand-ins below.

What differs between vLLM lines comes from the one line table (`tieredkv_common.vllm_lines`, its `TierApi`),
looked up by the installed vLLM's version (`LINE`; the newest row without vLLM): the job slot field
(`chunk_ids`, `block_ids` in older lines), whether `JobResult` has `deferred_release` (0.34 on), the
`LookupResult` enum or `True`/`False`/`None` (before 0.25). `JOB_RESULT_MISMATCH` says where the installed
classes disagree with the table (the per-line tests assert it is empty); `make_job_result` passes only the
fields the installed class really has, whatever the table says.

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

from tieredkv_common.vllm_lines import VllmLine, latest_line, line_for_release

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


def _installed_line() -> VllmLine:
    try:
        version = str(importlib.import_module("vllm").__version__)
    except Exception:
        return latest_line()
    try:
        return line_for_release(version)
    except ValueError:
        log.warning("vLLM %s is not a release the line table knows; assuming the newest line", version)
        return latest_line()


LINE: VllmLine = _installed_line()
"""The line-table row of the installed vLLM (the newest row when vLLM is absent)."""
JOB_RESULT_MISMATCH: frozenset[str] = (
    frozenset(_JOB_RESULT_FIELDS) ^ frozenset(LINE.tier_api.job_result_fields)
    if VLLM_JOB_RESULT is not None and _JOB_RESULT_FIELDS is not None
    else frozenset()
)
"""JobResult fields where the installed vLLM and the line table disagree (empty when they agree)."""
if JOB_RESULT_MISMATCH:
    log.warning(
        "vLLM's JobResult differs from line %s of the table in %s", LINE.line, sorted(JOB_RESULT_MISMATCH)
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
    """True when the line and the installed class have `JobResult.deferred_release` (0.34 on; stand-ins)."""
    has_field = _JOB_RESULT_FIELDS is None or "deferred_release" in _JOB_RESULT_FIELDS
    return LINE.tier_api.deferred_release and has_field


def request_context() -> Any:
    """A fresh default `RequestOffloadingContext` (what `on_new_request` returns)."""
    return REQUEST_CONTEXT()


def job_slots(job: Any) -> list[int]:
    """The primary-tier slot of each key: the line's field (`chunk_ids` or `block_ids`), else the other."""
    first = LINE.tier_api.job_slot_field
    for name in (first, "block_ids" if first == "chunk_ids" else "chunk_ids"):
        slots = getattr(job, name, None)
        if slots is not None:
            return [int(slot) for slot in slots]
    raise TypeError(f"{type(job).__name__} has neither chunk_ids nor block_ids")


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
