"""Entry point of the node simulator process (`python -m tieredkv_devcluster sim`)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tieredkv_devcluster import gluster
from tieredkv_devcluster.gluster import GlusterInfo
from tieredkv_devcluster.paths import StateLayout
from tieredkv_devcluster.pki import issue_serving_cert
from tieredkv_devcluster.sim import nodes, storage
from tieredkv_devcluster.sim.kubelet import KubeletServer
from tieredkv_devcluster.sim.pods import PodController

log = logging.getLogger("sim")


def run(state_dir: Path, node_count: int) -> int:
    """Main thread: register nodes and the StorageClass, start the loops, wait for SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    layout = StateLayout(state_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def api_factory() -> client.ApiClient:
        return config.new_client_from_config(config_file=str(layout.kubeconfig))

    recorded = json.loads(layout.state_file.read_text())
    info = GlusterInfo.from_json(recorded["gluster"]) if recorded.get("gluster") else None
    backends = _mount_gluster(layout, info, nodes.node_names(node_count))
    try:
        return _serve(
            layout, node_count, int(recorded["ports"]["apiserver"]), backends, stop, api_factory=api_factory
        )
    finally:
        if info is not None:
            for node in nodes.node_names(node_count):
                gluster.unmount(node, info)


def _mount_gluster(layout: StateLayout, info: GlusterInfo | None, names: list[str]) -> storage.Backends:
    """One FUSE client per node at <state>/nodes/<node>/gluster/<volume> (main thread, before any pod)."""
    if info is None:
        return storage.Backends(layout.volumes)
    for node in names:
        point = layout.gluster_mount(node, info.volume)
        gluster.mount(info, point, node)
        log.info("%s mounts gluster volume %s at %s", node, info.volume, point)
    return storage.Backends(layout.volumes, info.volume, layout.gluster_mount(names[0], info.volume))


def _serve(
    layout: StateLayout,
    node_count: int,
    port: int,
    backends: storage.Backends,
    stop: threading.Event,
    *,
    api_factory: Any,
) -> int:
    """Register nodes and StorageClasses, run the loops until `stop` (main thread)."""
    api = api_factory()
    core = client.CoreV1Api(api)
    pods = PodController(api_factory, layout, nodes.node_names(node_count), port)
    kubelet = KubeletServer(pods.log_path, *issue_serving_cert(layout.pki, "kubelet", ["127.0.0.1"]))
    kubelet.start()
    names = nodes.ensure_nodes(core, node_count, kubelet_port=kubelet.port)
    storage.ensure_storage_classes(client.StorageV1Api(api), backends)
    threads = [
        threading.Thread(target=pods.watch_loop, args=(stop,), name="pod-watch", daemon=True),
        threading.Thread(target=pods.worker_loop, args=(stop,), name="pod-worker", daemon=True),
        threading.Thread(
            target=storage.loop,
            args=(client.CoreV1Api(api_factory()), backends, stop),
            name="provisioner",
            daemon=True,
        ),
    ]
    for t in threads:
        t.start()
    _wait_default_service_account(core, stop)
    (layout.root / "sim.ready").write_text(f"{time.time()}\n")
    log.info("node simulator ready: %s", ", ".join(names))
    stop.wait()
    log.info("stopping local pods")
    pods.stop_all()
    kubelet.stop()
    return 0


def _wait_default_service_account(core: client.CoreV1Api, stop: threading.Event) -> None:
    """Pods cannot be created before kube-controller-manager made the `default` ServiceAccount."""
    while not stop.is_set():
        try:
            core.read_namespaced_service_account("default", "default")
            return
        except ApiException:
            stop.wait(0.2)
