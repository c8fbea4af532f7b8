"""One level-based, idempotent reconcile of a TieredKVCache: build the desired children with the pure
builders, apply them, observe them, and compute the status. Called from kopf handler threads (create,
update, resume and the drift timer), never concurrently for the same cache (the handlers hold a lock).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tieredkv_operator import conditions as c
from tieredkv_operator import drift, metrics, names
from tieredkv_operator import status as status_mod
from tieredkv_operator.admission import child_checks, validation
from tieredkv_operator.kube import Kube, KubeError
from tieredkv_operator.names import CacheRef
from tieredkv_operator.quantity import parse_quantity
from tieredkv_operator.reconcile_seed import ensure_seed
from tieredkv_operator.resources import agents, rbac, storage, vllm_configmap
from tieredkv_operator.settings import OperatorSettings
from tieredkv_operator.spec import TieredKVCacheSpec
from tieredkv_operator.vllm_lines import supported_lines

Obj = dict[str, Any]
Event = tuple[str, str, str]  # (type, reason, message)


@dataclass
class Outcome:
    status: Obj
    events: list[Event] = field(default_factory=list)


def parse_spec(body: Obj) -> tuple[TieredKVCacheSpec | None, str | None, str]:
    """(spec, None, "") or (None, error message, condition reason)."""
    spec, errors = validation.parse_spec(body.get("spec"))
    if spec is not None:
        meta = body["metadata"]
        # What the webhook refuses for the children, refused here too (it may have been down): no child is
        # created before the API server refuses another.
        refused = child_checks.child_errors(meta["name"], meta["namespace"], spec)
        return (None, "; ".join(refused), c.INVALID_SPEC) if refused else (spec, None, "")
    version = ((body.get("spec") or {}).get("vllm") or {}).get("version")
    unsupported = isinstance(version, str) and version not in supported_lines()
    return None, "; ".join(errors), c.UNSUPPORTED_VLLM_VERSION if unsupported else c.INVALID_SPEC


RECORDED_FIELDS = ("seedFingerprint", "seedSource", "claimUid", "storeProfile", "handledRequests")
DRIFT_REPAIRED = "DriftRepaired"
CLAIM_RECREATED = "ClaimRecreated"
BLOCKS_ORPHANED = "BlocksOrphaned"


@dataclass
class Pass:
    """One reconcile pass over one cache: what it read, what it records, what it reports."""

    kube: Kube
    cache: CacheRef
    spec: TieredKVCacheSpec
    body: Obj
    observed: status_mod.Observed
    errors: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    seed_read: bool = False
    """The seed step already read (or wrote) the seed Secret: the status uses that, not a second read."""

    def attempt(self, what: str, action: Callable[[], Obj | None]) -> Obj | None:
        """Run one API write; a failure is noted and the others still go ahead."""
        try:
            return action()
        except KubeError as err:
            self.errors.append(f"{what}: {err}")
            return None

    def annotation_request(self, annotation: str) -> str | None:
        """The annotation's value if it is set and was not acted on yet."""
        asked = ((self.body.get("metadata") or {}).get("annotations") or {}).get(annotation)
        handled = (self.observed.recorded.get("handledRequests") or {}).get(annotation)
        return asked if asked and asked != handled else None

    def handled(self, annotation: str, value: str) -> None:
        requests = dict(self.observed.recorded.get("handledRequests") or {})
        self.observed.recorded["handledRequests"] = {**requests, annotation: value}


