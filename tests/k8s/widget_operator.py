"""A minimal kopf operator the harness test runs under KopfRunner: it writes `status.observedSize`."""

from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.watching.server_timeout = 10
    settings.persistence.finalizer = "test.tieredkv.io/widget"


@kopf.on.create("test.tieredkv.io", "v1", "widgets")
@kopf.on.update("test.tieredkv.io", "v1", "widgets")
def reconcile(spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
    patch.status["observedSize"] = spec.get("size", 0)
