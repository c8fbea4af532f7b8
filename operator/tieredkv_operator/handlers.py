"""kopf handlers of the operator. Thin by design: each one delegates to `reconcile` or to a pure function.

kopf runs these synchronous handlers on its executor threads; a per-cache lock keeps the create/update/
resume handler, the drift loop and child events from reconciling one cache at the same time. The settings
come from the CLI through kopf's memo (`memo.context`); the drift loop (drift_loop.py, a thread the CLI
starts, not a kopf timer: kopf would put a finalizer on every cache) calls `refresh_cache`.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import kopf

from tieredkv_operator import __version__, metrics, names
from tieredkv_operator.kube import Kube, KubeError, shared
from tieredkv_operator.memo import context
from tieredkv_operator.reconcile import reconcile
from tieredkv_operator.settings import OperatorSettings
from tieredkv_operator.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger("tieredkv_operator")
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_waiting: set[str] = set()
_scheduled: set[tuple[str, str]] = set()
POD_REFRESH_DELAY_SECONDS = 1.0
_waiting_lock = threading.Lock()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Persist kopf's bookkeeping in our own annotations (the CRD's status schema has no room for it)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # Never added (no deletion handler, no timer or daemon); kopf removes it from caches of older versions.
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    shared()
    log.info("tieredkv-operator %s starting: %s", __version__, context(memo).settings.summary())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reconcile(body: kopf.Body, memo: kopf.Memo) -> None:
    """A full pass from one of kopf's handlers: on the cache as it is now, not as kopf last saw it."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    with _locks[f"{namespace}/{name}"]:
        _pass(shared(), context(memo).settings, namespace, name, apply=True)


def _pass(kube: Kube, settings: OperatorSettings, namespace: str, name: str, *, apply: bool) -> None:
    """Read the cache, reconcile it, write its status and Events, all under the cache's lock.

    The status is written here, not through kopf's patch after the handler returns: what it records
    (seed fingerprint, handled requests, claim UID) must be visible to the next pass before it starts.
    """
    body = kube.get(API_VERSION, KIND, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    outcome = reconcile(kube, body, settings, _now(), apply=apply)
    if outcome.status != (body.get("status") or {}):
        kube.patch_status(namespace, name, outcome.status)
    for kind, reason, message in outcome.events:
        kube.post_event(body, kind, reason, message, component="tieredkv-operator")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_cache(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Create, update and operator restart: converge the children and the status."""
    _reconcile(body, memo)


@kopf.on.event("apps", "v1", "daemonsets", labels={names.LABEL_CACHE: kopf.PRESENT})
@kopf.on.event("", "v1", "persistentvolumeclaims", labels={names.LABEL_CACHE: kopf.PRESENT})
def child_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A child of a cache changed: converge that cache now (repairs a deleted child at once)."""
    _refresh(context(memo).settings, namespace or "", labels[names.LABEL_CACHE], apply=True)


@kopf.on.event("", "v1", "pods", labels={names.LABEL_CACHE: kopf.PRESENT})
def pod_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A pod of a cache changed: refresh the cache's status (injected pods, seed consistency) soon.

    Pod events come in bursts (a rollout of many vLLM pods), so they are batched: the first one schedules
    a status refresh POD_REFRESH_DELAY_SECONDS later, and the events until then ride along with it.
    """
    key = (namespace or "", labels[names.LABEL_CACHE])
    settings = context(memo).settings
    with _waiting_lock:
        if key in _scheduled:
            return
        _scheduled.add(key)

    def fire() -> None:
        with _waiting_lock:
            _scheduled.discard(key)
        _refresh(settings, *key, apply=False)

    timer = threading.Timer(POD_REFRESH_DELAY_SECONDS, fire)
    timer.daemon = True
    timer.start()


def _refresh(settings: OperatorSettings, namespace: str, name: str, *, apply: bool) -> None:
    """Reconcile a cache outside kopf's own handlers, patching its status through our API module.

    Coalesced: while one refresh of a cache waits for the cache's lock, further ones are dropped; the
    waiting one reads the cache after it takes the lock, so it sees what they announced.
    """
    key = f"{namespace}/{name}"
    with _waiting_lock:
        if key in _waiting:
            return
        _waiting.add(key)
    with _locks[key]:
        with _waiting_lock:
            _waiting.discard(key)
        try:
            _pass(shared(), settings, namespace, name, apply=apply)
        except KubeError as err:
            log.warning("cache %s: %s", key, err)


def refresh_cache(settings: OperatorSettings, namespace: str, name: str) -> None:
    """The drift loop's thread, every drift interval: repair drifted or deleted children, refresh status."""
    _refresh(settings, namespace, name, apply=True)


@kopf.on.event(GROUP, VERSION, PLURAL)
def track_cache(body: kopf.Body, **kwargs: Any) -> None:
    """Keep the per-cache gauges of the operator's metrics in step with the API (reads only)."""
    meta = body.get("metadata") or {}
    if kwargs.get("type") == "DELETED":
        metrics.CACHES.forget(meta.get("namespace") or "", meta.get("name") or "")
    else:
        metrics.CACHES.observe(dict(body))
