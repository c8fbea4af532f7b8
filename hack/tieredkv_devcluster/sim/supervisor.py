"""Runs one opted-in pod's containers as real local processes and reports their state.

One `PodRunner` thread per pod: it resolves the run plan (retrying while e.g. a Secret or PVC is not
ready), writes Secret/ConfigMap volume files, runs init containers to completion, then keeps the
containers running per the pod's restartPolicy and evaluates readiness probes. The pod controller's
worker thread reads `snapshot()`; the runner calls `notify()` whenever the snapshot changes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tieredkv_devcluster import procs
from tieredkv_devcluster.sim import volumes
from tieredkv_devcluster.sim.csi import CsiError, Kubelet
from tieredkv_devcluster.sim.plan import (
    ContainerPlan,
    Lookup,
    Obj,
    PlanError,
    PodDirs,
    container_argv,
    container_env,
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: Obj
    plan: ContainerPlan
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restarts: int = 0
    exit_code: int | None = None
    finished_at: str | None = None
    done: bool = False
    ready: bool = False
    next_start: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


class PodRunner(threading.Thread):
    def __init__(
        self,
        pod: Obj,
        lookup: Lookup,
        dirs: PodDirs,
        base_env: dict[str, str],
        notify: Callable[[], None],
        *,
        csi: Kubelet | None = None,
    ) -> None:
        super().__init__(name=f"pod-{pod['metadata']['name']}", daemon=True)
        self.pod, self.lookup, self.dirs, self.base_env, self.notify = pod, lookup, dirs, base_env, notify
        self.csi = csi
        self.published: list[Obj] = []
        """The pod's csi volumes published so far (unpublished when the runner ends)."""
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.waiting: tuple[str, str] | None = ("ContainerCreating", "")
        self.init: list[Container] = []
        self.main: list[Container] = []
        self.failed = False
        self._lock = threading.Lock()

    # -- plan -------------------------------------------------------------------------------------
    def _plans(self, specs: list[Obj]) -> list[Container]:
        sources = volumes.volume_sources(self.pod, self.lookup, self.dirs)
        out = []
        for spec in specs:
            env = container_env(self.pod, spec, self.lookup, self.base_env)
            plan = ContainerPlan(
                name=spec["name"],
                argv=container_argv(spec, env),
                env=env,
                mounts=volumes.container_mounts(self.pod, spec, sources),
                workdir=spec.get("workingDir"),
            )
            out.append(Container(spec=spec, plan=plan))
        self._materialise(sources)
        return out

    def _materialise(self, sources: dict[str, Path]) -> None:
        for name, path in sources.items():
            kind = volumes.host_path_kind(self.pod, name)
            if volumes.is_file_type(kind):
                path.parent.mkdir(parents=True, exist_ok=True)
                if kind == "FileOrCreate":
                    path.touch(exist_ok=True)
            else:
                path.mkdir(parents=True, exist_ok=True)
            for rel, content in self.dirs.files.get(name, {}).items():
                target = path / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)

    def _publish_csi(self) -> None:
        """NodePublishVolume for each inline csi volume not yet published (the kubelet's volume manager)."""
        for vol in self.pod["spec"].get("volumes") or []:
            if "csi" not in vol or vol in self.published:
                continue
            if self.csi is None:
                raise PlanError("UnsupportedVolume", f"volume {vol['name']}: no CSI support on this node")
            try:
                self.csi.publish(self.pod, vol)
            except CsiError as exc:
                raise PlanError(
                    "ContainerCreating", f"MountVolume.SetUp failed for volume {vol['name']}: {exc}"
                ) from exc
            self.published.append(vol)

    def _unpublish_csi(self) -> None:
        for vol in reversed(self.published):
            try:
                assert self.csi is not None
                self.csi.unpublish(self.pod, vol)
            except CsiError as exc:
                self.waiting = (
                    "SimulatorError",
                    f"UnmountVolume.TearDown failed for volume {vol['name']}: {exc}",
                )
        self.published = []

    # -- processes --------------------------------------------------------------------------------
    def _start(self, c: Container) -> None:
        plan_file = self.dirs.pod_root / "plans" / f"{c.plan.name}.json"
        plan_file.parent.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(
            json.dumps(
                {
                    "argv": c.plan.argv,
                    "env": c.plan.env,
                    "workdir": c.plan.workdir,
                    "mounts": [vars(m) for m in c.plan.mounts],
                }
            )
        )
        log = self.dirs.pod_root / "logs" / f"{c.plan.name}.log"
        argv = [sys.executable, "-m", "tieredkv_devcluster.sim.podexec", str(plan_file)]
        c.proc, record = procs.spawn(c.plan.name, argv, log, env=dict(os.environ))
        rec_file = self.dirs.pod_root / "procs" / f"{c.plan.name}.json"
        rec_file.parent.mkdir(parents=True, exist_ok=True)
        rec_file.write_text(json.dumps(record.to_json()))
        c.meta["record"] = record
        c.meta.pop("probe", None)
        c.started_at, c.exit_code, c.ready = _now(), None, False

    def _poll(self, c: Container, restart_policy: str, is_init: bool) -> bool:
        """Reap an exited container and schedule its restart; True if its state changed."""
        if c.proc is None or c.proc.poll() is None:
            return False
        c.exit_code, c.finished_at, c.ready, c.proc = c.proc.returncode, _now(), False, None
        restart = restart_policy == "Always" or (restart_policy == "OnFailure" and c.exit_code != 0)
        if is_init and c.exit_code == 0:
            c.done = True
        elif restart:
            c.restarts += 1
            c.next_start = time.monotonic() + min(16.0, 2.0 ** min(c.restarts - 1, 4))
        else:
            c.done = True
            self.failed = self.failed or c.exit_code != 0
        return True

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            self.waiting = ("SimulatorError", f"{type(exc).__name__}: {exc}")
            self.notify()
        finally:
            self._kill_all(timeout=5)
            self._unpublish_csi()
            self.stopped.set()

    def _run(self) -> None:
        spec = self.pod["spec"]
        policy = spec.get("restartPolicy", "Always")
        while not self.stopping.is_set():
            try:
                self._publish_csi()
                self.init = self._plans(spec.get("initContainers") or [])
                self.main = self._plans(spec["containers"])
                break
            except PlanError as exc:
                self.waiting = (exc.reason, str(exc))
                self.notify()
                self.stopping.wait(1.0)
        for c in self.init:
            while not c.done and not self.stopping.is_set() and not self.failed:
                if c.proc is None and time.monotonic() >= c.next_start:
                    self._start(c)
                    self.notify()
                if self._poll(c, "OnFailure" if policy == "Always" else policy, is_init=True):
                    self.notify()
                self.stopping.wait(0.1)
        if self.failed or self.stopping.is_set():
            return
        self.waiting = None
        while not self.stopping.is_set():
            changed = False
            for c in self.main:
                if c.proc is None and not c.done and time.monotonic() >= c.next_start:
                    self._start(c)
                    changed = True
                changed |= self._poll(c, policy, is_init=False)
                changed |= self._probe(c)
            if changed:
                self.notify()
            self.stopping.wait(0.25)

    def _probe(self, c: Container) -> bool:
        """Evaluate the readiness probe as the kubelet does (httpGet / tcpSocket; exec probes pass).

        The first probe runs `initialDelaySeconds` after the start, then one every `periodSeconds` (default
        10); `successThreshold` consecutive passes make the container ready, `failureThreshold` consecutive
        failures (default 3) unready. Returns whether readiness changed. Called from the supervisor thread.
        """
        if c.proc is None:
            return False
        probe = c.spec.get("readinessProbe")
        if not probe:
            changed, c.ready = not c.ready, True
            return changed
        state = c.meta.setdefault("probe", ProbeState())
        assert isinstance(state, ProbeState)
        if not state.due(probe, time.monotonic()):
            return False
        ready = state.record(probe, _probe_ok(probe, c.spec, self.pod), was_ready=c.ready)
        changed, c.ready = ready != c.ready, ready
        return changed

    def _kill_all(self, timeout: float) -> None:
        for c in [*self.main, *self.init]:
            record = c.meta.get("record")
            if isinstance(record, procs.ProcessRecord):
                procs.stop(record, timeout=timeout, group=True)
                (self.dirs.pod_root / "procs" / f"{c.plan.name}.json").unlink(missing_ok=True)
            if c.proc is not None:
                c.proc.wait()

    def stop(self, grace: float) -> None:
        """Called from the controller thread: SIGTERM all containers, SIGKILL after `grace` seconds."""
        self.stopping.set()
        self._kill_all(timeout=grace)
        self.stopped.wait(grace + 10)


