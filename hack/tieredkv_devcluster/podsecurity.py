"""The Pod Security Standards' `baseline` and `restricted` profiles as a table of rules over a pod spec.

The local API server (1.20) has no Pod Security admission and no evaluator for it installs from the registries
here, so tests evaluate pods with this table: one entry per control of the Kubernetes documentation's "Pod
Security Standards" page (profile version `latest`), each a pure function from a pod spec (camelCase dict) to
the places that break it. `restricted` is `baseline` plus its own controls. Used by tests only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

Obj = dict[str, Any]
Profile = Literal["baseline", "restricted"]

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
        "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)  # fmt: skip
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


@dataclass(frozen=True)
class Violation:
    rule: str
    where: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.where}"


def _containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(kind) or []:
            yield f"{kind}[{c.get('name')}]", c


def _ctx(c: Obj) -> Obj:
    return c.get("securityContext") or {}


def _host_process(spec: Obj) -> Iterator[str]:
    if (_ctx(spec).get("windowsOptions") or {}).get("hostProcess"):
        yield "spec.securityContext.windowsOptions.hostProcess"
    for where, c in _containers(spec):
        if (_ctx(c).get("windowsOptions") or {}).get("hostProcess"):
            yield f"{where}.securityContext.windowsOptions.hostProcess"


def _host_namespaces(spec: Obj) -> Iterator[str]:
    yield from (f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k))


def _privileged(spec: Obj) -> Iterator[str]:
    yield from (f"{w}.securityContext.privileged" for w, c in _containers(spec) if _ctx(c).get("privileged"))


def _capabilities(spec: Obj) -> Iterator[str]:
    for where, c in _containers(spec):
        for cap in (_ctx(c).get("capabilities") or {}).get("add") or []:
            if cap not in BASELINE_CAPABILITIES:
                yield f"{where}.securityContext.capabilities.add {cap}"


def _host_path(spec: Obj) -> Iterator[str]:
    yield from (
        f"spec.volumes[{v.get('name')}].hostPath" for v in spec.get("volumes") or [] if "hostPath" in v
    )


def _host_ports(spec: Obj) -> Iterator[str]:
    for where, c in _containers(spec):
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                yield f"{where}.ports hostPort {p['hostPort']}"


def _apparmor(spec: Obj, annotations: Obj) -> Iterator[str]:
    prefix = "container.apparmor.security.beta.kubernetes.io/"
    for key, value in annotations.items():
        if key.startswith(prefix) and value != "runtime/default" and not str(value).startswith("localhost/"):
            yield f"metadata.annotations[{key}] {value}"
    contexts = [("spec.securityContext", _ctx(spec))] + [
        (f"{w}.securityContext", _ctx(c)) for w, c in _containers(spec)
    ]
    for where, ctx in contexts:
        kind = (ctx.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            yield f"{where}.appArmorProfile.type {kind}"


def _selinux(spec: Obj) -> Iterator[str]:
    contexts = [("spec.securityContext", _ctx(spec))] + [
        (f"{w}.securityContext", _ctx(c)) for w, c in _containers(spec)
    ]
    for where, ctx in contexts:
        opts = ctx.get("seLinuxOptions") or {}
        if opts.get("type", "") not in SELINUX_TYPES:
            yield f"{where}.seLinuxOptions.type {opts['type']}"
        yield from (f"{where}.seLinuxOptions.{k}" for k in ("user", "role") if opts.get(k))


def _proc_mount(spec: Obj) -> Iterator[str]:
    for where, c in _containers(spec):
        if _ctx(c).get("procMount", "Default") != "Default":
            yield f"{where}.securityContext.procMount {_ctx(c)['procMount']}"


def _seccomp_baseline(spec: Obj) -> Iterator[str]:
    contexts = [("spec.securityContext", _ctx(spec))] + [
        (f"{w}.securityContext", _ctx(c)) for w, c in _containers(spec)
    ]
    for where, ctx in contexts:
        if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield f"{where}.seccompProfile.type Unconfined"


def _sysctls(spec: Obj) -> Iterator[str]:
    for s in _ctx(spec).get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            yield f"spec.securityContext.sysctls {s.get('name')}"


def _volume_types(spec: Obj) -> Iterator[str]:
    for v in spec.get("volumes") or []:
        kinds = [k for k in v if k != "name"]
        if any(k not in RESTRICTED_VOLUMES for k in kinds):
            yield f"spec.volumes[{v.get('name')}] {kinds}"


def _privilege_escalation(spec: Obj) -> Iterator[str]:
    for where, c in _containers(spec):
        if _ctx(c).get("allowPrivilegeEscalation") is not False:
            yield f"{where}.securityContext.allowPrivilegeEscalation is not false"


def _non_root(spec: Obj) -> Iterator[str]:
    pod_level = _ctx(spec).get("runAsNonRoot")
    for where, c in _containers(spec):
        own = _ctx(c).get("runAsNonRoot")
        if own is False or (own is None and pod_level is not True):
            yield f"{where}: runAsNonRoot is not true (pod or container)"


def _non_root_user(spec: Obj) -> Iterator[str]:
    if _ctx(spec).get("runAsUser") == 0:
        yield "spec.securityContext.runAsUser 0"
    yield from (
        f"{w}.securityContext.runAsUser 0" for w, c in _containers(spec) if _ctx(c).get("runAsUser") == 0
    )


def _seccomp_restricted(spec: Obj) -> Iterator[str]:
    allowed = ("RuntimeDefault", "Localhost")
    pod_kind = (_ctx(spec).get("seccompProfile") or {}).get("type")
    if pod_kind is not None and pod_kind not in allowed:
        yield f"spec.securityContext.seccompProfile.type {pod_kind}"
    for where, c in _containers(spec):
        kind = (_ctx(c).get("seccompProfile") or {}).get("type")
        if kind is not None and kind not in allowed:
            yield f"{where}.securityContext.seccompProfile.type {kind}"
        elif kind is None and pod_kind is None:
            yield f"{where}: no seccompProfile RuntimeDefault or Localhost (pod or container)"


def _capabilities_restricted(spec: Obj) -> Iterator[str]:
    for where, c in _containers(spec):
        caps = _ctx(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            yield f"{where}.securityContext.capabilities.drop lacks ALL"
        for cap in caps.get("add") or []:
            if cap != "NET_BIND_SERVICE":
                yield f"{where}.securityContext.capabilities.add {cap}"


Rule = Callable[[Obj, Obj], Iterator[str]]


def _spec_only(fn: Callable[[Obj], Iterator[str]]) -> Rule:
    return lambda spec, _annotations: fn(spec)


BASELINE: dict[str, Rule] = {
    "HostProcess": _spec_only(_host_process),
    "Host Namespaces": _spec_only(_host_namespaces),
    "Privileged Containers": _spec_only(_privileged),
    "Capabilities": _spec_only(_capabilities),
    "HostPath Volumes": _spec_only(_host_path),
    "Host Ports": _spec_only(_host_ports),
    "AppArmor": _apparmor,
    "SELinux": _spec_only(_selinux),
    "/proc Mount Type": _spec_only(_proc_mount),
    "Seccomp": _spec_only(_seccomp_baseline),
    "Sysctls": _spec_only(_sysctls),
}
RESTRICTED: dict[str, Rule] = {
    "Volume Types": _spec_only(_volume_types),
    "Privilege Escalation": _spec_only(_privilege_escalation),
    "Running as Non-root": _spec_only(_non_root),
    "Running as Non-root user": _spec_only(_non_root_user),
    "Seccomp (restricted)": _spec_only(_seccomp_restricted),
    "Capabilities (restricted)": _spec_only(_capabilities_restricted),
}


def evaluate(pod: Obj, profile: Profile) -> list[Violation]:
    """Every violation of `profile` by `pod` (a Pod, or a pod template with metadata and spec)."""
    spec, annotations = pod.get("spec") or {}, (pod.get("metadata") or {}).get("annotations") or {}
    rules = dict(BASELINE) if profile == "baseline" else {**BASELINE, **RESTRICTED}
    return [Violation(name, where) for name, rule in rules.items() for where in rule(spec, annotations)]


def rules_broken(pod: Obj, profile: Profile) -> set[str]:
    """The names of the rules of `profile` that `pod` breaks."""
    return {v.rule for v in evaluate(pod, profile)}
