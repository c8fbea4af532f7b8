"""The pod webhook's copy of the TieredKVCaches, parsed once per change instead of once per pod (pure).

Threads: `put` and `forget` are called by kopf's handler threads as cache events arrive; `in_namespace`
by the webhook's request threads, concurrently. Each namespace's entry is an immutable tuple replaced
whole under a lock, so a reader never sees a half-updated namespace and never waits on a parse.
"""

import threading
from dataclasses import dataclass
from typing import Any

from tieredkv_operator.admission.injection import AnyCache
from tieredkv_operator.admission.injection_model import cache_view


@dataclass(frozen=True)
class Entry:
    """One cache: the webhook's view of it (parsed spec, rendered config hash) and the object to post
    Events about (apiVersion, kind, metadata)."""

    view: AnyCache
    owner: dict[str, Any]


def entry(body: dict[str, Any]) -> Entry:
    """Parse one TieredKVCache object (as the API or kopf gives it)."""
    metadata = body.get("metadata") or {}
    owner = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: metadata.get(k) for k in ("name", "namespace", "uid")},
    }
    return Entry(cache_view(body), owner)


class CacheDirectory:
    """Caches by namespace, then name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._namespaces: dict[str, tuple[Entry, ...]] = {}

    def put(self, body: dict[str, Any]) -> None:
        """Add or replace one cache (parsed here, on the caller's thread)."""
        new = entry(body)
        namespace, name = new.view.namespace, new.view.name
        with self._lock:
            kept = [e for e in self._namespaces.get(namespace, ()) if e.view.name != name]
            self._namespaces[namespace] = (*kept, new)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            kept = tuple(e for e in self._namespaces.get(namespace, ()) if e.view.name != name)
            if kept:
                self._namespaces[namespace] = kept
            else:
                self._namespaces.pop(namespace, None)

    def in_namespace(self, namespace: str) -> tuple[Entry, ...]:
        """The caches of one namespace as last put (any thread; never blocks on a parse)."""
        with self._lock:
            return self._namespaces.get(namespace, ())
