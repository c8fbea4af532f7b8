"""The webhooks' AdmissionReview answers (admission/review.py), the cache directory and the HTTP server
that carries them, over a real loopback socket."""

import base64
import copy
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.test_injection import agent_cache, example, pod
from tieredkv_operator.admission.directory import CacheDirectory
from tieredkv_operator.admission.review import (
    ReviewError,
    allow_unchanged,
    json_patch,
    review_cache,
    review_pod,
)
from tieredkv_operator.webhook_server import AdmissionServer

pytestmark = pytest.mark.unit

PLUGIN_IMAGE = "ghcr.io/example/tieredkv-agent:0.1.0"


def review_of(obj: dict[str, Any], *, namespace: str = "inference", **request: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "namespace": namespace, "object": obj, **request},
    }


def apply_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole-field JSON Patch operations the webhook sends, applied as the API server would."""
    out = copy.deepcopy(obj)
    for op in ops:
        parent, key = op["path"].strip("/").split("/")
        if op["op"] == "remove":
            del out[parent][key]
        else:
            assert (op["op"] == "replace") == (key in out.get(parent, {}))
            out.setdefault(parent, {})[key] = op["value"]
    return out


def test_the_patch_turns_the_admitted_pod_into_exactly_the_injected_one() -> None:
    cache = agent_cache()
    incoming = pod()
    incoming["metadata"].pop("namespace")  # as 1.20 sends it: the namespace only in the request
    answer = review_pod(review_of(incoming), [cache], plugin_image=PLUGIN_IMAGE)
    response = answer.response["response"]
    assert response["uid"] == "u-1" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    admitted = apply_patch(pod(), ops)
    assert admitted == answer.result.pod
    assert admitted["metadata"]["annotations"]["tieredkv.io/injected"] == cache.name
    assert answer.response["apiVersion"] == "admission.k8s.io/v1"


def test_a_skipped_pod_is_admitted_annotated_with_a_warning() -> None:
    answer = review_pod(review_of(pod()), [], plugin_image=PLUGIN_IMAGE)
    response = answer.response["response"]
    ops = json.loads(base64.b64decode(response["patch"]))
    assert [op["path"] for op in ops] == ["/metadata/annotations"]
    assert ops[0]["value"] == {"tieredkv.io/skip-reason": "cache-not-found"}
    assert response["allowed"] is True and "cache-not-found" in response["warnings"][0]


def test_an_already_injected_pod_gets_no_patch() -> None:
    first = review_pod(review_of(pod()), [agent_cache()], plugin_image=PLUGIN_IMAGE).result.pod
    again = review_pod(review_of(first), [agent_cache()], plugin_image=PLUGIN_IMAGE)
    assert "patch" not in again.response["response"] and again.response["response"]["allowed"]


def test_json_patch_removes_adds_and_replaces_whole_fields_only() -> None:
    before = {"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [1], "volumes": [2]}}
    after = {"metadata": {"labels": {"a": "1"}, "annotations": {"b": "2"}}, "spec": {"containers": [3]}}
    assert json_patch(before, after) == [
        {"op": "add", "path": "/metadata/annotations", "value": {"b": "2"}},
        {"op": "replace", "path": "/spec/containers", "value": [3]},
        {"op": "remove", "path": "/spec/volumes"},
    ]


def test_an_invalid_cache_is_refused_with_422_and_every_error() -> None:
    bad = example("cache-agent.yaml")
    bad["spec"]["capacity"] = {"highWatermark": 0.5, "lowWatermark": 0.7}
    answer, errors = review_cache(review_of(bad, operation="CREATE"))
    assert errors and answer["response"]["allowed"] is False
    assert answer["response"]["status"] == {"message": "; ".join(errors), "code": 422}
    ok, none = review_cache(review_of(example("cache-agent.yaml")))
    assert none == [] and ok["response"]["allowed"] is True


def test_a_body_that_is_not_an_admission_review_is_refused() -> None:
    for bad in ({}, {"request": {"uid": "x"}}, {"request": {"object": {}}}, []):
        with pytest.raises(ReviewError):
            allow_unchanged(bad)  # type: ignore[arg-type]


def test_the_cache_directory_parses_once_and_forgets_deleted_caches() -> None:
    directory = CacheDirectory()
    body = example("cache-agent.yaml")
    body["metadata"]["namespace"] = "inference"
    directory.put(body)
    directory.put(body)
    (entry,) = directory.in_namespace("inference")
    assert entry.view.name == body["metadata"]["name"] and entry.owner["kind"] == "TieredKVCache"
    directory.forget("inference", body["metadata"]["name"])
    assert directory.in_namespace("inference") == ()


@pytest.fixture
def server() -> Iterator[AdmissionServer]:
    def dispatch(webhook: str, review: dict[str, Any]) -> dict[str, Any]:
        if webhook == "boom":
            raise RuntimeError("handler bug")
        if webhook != "inject":
            raise LookupError(webhook)
        return allow_unchanged(review)

    srv = AdmissionServer("127.0.0.1", 0, dispatch, None)
    srv.start()
    yield srv
    srv.close()


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_the_server_answers_many_requests_on_one_kept_alive_connection(server: AdmissionServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for uid in ("a", "b", "c"):
        review = review_of(pod())
        review["request"]["uid"] = uid
        status, answer = post(conn, "/inject?timeout=10s", json.dumps(review).encode())
        assert status == 200 and answer["response"] == {"uid": uid, "allowed": True}
    conn.close()


def test_the_server_maps_bad_requests_unknown_paths_and_handler_bugs_to_4xx_and_500(
    server: AdmissionServer,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    assert post(conn, "/inject", b"{not json")[0] == 400
    assert post(conn, "/inject", b"[]")[0] == 400
    assert post(conn, "/mutate", json.dumps(review_of(pod())).encode())[0] == 404
    assert post(conn, "/boom", json.dumps(review_of(pod())).encode())[0] == 500
    conn.close()
