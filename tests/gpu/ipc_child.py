"""The other process of the CUDA IPC test (started with spawn): an "instance" that exports its KV tensor.

It fills a tensor that sits at an offset inside a larger allocation, exports it and a pair of flag slots,
signals slot 0 when the fill is done, then waits on slot 1 for the agent's write and checks it. It keeps its
memory until the parent says it closed its mapping (freeing exported memory still mapped elsewhere is
undefined behaviour).
"""

from __future__ import annotations

from typing import Any

import torch

OFFSET = 1 << 20


def pattern(blocks: int, block_bytes: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (blocks, block_bytes), dtype=torch.uint8, generator=generator)


def exporter(replies: Any, orders: Any, blocks: int, block_bytes: int, written: int) -> None:
    from tieredkv_agent.copy.gpu_region import FlagSlots, export_region
    from tieredkv_agent.copy.typed import new_stream

    try:
        torch.cuda.set_device(0)
        allocation = torch.empty(OFFSET + blocks * block_bytes + 4096, dtype=torch.uint8, device="cuda")
        region = allocation[OFFSET : OFFSET + blocks * block_bytes]
        flags = FlagSlots.create(2)
        producer = new_stream(0)
        with torch.cuda.stream(producer):
            region.copy_(pattern(blocks, block_bytes, 1).view(-1).to("cuda"))
        flags.enqueue_write(producer, 0, 1)
        replies.put((export_region(region, block_bytes), flags.export()))
        assert orders.get(timeout=120) == "written"
        consumer = new_stream(0)
        flags.enqueue_wait(consumer, 1, 1)
        with torch.cuda.stream(consumer):
            landed = region.view(blocks, block_bytes)[:written].cpu()
        replies.put(bool(torch.equal(landed, pattern(written, block_bytes, 2))))
        assert orders.get(timeout=120) == "closed"
        torch.cuda.synchronize()
    except Exception as exc:
        replies.put(f"child failed: {type(exc).__name__}: {exc}")
