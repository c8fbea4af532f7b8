"""The offloading worker for vLLM's CPU platform: synchronous copies between KV tensors and the region.

vLLM's GPU worker (`kv_offload/cpu/gpu_worker.py`) queues `swap_blocks_batch` on CUDA streams; on the CPU
platform the engine's KV cache is ordinary host memory, so the same (src, dst, size) triples
(`tieredkv_agent.vllm_cpu.plan`) are simply memmoved, and a job is finished when its submit call returns.

Imported only by `tieredkv_agent.vllm_cpu.spec`, inside a process where vLLM is importable. Every method
runs in vLLM's worker process, on the thread that runs the model (vLLM's `OffloadingConnectorWorker` calls
them between forward passes: stores of the previous step and loads before the next forward), so a copy
never races the model writing or reading the same blocks.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

import numpy as np

from tieredkv_agent.vllm_cpu.plan import DataRef, TensorPair, plan_copies, validate_pairs

log = logging.getLogger(__name__)

_base: Any = importlib.import_module("vllm.v1.kv_offload.base")


class RegionCopyWorker(_base.OffloadingWorker):  # type: ignore[misc]  # vLLM's ABC, typed Any
    """`OffloadingWorker` over the shared offload region, for engines whose KV cache is in host memory."""

    def __init__(self, kv_caches: Any, region: Any, blocks_per_chunk: int) -> None:
        """Take one column of `region` per canonical tensor of `kv_caches`, in their order (vLLM's layout).

        `region` is a `SharedOffloadRegion` opened with this worker's rank; the worker owns it from now on
        and releases it in `shutdown`. Raises RuntimeError for KV tensors that are not in host memory.
        """
        self._region = region
        self._blocks_per_chunk = blocks_per_chunk
        self._views: list[Any] = []
        pairs: list[TensorPair] = []
        for index, canonical in enumerate(kv_caches.tensors):
            tensor = canonical.tensor
            if tensor.device.type != "cpu" or tensor.ndim != 2 or tensor.stride(1) != 1:
                raise RuntimeError(
                    f"KV tensor {index} is {tuple(tensor.shape)} on {tensor.device} with strides "
                    f"{tensor.stride()}; the CPU offloading worker needs (blocks, bytes) rows in host memory"
                )
            page_bytes = int(canonical.page_size_bytes)
            view = region.create_next_worker_view(page_bytes * blocks_per_chunk)
            self._views.append(view)
            pairs.append(
                TensorPair(
                    engine_base=int(tensor.data_ptr()),
                    engine_block_stride=int(tensor.stride(0)) * int(tensor.element_size()),
                    engine_num_blocks=int(tensor.shape[0]),
                    page_bytes=page_bytes,
                    region_base=int(view.data_ptr()),
                    region_row_stride=int(view.stride(0)),
                    region_num_chunks=int(view.shape[0]),
                )
            )
        self._pairs = tuple(pairs)
        self._refs = tuple(
            tuple(DataRef(int(ref.tensor_idx), int(ref.page_size_bytes)) for ref in group)
            for group in kv_caches.group_data_refs
        )
        validate_pairs(self._pairs, self._refs)
        # The engine's tensors must outlive every copy: hold them as long as the worker.
        self._kv_caches = kv_caches
        self._finished: list[Any] = []
        log.info(
            "tieredkv CPU offloading worker: %d KV tensor(s), %d group(s), %d block(s) per chunk",
            len(pairs),
            len(self._refs),
            blocks_per_chunk,
        )

    def submit_store(self, job_id: int, src_spec: Any, dst_spec: Any) -> bool:
        """Copy engine blocks `src_spec` into region chunks `dst_spec` now; finished at once."""
        return self._transfer(job_id, engine_spec=src_spec, chunk_spec=dst_spec, to_region=True)

    def submit_load(self, job_id: int, src_spec: Any, dst_spec: Any) -> bool:
        """Copy region chunks `src_spec` into engine blocks `dst_spec` now; finished at once."""
        return self._transfer(job_id, engine_spec=dst_spec, chunk_spec=src_spec, to_region=False)

    def get_finished(self) -> list[Any]:
        """Every job submitted since the last call, each reported once (all succeeded: copies do not fail)."""
        finished, self._finished = self._finished, []
        return finished

    def wait(self, job_ids: set[int]) -> None:
        """Nothing to wait for: a job is complete when its submit call returns."""

    def shutdown(self) -> None:
        """Release the region views and the worker's mapping of the region (idempotent)."""
        self._views.clear()
        self._pairs = ()
        if self._region is not None:
            self._region.cleanup()
            self._region = None

    def _transfer(self, job_id: int, *, engine_spec: Any, chunk_spec: Any, to_region: bool) -> bool:
        if self._region is None:
            raise RuntimeError(f"offloading job {job_id} submitted after shutdown")
        started = time.perf_counter()
        plan = plan_copies(
            self._pairs,
            self._refs,
            self._blocks_per_chunk,
            engine_block_ids=np.asarray(engine_spec.block_ids),
            group_sizes=list(engine_spec.group_sizes),
            block_indices=list(engine_spec.block_indices),
            chunk_ids=np.asarray(chunk_spec.block_ids),
            to_region=to_region,
        )
        plan.run()
        self._finished.append(
            _base.TransferResult(
                job_id=job_id,
                success=True,
                transfer_size=plan.total_bytes,
                transfer_time=time.perf_counter() - started,
            )
        )
        return True
