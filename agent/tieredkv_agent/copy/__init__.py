"""The agent's torch copy engine: batched block copies between host memory, shared memory and GPUs.

Importing this package does not import torch; its torch modules are imported where they are used:

* `plan`: index checks, merged runs, byte pieces (pure Python, re-exported here);
* `spaces`: `BlockSpace` (blocks of one size in one memory) and `views_space` for a job's slot views;
* `lanes`: `CopyBatch` and the FIFO lanes (host lane with its CPU threads);
* `engine`: `CopyEngine`, the entry point;
* `cuda`: the CUDA lanes (streams, events, pinned staging), loaded on the first CUDA space;
* `cuda_ipc`, `gpu_region`: the opt-in direct path (CUDA IPC memory handles, device-memory flags).

Nothing here imports the agent's settings, metrics or pydantic, so a process with only torch (a vLLM
instance's GPU worker) can use it. See docs/copy-engine.md.
"""

from tieredkv_agent.copy.plan import CopyError, Piece, Run, plan_runs, split_runs

__all__ = ["CopyError", "Piece", "Run", "plan_runs", "split_runs"]
