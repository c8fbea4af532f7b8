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
from tieredkv_operator.kube import shared
from tieredkv_operator.reconcile import reconcile
from tieredkv_operator.settings import OperatorSettings
from tieredkv_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger("tieredkv_operator")
SETTINGS = OperatorSettings()
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


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


def _reconcile(body: kopf.Body, patch: kopf.Patch) -> None:
    with _locks[body["metadata"]["uid"]]:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        outcome = reconcile(shared(), dict(body), SETTINGS, now)
    patch.status.update(outcome.status)
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_cache(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Create, update and operator restart: converge the children and the status."""
    _reconcile(body, patch)


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.drift_interval_seconds, idle=None)
def repair_drift(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Every drift interval: repair edited or deleted children and refresh the status."""
    _reconcile(body, patch)
