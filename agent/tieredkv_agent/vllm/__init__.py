"""The tieredkv vLLM tier plugin: vLLM's `SecondaryTierManager` contract, served by the node agent.

Two ways in, both rendered by the operator for agent-mode caches:

* `{"type": "TieredKVTier", "module_path": "tieredkv_agent.vllm", ...}` in `secondary_tiers`
  (vLLM releases with out-of-tree tier loading);
* the `vllm.general_plugins` entry point `tieredkv = tieredkv_agent.vllm:register`, which registers the
  tier type `tieredkv` with vLLM's `SecondaryTierFactory` for releases that only know registered types.

Importing this package imports neither torch nor (unless it is installed) vLLM.
"""

from __future__ import annotations

import importlib
import logging

from tieredkv_agent.vllm.tier import TieredKVTier

__all__ = ["TIER_TYPE", "TieredKVTier", "register"]

TIER_TYPE = "tieredkv"
log = logging.getLogger(__name__)


def register() -> bool:
    """Register tier type `tieredkv` with vLLM's factory (vLLM's plugin loader, in every vLLM process).

    Idempotent; False (and a debug line) where vLLM or its tiering factory is absent.
    """
    try:
        factory = importlib.import_module("vllm.v1.kv_offload.tiering.factory").SecondaryTierFactory
    except Exception as exc:
        log.debug(
            "vLLM's tiering factory is not importable (%s); tier type %r not registered", exc, TIER_TYPE
        )
        return False
    registry = getattr(factory, "_registry", {})
    if TIER_TYPE not in registry:
        factory.register_tier(TIER_TYPE, __name__, TieredKVTier.__name__)
    return True
