"""A stand-in for a vLLM engine's scheduler side, to drive tier plugins the way vLLM does.

It is honest about what it is: no model runs. It makes the CPU region exactly as vLLM's
`SharedOffloadRegion` does (`region`), computes real block hashes of real token ids with the process's
`PYTHONHASHSEED` (`tieredkv_agent.store.hashing`), fills each "computed" block with bytes that are a
pure function of its key (as real KV bytes are a function of the tokens for one model), and calls the
tier in the order `TieringOffloadingManager` does (`driver`). Used by the contract tests, the
benchmarks and the demo's engine pods (`python -m tieredkv_agent.standin`).
"""
