"""Pure computation of the status a simulated kubelet reports for a pod."""

from __future__ import annotations

from typing import Any

from tieredkv_devcluster.sim.plan import Obj
from tieredkv_devcluster.sim.supervisor import Container, PodRunner, _now


def _cond(kind: str, ok: bool, since: str) -> Obj:
    return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": since}


def _container_status(c: Container, image: str) -> Obj:
    state: Obj
    if c.proc is not None:
        state = {"running": {"startedAt": c.started_at}}
    elif c.done or (c.exit_code is not None and c.next_start == 0):
        state = {
            "terminated": {
                "exitCode": c.exit_code or 0,
                "finishedAt": c.finished_at,
                "reason": "Completed" if c.exit_code == 0 else "Error",
            }
        }
    elif c.exit_code is not None:
        state = {"waiting": {"reason": "CrashLoopBackOff", "message": f"exited with {c.exit_code}"}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status: Obj = {
        "name": c.plan.name,
        "ready": c.ready,
        "restartCount": c.restarts,
        "image": image,
        "imageID": "",
        "started": c.proc is not None,
        "state": state,
    }
    if c.exit_code is not None and c.proc is not None:
        status["lastState"] = {"terminated": {"exitCode": c.exit_code, "finishedAt": c.finished_at}}
    return status


def plain_status(pod: Obj, pod_ip: str, host_ip: str, since: str) -> Obj:
    """A pod the simulator does not run: every container reported running and ready."""
    containers = pod["spec"]["containers"]
    statuses = [
        {
            "name": c["name"],
            "ready": True,
            "restartCount": 0,
            "image": c.get("image", ""),
            "imageID": "",
            "started": True,
            "state": {"running": {"startedAt": since}},
        }
        for c in containers
    ]
    init = [
        {
            "name": c["name"],
            "ready": True,
            "restartCount": 0,
            "image": c.get("image", ""),
            "imageID": "",
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": since}},
        }
        for c in pod["spec"].get("initContainers") or []
    ]
    conds = [_cond(k, True, since) for k in ("Initialized", "Ready", "ContainersReady", "PodScheduled")]
    out: Obj = {
        "phase": "Running",
        "conditions": conds,
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": since,
        "containerStatuses": statuses,
    }
    if init:
        out["initContainerStatuses"] = init
    return out


def local_status(pod: Obj, runner: PodRunner, pod_ip: str, host_ip: str, since: str) -> Obj:
    """A pod the simulator runs: phase, conditions and container states from its runner."""
    images = {
        c["name"]: c.get("image", "")
        for c in [*pod["spec"]["containers"], *(pod["spec"].get("initContainers") or [])]
    }
    main = [_container_status(c, images.get(c.plan.name, "")) for c in runner.main]
    if not main:  # plan not resolved yet: report the reason on every container
        reason, message = runner.waiting or ("ContainerCreating", "")
        main = [
            {
                "name": c["name"],
                "ready": False,
                "restartCount": 0,
                "image": c.get("image", ""),
                "imageID": "",
                "started": False,
                "state": {"waiting": {"reason": reason, "message": message}},
            }
            for c in pod["spec"]["containers"]
        ]
    initialized = all(c.done for c in runner.init) and bool(runner.main) and runner.waiting is None
    ready = initialized and all(s["ready"] for s in main)
    if runner.failed:
        phase = "Failed"
    elif runner.main and all(c.done for c in runner.main):
        phase = "Succeeded"
    elif any("running" in s["state"] for s in main):
        phase = "Running"
    else:
        phase = "Pending"
    now = _now()
    conds = [
        _cond("Initialized", initialized, since),
        _cond("Ready", ready, now),
        _cond("ContainersReady", ready, now),
        _cond("PodScheduled", True, since),
    ]
    out: dict[str, Any] = {
        "phase": phase,
        "conditions": conds,
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": since,
        "containerStatuses": main,
    }
    if runner.init:
        out["initContainerStatuses"] = [
            _container_status(c, images.get(c.plan.name, "")) for c in runner.init
        ]
    return out


def comparable(status: Obj) -> Obj:
    """The status without timestamps that change on every computation (to skip no-op patches)."""
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
    ]
    return out
