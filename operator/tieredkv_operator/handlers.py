"""kopf handlers of the operator. Thin by design: each one delegates to `reconcile` or to a pure function.

kopf runs these synchronous handlers on its executor threads; a per-cache lock keeps the create/update/
resume handler and the drift timer from reconciling one cache at the same time.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import kopf

from tieredkv_operator import __version__
from tieredkv_operator.kube import KubeError, shared
from tieredkv_operator.reconcile import reconcile
from tieredkv_operator.resources import names
from tieredkv_operator.settings import OperatorSettings
from tieredkv_operator.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger("tieredkv_operator")
SETTINGS = OperatorSettings()
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_waiting: set[str] = set()
_waiting_lock = threading.Lock()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Persist kopf's bookkeeping in our own annotations (the CRD's status schema has no room for it)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/operator"  # never added: there is no deletion handler
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    shared()
    log.info("tieredkv-operator %s starting: %s", __version__, SETTINGS.summary())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reconcile(body: kopf.Body, patch: kopf.Patch) -> None:
    with _locks[body["metadata"]["uid"]]:
        outcome = reconcile(shared(), dict(body), SETTINGS, _now())
    patch.status.update(outcome.status)
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_cache(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Create, update and operator restart: converge the children and the status."""
    _reconcile(body, patch)


@kopf.on.event("apps", "v1", "daemonsets", labels={names.LABEL_CACHE: kopf.PRESENT})
@kopf.on.event("", "v1", "persistentvolumeclaims", labels={names.LABEL_CACHE: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={names.LABEL_CACHE: kopf.PRESENT})
def child_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    """A child or a pod of a cache changed: reconcile that cache now instead of at the next drift tick.

    Coalesced: while one reconcile of a cache waits for the cache's lock, further events are dropped; the
    waiting one reads the cache after it takes the lock, so it sees what they announced.
    """
    kube, name = shared(), labels[names.LABEL_CACHE]
    try:
        body = kube.get(API_VERSION, KIND, namespace or "", name)
    except KubeError as err:
        log.warning("cache %s/%s: %s", namespace, name, err)
        return
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    uid = body["metadata"]["uid"]
    with _waiting_lock:
        if uid in _waiting:
            return
        _waiting.add(uid)
    with _locks[uid]:
        with _waiting_lock:
            _waiting.discard(uid)
        fresh = kube.get(API_VERSION, KIND, namespace or "", name)
        if fresh is None or fresh["metadata"]["uid"] != uid:
            return
        outcome = reconcile(kube, fresh, SETTINGS, _now())
        if outcome.status != (fresh.get("status") or {}):
            kube.patch_status(namespace or "", name, outcome.status)
    for kind, reason, message in outcome.events:
        kube.post_event(body, kind, reason, message, component="tieredkv-operator")


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.drift_interval_seconds)
def repair_drift(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Every drift interval: repair edited or deleted children and refresh the status."""
    _reconcile(body, patch)