def _apply_all(run: Pass, settings: OperatorSettings) -> None:
    """Apply every child (a failure is noted and the others still go ahead), repairing drift."""
    cache, spec, observed = run.cache, run.spec, run.observed
    _claim(run)
    # What agent pods need to be admitted (their ServiceAccount) comes first, then the DaemonSet itself,
    # so agents start as early as possible; the rest follows.
    _apply(run, rbac.service_account(cache))
    config_map = vllm_configmap.config_map(cache, spec)
    observed.config_hash = config_map["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH]
    capacity = ((observed.pvc or {}).get("status") or {}).get("capacity", {}).get("storage")
    max_bytes = spec.effective_max_bytes(parse_quantity(capacity) if capacity else None)
    template = agents.pod_template(
        cache,
        spec,
        image=spec.agent.image or settings.agent_image,
        max_bytes=max_bytes,
        config_hash=observed.config_hash,
        pod_annotations=settings.agent_pod_annotations,
    )
    observed.daemon_set = _apply(run, agents.daemon_set(cache, spec, template))
    for child in (
        config_map,
        rbac.role(cache),
        rbac.role_binding(cache),
        agents.metrics_service(cache, spec),
    ):
        _apply(run, child)


def _apply(run: Pass, desired: Obj) -> Obj | None:
    """Server-side apply `desired`, then remove what other managers added to the parts we own."""
    kind, name = desired["kind"], desired["metadata"]["name"]
    live = run.attempt(kind, lambda: run.kube.apply(desired))
    if live is None or not (managers := drift.foreign_managers(live)):
        return live
    candidate = drift.repaired(live, desired)
    preview = run.attempt(kind, lambda: run.kube.replace(candidate, dry_run=True))
    changed = drift.differs(live, preview) if preview is not None else []
    if not changed:
        return live
    result = run.attempt(kind, lambda: run.kube.replace(candidate))
    if result is not None:
        run.events.append(
            (
                "Warning",
                DRIFT_REPAIRED,
                f"{kind} {name}: {', '.join(changed)} restored to the desired state, removing what "
                f"{', '.join(managers)} changed",
            )
        )
    return result or live


def _claim(run: Pass) -> None:
    """Apply the claim, unless the one this cache had is gone: then only a recreate-claim request makes
    a new, empty one."""
    kube, cache, spec, observed = run.kube, run.cache, run.spec, run.observed
    name = names.pvc_name(cache.name, spec)
    live = run.attempt(
        "PersistentVolumeClaim", lambda: kube.get("v1", "PersistentVolumeClaim", cache.namespace, name)
    )
    built = storage.claim(cache, spec)
    recorded_uid = observed.recorded.get("claimUid")
    request = run.annotation_request(names.ANNOTATION_RECREATE_CLAIM)
    if request is not None:
        run.handled(names.ANNOTATION_RECREATE_CLAIM, request)
    terminating = live is not None and live["metadata"].get("deletionTimestamp")
    if live is None and recorded_uid and built is not None:
        if request is None:
            observed.claim_deleted = True
            return
        run.events.append(
            ("Normal", CLAIM_RECREATED, f"a new, empty claim {name} is created as asked by {request!r}")
        )
    if built is not None and not terminating:
        live = run.attempt("PersistentVolumeClaim", lambda: kube.apply(built)) or live
    observed.pvc = live
    if live is not None:
        observed.recorded["claimUid"] = live["metadata"].get("uid")


def _store_profile(run: Pass) -> None:
    """Record what names the stored blocks; a change (admitted with allow-orphaning) gets an Event."""
    spec = run.spec
    profile = (
        f"subPath={spec.storage.sub_path or '/'} hashAlgo={spec.vllm.hash_algo.value} "
        f"vllm={spec.vllm.version}"
    )
    before = run.observed.recorded.get("storeProfile")
    if before is not None and before != profile:
        run.events.append(
            ("Warning", BLOCKS_ORPHANED, f"the blocks stored so far are orphaned: {before} -> {profile}")
        )
    run.observed.recorded["storeProfile"] = profile


def reconcile(kube: Kube, body: Obj, settings: OperatorSettings, now: str, *, apply: bool = True) -> Outcome:
    """Converge the children of the cache in `body` (unless `apply` is False) and compute its status.

    With apply=False nothing is written: the children are only read, for a status refresh after one of
    them (or a pod of the cache) changed. Each call is counted and timed in the operator's metrics.
    """
    with metrics.timed_reconcile(apply) as report:
        outcome = _converge(kube, body, settings, now, apply=apply)
        report(outcome.status)
    return outcome


def _converge(kube: Kube, body: Obj, settings: OperatorSettings, now: str, *, apply: bool) -> Outcome:
    meta = body["metadata"]
    cache = CacheRef(meta["name"], meta["namespace"], meta["uid"], int(meta.get("generation") or 0))
    status: Obj = body.get("status") or {}
    previous: list[Obj] = status.get("conditions") or []
    spec, error, reason = parse_spec(body)
    observed = status_mod.Observed(
        generation=cache.generation,
        spec=spec,
        spec_error=error,
        spec_error_reason=reason,
        profile_mismatches=dict(status.get("profileMismatches") or {}),
        recorded={k: status[k] for k in RECORDED_FIELDS if status.get(k) is not None},
    )
    events: list[Event] = []
    if spec is not None:
        run = Pass(kube, cache, spec, body, observed)
        _seed_step(run, write=apply)
        if apply:
            _store_profile(run)
            _apply_all(run, settings)
        try:
            _observe(run, children=not apply)
        except KubeError as err:
            run.errors.append(f"observe: {err}")
        observed.apply_error = "; ".join(run.errors) or None
        events = run.events
    new = status_mod.compute_status(cache.name, observed, previous, now)
    return Outcome(status=new, events=events + status_mod.transition_events(previous, new["conditions"]))


def _seed_step(run: Pass, *, write: bool) -> None:
    plan = ensure_seed(run.kube, run.cache, run.spec, run.body, write=write, attempt=run.attempt)
    run.observed.seed_problem = plan.problem
    if plan.secret_read:
        run.observed.seed_secret, run.seed_read = plan.secret, True
    requests = plan.recorded.pop("handledRequests", {})
    run.observed.recorded.update(plan.recorded)
    for annotation, value in requests.items():
        run.handled(annotation, value)
    run.events += plan.events


def _observe(run: Pass, *, children: bool) -> None:
    """Read what the status depends on; `children` also reads what _apply_all would have returned."""
    kube, cache, spec, observed = run.kube, run.cache, run.spec, run.observed
    ns = cache.namespace
    if children:
        observed.pvc = kube.get("v1", "PersistentVolumeClaim", ns, names.pvc_name(cache.name, spec))
        created = spec.storage.existing_claim is None  # an adopted claim that is gone is ClaimNotFound
        observed.claim_deleted = created and observed.pvc is None and bool(observed.recorded.get("claimUid"))
        observed.daemon_set = kube.get("apps/v1", "DaemonSet", ns, names.agent_name(cache.name))
        observed.config_hash = vllm_configmap.rendered(cache, spec)[1]
    if not run.seed_read:
        observed.seed_secret = kube.get("v1", "Secret", ns, names.seed_secret(cache.name, spec)[0])
    observed.pods = kube.list("v1", "Pod", ns, f"{names.LABEL_CACHE}={cache.name}")
