"""AdmissionReview in, AdmissionReview out, for the two webhooks (pure: no kopf, no API client, no I/O).

The webhook server (`webhook_server.py`) calls these on its request threads with the decoded body of the
API server's POST; `webhooks.py` supplies the caches and does the side effects (metrics, Events).

* `pod_object` / `review_pod`: the mutating pod webhook. The answer is allowed with a JSON Patch that
  replaces, whole, each of `metadata.labels`, `metadata.annotations`, `spec.containers`,
  `spec.initContainers` and `spec.volumes` that the injection changed (or `allowed` with no patch).
* `review_cache`: the validating TieredKVCache webhook (422 with every error, or allowed).

An object created without `metadata.namespace` reaches admission without one on older API servers (1.20
fills it in only after admission), so the request's namespace is copied into the object first.
"""

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tieredkv_operator.admission.injection import AnyCache, inject
from tieredkv_operator.admission.injection_model import InjectionResult
from tieredkv_operator.admission.validation import validate

PATCHED = (("metadata", "labels"), ("metadata", "annotations"))
PATCHED_SPEC = ("containers", "initContainers", "volumes")


class ReviewError(ValueError):
    """The POSTed body is not an AdmissionReview the webhook can answer (HTTP 400)."""


@dataclass(frozen=True)
class PodReview:
    """The answer to one pod CREATE, and what the caller should record about it."""

    response: dict[str, Any]
    """The AdmissionReview to send back."""
    result: InjectionResult
    dry_run: bool


def request_of(review: object) -> dict[str, Any]:
    """The `request` of an AdmissionReview, with the request's namespace copied into its object."""
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ReviewError("not an AdmissionReview: request.uid is missing")
    obj, namespace = request.get("object"), request.get("namespace")
    if not isinstance(obj, dict):
        raise ReviewError("the AdmissionReview has no object")
    metadata = obj.setdefault("metadata", {})
    if isinstance(metadata, dict) and isinstance(namespace, str) and namespace:
        metadata.setdefault("namespace", namespace)
    return request


def pod_object(review: object) -> tuple[dict[str, Any], str]:
    """The pod of a pod review and its namespace ("" if the request names none)."""
    pod: dict[str, Any] = request_of(review)["object"]
    namespace = (pod.get("metadata") or {}).get("namespace")
    return pod, namespace if isinstance(namespace, str) else ""


def review_pod(review: dict[str, Any], caches: Sequence[AnyCache], *, plugin_image: str) -> PodReview:
    """Inject the pod of `review` (see `injection.inject`) and answer with the patch that does it."""
    request = request_of(review)
    pod: dict[str, Any] = request["object"]
    result = inject(pod, caches, plugin_image=plugin_image)
    patch = json_patch(pod, result.pod) if result.changed else []
    warnings = [result.message] if result.skip_reason is not None or result.warnings else []
    response = answer(review, patch=patch, warnings=warnings)
    return PodReview(response, result, bool(request.get("dryRun")))


def allow_unchanged(review: dict[str, Any]) -> dict[str, Any]:
    """Admit the object of `review` as it is."""
    request_of(review)
    return answer(review)


def review_cache(review: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Validate a TieredKVCache CREATE or UPDATE: (the answer, the errors that refused it)."""
    request = request_of(review)
    old = request.get("oldObject")
    errors = validate(request["object"], old if isinstance(old, dict) else None)
    if errors:
        return answer(review, denied="; ".join(errors), code=422), errors
    return answer(review), []


def answer(
    review: dict[str, Any],
    *,
    patch: list[dict[str, Any]] | None = None,
    warnings: Sequence[str] = (),
    denied: str | None = None,
    code: int = 422,
) -> dict[str, Any]:
    """An AdmissionReview response for `review` (same apiVersion and kind, same uid)."""
    response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": denied is None}
    if warnings:
        response["warnings"] = list(warnings)
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode("ascii")
    if denied is not None:
        response["status"] = {"message": denied, "code": code}
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": review.get("kind", "AdmissionReview"),
        "response": response,
    }


def json_patch(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Patch operations turning `before` into `after` on the fields an injection edits."""
    ops: list[dict[str, Any]] = []
    fields = [*PATCHED, *(("spec", key) for key in PATCHED_SPEC)]
    for parent, key in fields:
        old_parent, new_parent = before.get(parent) or {}, after.get(parent) or {}
        old, new = old_parent.get(key), new_parent.get(key)
        if old == new:
            continue
        path = f"/{parent}/{key}"
        if new is None:
            ops.append({"op": "remove", "path": path})
        else:
            ops.append({"op": "replace" if key in old_parent else "add", "path": path, "value": new})
    return ops
