"""Pure computation of a TieredKVCache's status from its spec and its observed children (no kopf, no client)."""
