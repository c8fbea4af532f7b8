"""The admission webhooks: pod injection (mutating) and TieredKVCache validation. Thin: the decisions are
the pure functions in admission/review.py (over admission/injection.py and admission/validation.py).

The API server's requests are served by `webhook_server.AdmissionServer` on threads of its own, not by
kopf's aiohttp server on kopf's event loop (which made pod creation wait behind watch events and
reconciles: 92 ms added at p99 at 50 pods/s). kopf still owns the rest: the `@kopf.on.mutate` and
`@kopf.on.validate` registrations below describe the webhooks (rules, label selector, failure policy)
from which kopf keeps the webhook configurations up to date, and `DedicatedWebhookServer` hands kopf the
URL and CA bundle to put in them.

Requests never call the API server, except when no cache of the pod's namespace is known yet (a cache
applied together with its pods): then one list of that namespace's caches, bounded by
LOOKUP_TIMEOUT_SECONDS. The caches come from `CacheDirectory`, fed by a kopf event handler with each
cache parsed once per change. Events about skipped pods go to a queue that a daemon thread posts.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import kopf

from tieredkv_operator import metrics, names
from tieredkv_operator.admission.directory import CacheDirectory, Entry, entry
from tieredkv_operator.admission.review import (
    PodReview,
    allow_unchanged,
    pod_object,
    review_cache,
    review_pod,
)
from tieredkv_operator.kube import KubeError, shared
from tieredkv_operator.memo import Context, context
from tieredkv_operator.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION
from tieredkv_operator.webhook_server import AdmissionServer

log = logging.getLogger("tieredkv_operator.webhooks")

LOOKUP_TIMEOUT_SECONDS = 2.0
CERT_CHECK_SECONDS = 60.0
"""How often the certificate files are checked for renewal."""
MEMO_KEY = "webhooks"


class Admission:
    """Answers admission requests (the webhook server's connection threads, concurrently)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.caches = CacheDirectory()
        self._lookups = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="webhook-lookup")
        self._events: queue.Queue[tuple[dict[str, Any], str, str]] = queue.Queue(maxsize=1000)
        self._poster = threading.Thread(target=self._post_events, name="webhook-events", daemon=True)
        self._poster.start()

    def dispatch(self, webhook: str, review: dict[str, Any]) -> dict[str, Any]:
        """The webhook server's `Dispatch`: `inject` for pods, `validate` for caches."""
        if webhook == "inject":
            return self.pod(review)
        if webhook == "validate":
            return self.cache(review)
        raise LookupError(f"no webhook {webhook!r}: the paths are /inject and /validate")

    def pod(self, review: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        _, namespace = pod_object(review)
        if not self._served(namespace):
            metrics.record_admission(metrics.WEBHOOK_PODS, "ignored", "", time.monotonic() - started)
            return allow_unchanged(review)
        entries = self.caches.in_namespace(namespace) or self._from_api(namespace)
        done = review_pod(review, [e.view for e in entries], plugin_image=self.ctx.settings.agent_image)
        result = done.result
        outcome = "skipped" if result.skip_reason else "injected" if result.changed else "unchanged"
        reason = result.skip_reason.value if result.skip_reason else ""
        metrics.record_admission(metrics.WEBHOOK_PODS, outcome, reason, time.monotonic() - started)
        self._maybe_event(done, entries)
        return done.response

    def cache(self, review: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        response, errors = review_cache(review)
        outcome = "denied" if errors else "allowed"
        metrics.record_admission(metrics.WEBHOOK_CACHES, outcome, "", time.monotonic() - started)
        return response

    def _served(self, namespace: str) -> bool:
        if self.ctx.settings.namespace and namespace == self.ctx.settings.namespace:
            return False  # never inject the operator's own pods
        return not self.ctx.watched_namespaces or namespace in self.ctx.watched_namespaces

    def _from_api(self, namespace: str) -> tuple[Entry, ...]:
        """The namespace's caches read from the API, for a pod whose namespace has none known yet.

        A cache applied together with its pods can reach admission before kopf's watch delivered it;
        without this the pods would be skipped as cache-not-found. Bounded by a timeout; on any error
        the pod is judged by what is known.
        """
        call = self._lookups.submit(shared().list, API_VERSION, KIND, namespace, "")
        try:
            return tuple(entry(body) for body in call.result(LOOKUP_TIMEOUT_SECONDS))
        except (KubeError, TimeoutError) as err:
            log.warning("could not list the caches of namespace %s: %s", namespace, err)
            return ()

    def _maybe_event(self, done: PodReview, entries: tuple[Entry, ...]) -> None:
        """Queue a Warning Event on the chosen cache for a skipped pod or a partial injection."""
        result = done.result
        if (result.skip_reason is None and not result.warnings) or done.dry_run:
            return
        owner = next((e.owner for e in entries if e.view.name == result.cache), None)
        if owner is None:
            return
        metadata = result.pod.get("metadata") or {}
        pod = metadata.get("name") or metadata.get("generateName") or "pod"
        reason = "PodSkipped" if result.skip_reason else "PodInjectedWithWarnings"
        with contextlib.suppress(queue.Full):  # a full queue drops the Event; the annotation still says it
            self._events.put_nowait((owner, reason, f"pod {pod}: {result.message}"))

    def _post_events(self) -> None:
        """The "webhook-events" thread: admission never waits on the API to post an Event."""
        while True:
            owner, reason, message = self._events.get()
            try:
                shared().post_event(owner, "Warning", reason, message, component="tieredkv-webhook")
            except KubeError as err:
                log.warning("could not post Event %s on %s: %s", reason, owner["metadata"]["name"], err)


class DedicatedWebhookServer(kopf.WebhookServer):
    """kopf's webhook server settings (address, certificates, CA bundle), served by `AdmissionServer`.

    kopf iterates `__call__` on its event loop for the client configs to put in the webhook
    configurations; kopf's own request function `fn` is never called.
    """

    def __init__(self, admission: Admission, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.admission = admission

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        cadata, tls = self._build_ssl()
        port = self.port or self._allocate_free_port()
        server = AdmissionServer(self.addr or "", port, self.admission.dispatch, tls)
        server.start()
        try:
            while True:
                host = self.host or self._get_accessible_addr(self.addr)
                url = self._build_url("http" if tls is None else "https", host, server.port, self.path or "")
                config = kopf.WebhookClientConfig(url=url)
                if cadata is not None:
                    config["caBundle"] = base64.b64encode(cadata).decode("ascii")
                yield config
                await self._until_files_change()
                log.info("webhook certificate files changed: new connections use them")
                cadata, tls = self._build_ssl()
                server.set_context(tls)
        finally:
            server.close()

    async def _until_files_change(self) -> None:
        files = [f for f in (self.certfile, self.pkeyfile, self.cafile) if f]
        if not files:
            await asyncio.Event().wait()
        seen = [_mtime(f) for f in files]
        while [_mtime(f) for f in files] == seen:
            await asyncio.sleep(CERT_CHECK_SECONDS)


def _mtime(path: str | os.PathLike[str]) -> float:
    try:
        return os.stat(path).st_mtime  # noqa: PTH116 - also accepts the str kopf was given
    except OSError:
        return 0.0


def _admission(memo: kopf.Memo) -> Admission:
    found: Admission = memo[MEMO_KEY]
    return found


@kopf.on.startup()
def configure_server(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Serve the webhooks with the given certificate; kopf keeps the webhook configurations up to date.

    This module is imported (and its handlers registered) only when webhooks are enabled.
    """
    ctx = context(memo)
    ours = ctx.settings
    memo[MEMO_KEY] = admission = Admission(ctx)
    settings.admission.server = DedicatedWebhookServer(
        admission,
        addr=ours.webhook_listen_host,
        port=ours.webhook_port,
        host=ours.webhook_public_host or None,
        certfile=str(ours.webhook_cert_file) if ours.webhook_cert_file else None,
        pkeyfile=str(ours.webhook_key_file) if ours.webhook_key_file else None,
        cafile=str(ours.webhook_ca_file) if ours.webhook_ca_file else None,
    )
    # An empty name leaves the configurations to someone else (the Helm chart owns them).
    settings.admission.managed = ours.webhook_configuration_name or None


@kopf.on.event(GROUP, VERSION, PLURAL)
def track_for_webhook(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Keep the webhook's CacheDirectory in step with the watch (kopf's handler threads)."""
    caches = _admission(memo).caches
    if kwargs.get("type") == "DELETED":
        meta = body.get("metadata") or {}
        caches.forget(meta.get("namespace") or "", meta.get("name") or "")
    else:
        caches.put(dict(body))


def _review(body: kopf.Body, **kwargs: Any) -> dict[str, Any]:
    """An AdmissionReview for kopf's handler arguments (when kopf's own server calls the handlers)."""
    request = {"uid": "", "object": dict(body), "dryRun": bool(kwargs.get("dryrun"))}
    if kwargs.get("old") is not None:
        request["oldObject"] = dict(kwargs["old"])
    return {"request": request}


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
    body: kopf.Body, patch: kopf.Patch, warnings: list[str], memo: kopf.Memo, **kwargs: Any
) -> None:
    """Add seed, config and mounts to an opted-in vLLM pod, or annotate why it was left alone.

    Declares the pod webhook to kopf; `DedicatedWebhookServer` answers the API server without calling it.
    """
    review = _review(body, **kwargs)
    answer = await asyncio.to_thread(_admission(memo).pod, review)
    warnings.extend(answer["response"].get("warnings", []))
    encoded = answer["response"].get("patch")
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(encoded)) if encoded else []
    for op in ops:  # whole-field operations (see review.json_patch) as kopf's merge patch
        parent, key = op["path"].strip("/").split("/")
        patch.setdefault(parent, {})[key] = op.get("value")


@kopf.on.validate(GROUP, VERSION, PLURAL, id="validate", operations=["CREATE", "UPDATE"])
async def validate_cache(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Refuse cross-field and immutability violations the 1.20 API server cannot express in the schema.

    Declares the validating webhook to kopf; `DedicatedWebhookServer` answers without calling it.
    """
    answer = _admission(memo).cache(_review(body, **kwargs))
    status = answer["response"].get("status")
    if status:
        raise kopf.AdmissionError(status["message"], code=status["code"])
