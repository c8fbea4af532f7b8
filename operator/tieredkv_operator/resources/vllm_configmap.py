"""Builder of the ConfigMap holding the rendered `--kv-transfer-config` the webhook points pods at (pure)."""

from __future__ import annotations

from typing import Any

from tieredkv_operator import names
from tieredkv_operator.names import CacheRef
from tieredkv_operator.resources.vllm_config import canonical_json, config_hash, render_kv_transfer_config
from tieredkv_operator.spec import TieredKVCacheSpec


def rendered(cache: CacheRef, spec: TieredKVCacheSpec) -> tuple[str, str]:
    """(canonical JSON of the kv-transfer-config, its hash) for this cache."""
    config = render_kv_transfer_config(spec, name=cache.name, namespace=cache.namespace)
    return canonical_json(config), config_hash(config)


def config_map(cache: CacheRef, spec: TieredKVCacheSpec) -> dict[str, Any]:
    text, digest = rendered(cache, spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.config_map_name(cache.name),
            "namespace": cache.namespace,
            "labels": names.labels(cache.name, "vllm-config"),
            "annotations": {names.ANNOTATION_CONFIG_HASH: digest},
            "ownerReferences": [cache.owner_reference()],
        },
        "data": {names.CONFIG_KEY: text},
    }
