"""Pure computation of a TieredKVCache's status from its spec and its observed children.

No kopf and no API client here (an import-linter contract enforces it).
"""
