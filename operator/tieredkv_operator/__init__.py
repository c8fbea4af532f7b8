"""tieredkv operator: reconciles TieredKVCache objects into the children a shared KV cache needs."""

__version__ = "0.1.0"
