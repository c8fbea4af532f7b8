"""`CPUTieringOffloadingSpec`: vLLM's `TieringOffloadingSpec` with a worker that runs on the CPU platform.

Imported by vLLM's `OffloadingSpecFactory` (through `tieredkv_agent.vllm_cpu.__getattr__`) in the engine-core
(scheduler) process and in each worker process; importing it checks the vLLM line first. Everything but
`get_worker` is inherited: the scheduler side (CPU primary tier, secondary tiers, metrics) is vLLM's own.
"""

from __future__ import annotations

import importlib
from typing import Any

from tieredkv_agent.vllm_cpu import check_vllm_line

check_vllm_line()

_tiering_spec: Any = importlib.import_module("vllm.v1.kv_offload.tiering.spec")
_region: Any = importlib.import_module("vllm.v1.kv_offload.cpu.shared_offload_region")


class CPUTieringOffloadingSpec(_tiering_spec.TieringOffloadingSpec):  # type: ignore[misc]  # typed Any
    """Tiering offloading whose worker memmoves between host-memory KV tensors and the shared region."""

    def get_worker(self, kv_caches: Any) -> Any:
        """The worker of this process (vLLM's worker thread calls this once, from `register_kv_caches`).

        Opens the shared offload region with this worker's rank exactly as vLLM's tiering spec does and
        hands it to a `RegionCopyWorker`. Raises RuntimeError off the CPU platform, and for
        `canonical_layout`, which this worker does not implement.
        """
        existing = getattr(self, "_tieredkv_worker", None)
        if existing is not None:
            return existing
        platforms = importlib.import_module("vllm.platforms")
        if not platforms.current_platform.is_cpu():
            raise RuntimeError(
                "tieredkv's CPUTieringOffloadingSpec is for vLLM's CPU platform; on GPUs use vLLM's own "
                'spec_name "TieringOffloadingSpec" (and no spec_module_path)'
            )
        if self.config.canonical_layout:
            raise RuntimeError(
                "tieredkv's CPU offloading worker does not implement canonical_layout; remove it from "
                "kv_connector_extra_config"
            )
        from tieredkv_agent.vllm_cpu.worker import RegionCopyWorker

        rank = 0 if self.replicated_layout else self.config.parallel.rank
        region = _region.SharedOffloadRegion(
            engine_id=self._engine_id,
            num_chunks=self.num_chunks,
            rank=rank,
            kv_bytes_per_chunk=self.kv_bytes_per_chunk,
            cpu_page_size=self.cpu_page_size_per_worker,
        )
        try:
            worker = RegionCopyWorker(kv_caches, region, self.blocks_per_chunk)
        except Exception:
            region.cleanup()
            raise
        self._tieredkv_worker = worker
        return worker