@dataclass
class ProbeState:
    """The kubelet's bookkeeping for one container's readiness probe (pure: no clock, no I/O)."""

    next_at: float | None = None
    passes: int = 0
    fails: int = 0

    def due(self, probe: Obj, now: float) -> bool:
        """Whether a probe runs now; the first after `initialDelaySeconds`, then every `periodSeconds`."""
        if self.next_at is None:
            self.next_at = now + probe.get("initialDelaySeconds", 0)
        if now < self.next_at:
            return False
        self.next_at = now + max(1, probe.get("periodSeconds", 10))
        return True

    def record(self, probe: Obj, ok: bool, *, was_ready: bool) -> bool:
        """Count one probe result; the readiness it leaves (thresholds as the kubelet applies them)."""
        self.passes, self.fails = (self.passes + 1, 0) if ok else (0, self.fails + 1)
        if self.passes >= probe.get("successThreshold", 1):
            return True
        if self.fails >= probe.get("failureThreshold", 3):
            return False
        return was_ready


def _probe_ok(probe: Obj, container: Obj, pod: Obj) -> bool:
    host = pod.get("status", {}).get("podIP") or "127.0.0.1"
    try:
        if "httpGet" in probe:
            hg = probe["httpGet"]
            port = _port(hg["port"], container)
            url = f"http://{hg.get('host') or host}:{port}{hg.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as resp:
                code: int = resp.status
                return 200 <= code < 400
        if "tcpSocket" in probe:
            with socket.create_connection((host, _port(probe["tcpSocket"]["port"], container)), timeout=1):
                return True
    except OSError:
        return False
    return True


def _port(port: int | str, container: Obj) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise OSError(f"named port {port} not found")
