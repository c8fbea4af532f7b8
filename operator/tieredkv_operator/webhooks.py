"""kopf admission handlers: pod injection (mutating) and TieredKVCache validation. Thin: the decisions are
the pure functions in admission/injection.py and admission/validation.py.

kopf calls these on its event loop for every matching API request. They are async on purpose: sync
handlers would queue behind reconciles in kopf's executor threads. They do only pure, sub-millisecond
work over kopf's in-memory index of caches and never call the API server (an Event about a pod that was
left alone is queued for a background thread to post).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import kopf

from tieredkv_operator import metrics, names
from tieredkv_operator.admission.injection import inject
from tieredkv_operator.admission.injection_model import cache_view
from tieredkv_operator.admission.validation import validate
from tieredkv_operator.kube import KubeError, shared
from tieredkv_operator.memo import Context, context
from tieredkv_operator.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger("tieredkv_operator.webhooks")


class NamespacedWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, plus one fix-up: an object created without `metadata.namespace` reaches
    admission without one on older API servers (1.20 fills it in only after admission), and kopf passes
    handlers the object, not the request. The request's namespace is copied into the object first.
    """

    def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        def with_namespace(request: Any, **kwargs: Any) -> Awaitable[Any]:
            req: dict[str, Any] = request.get("request", {})
            obj, namespace = req.get("object"), req.get("namespace")
            if isinstance(obj, dict) and namespace:
                obj.setdefault("metadata", {}).setdefault("namespace", namespace)
            return fn(request, **kwargs)

        return super().__call__(with_namespace)


@kopf.on.startup()
def configure_server(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Serve the webhooks with the given certificate; kopf keeps the webhook configurations up to date.

    This module is imported (and its handlers registered) only when webhooks are enabled.
    """
    ours = context(memo).settings
    settings.admission.server = NamespacedWebhookServer(
        addr=ours.webhook_listen_host,
        port=ours.webhook_port,
        host=ours.webhook_public_host or None,
        certfile=str(ours.webhook_cert_file) if ours.webhook_cert_file else None,
        pkeyfile=str(ours.webhook_key_file) if ours.webhook_key_file else None,
        cafile=str(ours.webhook_ca_file) if ours.webhook_ca_file else None,
    )
    # An empty name leaves the configurations to someone else (the Helm chart owns them).
    settings.admission.managed = ours.webhook_configuration_name or None


@kopf.index(GROUP, VERSION, PLURAL)
def caches_by_namespace(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Every TieredKVCache body, keyed by namespace, for the pod webhook."""
    return {namespace or "": dict(body)}


def _namespace_served(ctx: Context, namespace: str) -> bool:
    if ctx.settings.namespace and namespace == ctx.settings.namespace:
        return False  # never inject the operator's own pods
    return not ctx.watched_namespaces or namespace in ctx.watched_namespaces


@kopf.on.mutate(
    "",
    "v1",
    "pods",
    id="inject",
    operations=["CREATE"],
    ignore_failures=True,
    labels={names.LABEL_INJECT: "true"},
)
async def inject_pod(
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    dryrun: bool,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Add seed, config and mounts to an opted-in vLLM pod, or annotate why it was left alone."""
    started = time.monotonic()
    caches_by_namespace: kopf.Index[str, dict[str, Any]] = kwargs["caches_by_namespace"]
    namespace = body.get("metadata", {}).get("namespace") or ""
    ctx = context(memo)
    if not _namespace_served(ctx, namespace):
        metrics.record_admission(metrics.WEBHOOK_PODS, "ignored", "", time.monotonic() - started)
        return
    bodies = list(caches_by_namespace.get(namespace, [])) or await _caches_from_api(namespace)
    result = inject(dict(body), [cache_view(b) for b in bodies], plugin_image=ctx.settings.agent_image)
    outcome = "skipped" if result.skip_reason else "injected" if result.changed else "unchanged"
    reason = result.skip_reason.value if result.skip_reason else ""
    metrics.record_admission(metrics.WEBHOOK_PODS, outcome, reason, time.monotonic() - started)
    if result.changed:
        patch["metadata"] = {k: result.pod["metadata"].get(k) for k in ("labels", "annotations")}
        patch["spec"] = {
            k: v for k, v in result.pod["spec"].items() if k in ("containers", "initContainers", "volumes")
        }
    if result.skip_reason is not None or result.warnings:
        warnings.append(result.message)
        owner = next((b for b in bodies if b["metadata"]["name"] == result.cache), None)
        if owner is not None and not dryrun:
            pod = body.get("metadata", {}).get("name") or body.get("metadata", {}).get("generateName", "pod")
            reason = "PodSkipped" if result.skip_reason else "PodInjectedWithWarnings"
            _post_event(owner, reason, f"pod {pod}: {result.message}")


_lookups = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="webhook-lookup")
LOOKUP_TIMEOUT_SECONDS = 2.0


async def _caches_from_api(namespace: str) -> list[dict[str, Any]]:
    """The namespace's caches read from the API, for a pod whose namespace has none in kopf's index.

    A cache applied together with its pods (one `kubectl apply`) can reach admission before kopf's watch
    has indexed it; without this the pods would be skipped as cache-not-found. Bounded by a timeout; on
    any error the pod is judged by the index alone.
    """
    loop = asyncio.get_running_loop()
    call = loop.run_in_executor(_lookups, lambda: shared().list(API_VERSION, KIND, namespace, ""))
    try:
        return await asyncio.wait_for(call, LOOKUP_TIMEOUT_SECONDS)
    except (KubeError, TimeoutError) as err:
        log.warning("could not list the caches of namespace %s: %s", namespace, err)
        return []


_events: queue.Queue[tuple[dict[str, Any], str, str]] = queue.Queue(maxsize=1000)
_poster: list[threading.Thread] = []


def _post_event(owner: dict[str, Any], reason: str, message: str) -> None:
    """Queue a Warning Event on the cache; a daemon thread posts it, so admission never waits on the API.

    kopf's own event posting is unavailable in admission handlers. A full queue drops the Event (the pod
    annotation and the admission warning still say what happened).
    """
    if not _poster:
        _poster.append(threading.Thread(target=_post_events, name="webhook-events", daemon=True))
        _poster[0].start()
    with contextlib.suppress(queue.Full):
        _events.put_nowait((owner, reason, message))


def _post_events() -> None:
    while True:
        owner, reason, message = _events.get()
        try:
            shared().post_event(owner, "Warning", reason, message, component="tieredkv-webhook")
        except KubeError as err:
            log.warning("could not post Event %s on %s: %s", reason, owner["metadata"]["name"], err)


@kopf.on.validate(GROUP, VERSION, PLURAL, id="validate", operations=["CREATE", "UPDATE"])
async def validate_cache(body: kopf.Body, **kwargs: Any) -> None:
    """Refuse cross-field and immutability violations the 1.20 API server cannot express in the schema."""
    started, old = time.monotonic(), kwargs.get("old")
    errors = validate(dict(body), dict(old) if old else None)
    outcome = "denied" if errors else "allowed"
    metrics.record_admission(metrics.WEBHOOK_CACHES, outcome, "", time.monotonic() - started)
    if errors:
        raise kopf.AdmissionError("; ".join(errors), code=422)
