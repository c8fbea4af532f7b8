"""The simulated kubelets' pod loop: watch pods bound to simulated nodes, report their status, run the
opted-in ones locally, and finish deletions (which a real kubelet does).

Threads: `watch_loop` (one) keeps a cache of pods and queues keys; `worker_loop` (one) handles queued
keys one at a time; each local pod has a `PodRunner` thread; each deletion of a local pod runs in a
short-lived thread so a long grace period stalls nobody else.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tieredkv_devcluster.paths import REPO_ROOT, StateLayout
from tieredkv_devcluster.sim import RUN_ANNOTATION, podexec, podstatus, volumes
from tieredkv_devcluster.sim.csi import Kubelet, NodePaths
from tieredkv_devcluster.sim.plan import Obj, PodDirs
from tieredkv_devcluster.sim.supervisor import PodRunner, _now

log = logging.getLogger("sim.pods")


class ApiLookup:
    """`Lookup` backed by the API server (called from runner threads)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api, self.core = api, client.CoreV1Api(api)

    def _get(self, fn: Any, *args: str) -> Obj | None:
        try:
            obj: Obj = self.api.sanitize_for_serialization(fn(*args))
            return obj
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def secret(self, namespace: str, name: str) -> Obj | None:
        obj = self._get(self.core.read_namespaced_secret, name, namespace)
        if obj is not None:
            obj.setdefault("kind", "Secret")
        return obj

    def config_map(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.core.read_namespaced_config_map, name, namespace)

    def pvc(self, namespace: str, name: str) -> Obj | None:
        return self._get(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def pv(self, name: str) -> Obj | None:
        return self._get(self.core.read_persistent_volume, name)

    def csi_driver_modes(self, name: str) -> list[str] | None:
        """The volumeLifecycleModes of CSIDriver `name` (None: no such object), as the kubelet reads them."""
        obj = self._get(client.StorageV1Api(self.api).read_csi_driver, name)
        if obj is None:
            return None
        modes: list[str] = (obj.get("spec") or {}).get("volumeLifecycleModes") or ["Persistent"]
        return modes


class PodController:
    def __init__(self, api_factory: Any, layout: StateLayout, nodes: list[str], apiserver_port: int) -> None:
        self.api_factory, self.layout, self.nodes = api_factory, layout, nodes
        self.apiserver_port = apiserver_port
        self.queue: queue.Queue[str] = queue.Queue()
        self.cache: dict[str, Obj] = {}
        self.runners: dict[str, PodRunner] = {}
        self.reported: dict[str, Obj] = {}
        self.ips: dict[str, str] = {}
        self.since: dict[str, str] = {}
        self.deleting: set[str] = set()
        self._lock = threading.Lock()
        self._ip_counter = 0
        self.kubelets: dict[str, Kubelet] = {}
        """Each node's CSI side (plugin registrations), made on the first pod there."""
        self.shared: list[Path] = []
        """hostPath directories made shared mounts for Bidirectional volumeMounts (undone in stop_all)."""

    # -- watch ------------------------------------------------------------------------------------
    def watch_loop(self, stop: threading.Event) -> None:
        api = self.api_factory()
        core = client.CoreV1Api(api)
        while not stop.is_set():
            try:
                listing = core.list_pod_for_all_namespaces()
                fresh = {self._key(p): p for p in (api.sanitize_for_serialization(x) for x in listing.items)}
                with self._lock:
                    gone = set(self.cache) - set(fresh)
                    self.cache = fresh
                for key in [*fresh, *gone]:
                    self.queue.put(key)
                rv = listing.metadata.resource_version
                for event in watch.Watch().stream(
                    core.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=120
                ):
                    if stop.is_set():
                        return
                    pod = api.sanitize_for_serialization(event["object"])
                    key = self._key(pod)
                    with self._lock:
                        if event["type"] == "DELETED":
                            self.cache.pop(key, None)
                        else:
                            self.cache[key] = pod
                    self.queue.put(key)
            except Exception as exc:
                if not stop.is_set():
                    log.warning("pod watch restarting: %s", exc)
                    stop.wait(1.0)

    @staticmethod
    def _key(pod: Obj) -> str:
        return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"

    # -- worker -----------------------------------------------------------------------------------
    def worker_loop(self, stop: threading.Event) -> None:
        core = client.CoreV1Api(self.api_factory())
        while not stop.is_set():
            try:
                key = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._handle(core, key)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    log.warning("pod %s: %s %s", key, exc.status, exc.reason)
                    threading.Timer(1.0, self.queue.put, (key,)).start()
            except Exception:
                log.exception("pod %s: unexpected error", key)

    def _handle(self, core: client.CoreV1Api, key: str) -> None:
        with self._lock:
            pod = self.cache.get(key)
        if pod is None:
            self._forget(key)
            return
        node = pod["spec"].get("nodeName")
        if node not in self.nodes:
            return
        uid = pod["metadata"]["uid"]
        if pod["metadata"].get("deletionTimestamp"):
            self._delete(core, key, pod)
            return
        local = (pod["metadata"].get("annotations") or {}).get(RUN_ANNOTATION) == "local"
        ip = self._ip(uid, node)
        since = self.since.setdefault(uid, _now())
        if local and uid not in self.runners:
            pod = {**pod, "status": {**(pod.get("status") or {}), "podIP": ip, "hostIP": "127.0.0.1"}}
            self._start_runner(key, pod, node)
        if local:
            status = podstatus.local_status(pod, self.runners[uid], ip, "127.0.0.1", since)
        else:
            status = podstatus.plain_status(pod, ip, "127.0.0.1", since)
        if podstatus.comparable(status) != self.reported.get(uid):
            core.patch_namespaced_pod_status(
                pod["metadata"]["name"], pod["metadata"]["namespace"], {"status": status}
            )
            self.reported[uid] = podstatus.comparable(status)

    def _ip(self, uid: str, node: str) -> str:
        if uid not in self.ips:
            self._ip_counter += 1
            n = self._ip_counter
            self.ips[uid] = f"127.{100 + self.nodes.index(node)}.{(n // 250) % 250}.{n % 250 + 1}"
        return self.ips[uid]

    def _start_runner(self, key: str, pod: Obj, node: str) -> None:
        uid = pod["metadata"]["uid"]
        venv_bin = str(Path(sys.executable).parent)
        base_env = {
            "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")]),
            # This checkout's code, not whichever one the shared venv's editable install points at (a
            # container that sets PYTHONPATH itself, as injected vLLM pods do, replaces this).
            "PYTHONPATH": os.pathsep.join(
                str(REPO_ROOT / d) for d in ("operator", "agent", "common", "hack")
            ),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "HOSTNAME": pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.apiserver_port),
        }
        dirs = PodDirs(pod_root=self.layout.pods / uid, node_root=self.layout.nodes / node / "hostpath")
        lookup = ApiLookup(self.api_factory())
        self._share_bidirectional(pod, dirs)
        if node not in self.kubelets:
            to_local = functools.partial(volumes.host_path_under, dirs.node_root)
            self.kubelets[node] = Kubelet(node, NodePaths(to_local), lookup.csi_driver_modes)
        runner = PodRunner(pod, lookup, dirs, base_env, lambda: self.queue.put(key), csi=self.kubelets[node])
        self.runners[uid] = runner
        runner.start()

    def _share_bidirectional(self, pod: Obj, dirs: PodDirs) -> None:
        """A Bidirectional volumeMount needs its hostPath on a shared mount, as a container runtime does."""
        paths = {
            v["name"]: volumes.host_path(dirs, v["hostPath"]["path"])
            for v in pod["spec"].get("volumes") or []
            if "hostPath" in v
        }
        for c in [*pod["spec"]["containers"], *(pod["spec"].get("initContainers") or [])]:
            for vm in c.get("volumeMounts") or []:
                path = paths.get(vm["name"])
                if (
                    vm.get("mountPropagation") == "Bidirectional"
                    and path is not None
                    and path not in self.shared
                ):
                    podexec.share_host_dir(path)
                    self.shared.append(path)

    def _delete(self, core: client.CoreV1Api, key: str, pod: Obj) -> None:
        """Finish a deletion the way a kubelet does: stop containers, then remove the object."""
        uid = pod["metadata"]["uid"]
        if uid in self.deleting:
            return
        self.deleting.add(uid)
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
        runner = self.runners.pop(uid, None)

        def finish() -> None:
            if runner is not None:
                runner.stop(grace=min(grace, 30.0))
            try:
                core.delete_namespaced_pod(
                    pod["metadata"]["name"],
                    pod["metadata"]["namespace"],
                    body=client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": uid}),
                )
            except ApiException as exc:
                if exc.status not in (404, 409):
                    log.warning("delete %s: %s", key, exc.reason)
            self.deleting.discard(uid)

        threading.Thread(target=finish, name=f"delete-{key}", daemon=True).start()

    def _forget(self, key: str) -> None:
        """The pod is gone from the API (force-deleted, or finished): stop anything left of it."""
        for uid, runner in list(self.runners.items()):
            if self._key(runner.pod) == key:
                self.runners.pop(uid)
                threading.Thread(target=runner.stop, args=(5.0,), daemon=True).start()

    def log_path(self, namespace: str, name: str, container: str) -> Path | None:
        """The log file of a container of a pod running here (the kubelet server's request threads)."""
        for runner in list(self.runners.values()):
            meta = runner.pod["metadata"]
            if (meta["namespace"], meta["name"]) == (namespace, name):
                names = {c["name"] for c in runner.pod["spec"].get("containers", [])}
                names |= {c["name"] for c in runner.pod["spec"].get("initContainers") or []}
                return runner.dirs.pod_root / "logs" / f"{container}.log" if container in names else None
        return None

    def stop_all(self) -> None:
        threads = [threading.Thread(target=r.stop, args=(10.0,)) for r in self.runners.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for kubelet in self.kubelets.values():
            kubelet.close()
        for path in reversed(self.shared):
            podexec.unshare_host_dir(path)
        self.shared = []
