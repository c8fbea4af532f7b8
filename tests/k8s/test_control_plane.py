"""The local control plane is real: API semantics, controllers, the node simulator and the provisioner."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.k8s.crds import WIDGET_CRD
from tieredkv_devcluster import gluster, scenario, testing
from tieredkv_devcluster.sim import GLUSTER_STORAGE_CLASS, STORAGE_CLASS

pytestmark = pytest.mark.k8s

GROUP, VERSION, PLURAL = "test.tieredkv.io", "v1", "widgets"


@pytest.fixture(scope="module")
def widget_crd(kube: testing.TestCluster) -> str:
    from kubernetes import config

    with config.new_client_from_config(config_file=str(kube.kubeconfig)) as api:
        ext = client.ApiextensionsV1Api(api)
        try:
            ext.create_custom_resource_definition(WIDGET_CRD)
        except ApiException as exc:
            if exc.status != 409:
                raise

        def established() -> bool:
            crd = ext.read_custom_resource_definition(WIDGET_CRD["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        testing.wait_for(established, 30, "the Widget CRD to be Established")
    return str(WIDGET_CRD["metadata"]["name"])


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def test_a_crd_with_a_structural_schema_is_established_and_defaults_fields(
    widget_crd: str, api: client.ApiClient, ns: str
) -> None:
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, widget("w1", size=3))
    assert created["spec"] == {"size": 3, "color": "red"}


def test_an_invalid_custom_object_is_rejected_with_422_naming_every_bad_field(
    widget_crd: str, api: client.ApiClient, ns: str
) -> None:
    custom = client.CustomObjectsApi(api)
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, widget("bad", size=99, color="pink")
        )
    assert err.value.status == 422
    assert "spec.size" in err.value.body and "spec.color" in err.value.body


def test_an_empty_string_is_a_valid_string_in_a_custom_object(
    widget_crd: str, api: client.ApiClient, ns: str
) -> None:
    """Regression: built with Go >= 1.18, the unpatched 1.20 validator took "" for null and refused it."""
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, widget("e", size=1, note=""))
    assert created["spec"]["note"] == ""


def test_a_watch_sees_added_modified_and_deleted_in_order(
    widget_crd: str, api: client.ApiClient, ns: str
) -> None:
    custom = client.CustomObjectsApi(api)
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["metadata"]["resourceVersion"]
    seen: list[str] = []

    def collect() -> None:
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            resource_version=rv,
            timeout_seconds=20,
        )
        for event in stream:
            seen.append(event["type"])
            if event["type"] == "DELETED":
                return

    watcher = threading.Thread(target=collect)
    watcher.start()
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, widget("w", size=1))
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w", {"spec": {"size": 2}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w")
    watcher.join(30)
    assert seen == ["ADDED", "MODIFIED", "DELETED"]


def test_the_simulated_nodes_are_ready_and_untainted(core: client.CoreV1Api) -> None:
    nodes = [n for n in core.list_node().items if n.metadata.name.startswith("tkv-node-")]
    assert len(nodes) == 2
    for node in nodes:
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        assert not node.spec.taints


def _daemonset(
    name: str, container: dict[str, Any], volumes: list[dict[str, Any]], local: bool
) -> dict[str, Any]:
    annotations = {"sim.tieredkv.io/run": "local"} if local else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [container], "volumes": volumes, "terminationGracePeriodSeconds": 5},
            },
        },
    }


def test_a_daemonset_gets_one_running_ready_pod_per_simulated_node(api: client.ApiClient, ns: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_daemon_set(
        ns, _daemonset("plain", {"name": "c", "image": "example/none"}, [], False)
    )

    def rolled_out() -> bool:
        ds = apps.read_namespaced_daemon_set("plain", ns).status
        return ds.desired_number_scheduled == 2 and ds.number_ready == 2

    testing.wait_for(rolled_out, 30, "the DaemonSet to have 2 ready pods")
    pods = core.list_namespaced_pod(ns, label_selector="app=plain").items
    assert sorted(p.spec.node_name for p in pods) == ["tkv-node-1", "tkv-node-2"]
    assert all(p.status.phase == "Running" for p in pods)


def test_a_pod_with_the_run_annotation_runs_its_command_logs_and_stops_on_delete(
    kube: testing.TestCluster, core: client.CoreV1Api, ns: str
) -> None:
    assert kube.layout is not None, "needs the local simulator"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runner", "annotations": {"sim.tieredkv.io/run": "local"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "out", "emptyDir": {}}],
            "containers": [
                {
                    "name": "main",
                    "image": "example/none",
                    "command": [
                        "sh",
                        "-c",
                        "echo $(GREETING) > /out/msg; echo $$$$ > /out/pid; echo one; echo two; "
                        "exec sleep 600",
                    ],
                    "env": [{"name": "GREETING", "value": "hello"}],
                    "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                }
            ],
        },
    }
    created = core.create_namespaced_pod(ns, pod)
    out_dir = kube.layout.pods / created.metadata.uid / "volumes" / "out"
    testing.wait_for(lambda: core.read_namespaced_pod("runner", ns).status.phase == "Running", 30, "Running")
    pid = int(
        testing.wait_for(lambda: (out_dir / "pid").exists() and (out_dir / "pid").read_text(), 30, "pid")
    )
    assert (out_dir / "msg").read_text() == "hello\n"
    assert Path(f"/proc/{pid}").exists()
    # kubectl logs: kube-apiserver calls the simulated node's kubelet API.
    assert kube.kubectl("logs", "-n", ns, "runner") == "one\ntwo\n"
    assert kube.kubectl("logs", "-n", ns, "runner", "--tail=1") == "two\n"

    core.delete_namespaced_pod("runner", ns)
    testing.wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the process to stop")

    def gone() -> bool:
        try:
            core.read_namespaced_pod("runner", ns)
        except ApiException as exc:
            return exc.status == 404
        return False

    testing.wait_for(gone, 30, "the pod object to be removed")


@pytest.mark.parametrize("storage_class", [STORAGE_CLASS, GLUSTER_STORAGE_CLASS])
def test_nodes_share_a_pvc_but_each_node_has_its_own_host_path(
    kube: testing.TestCluster, api: client.ApiClient, ns: str, storage_class: str
) -> None:
    """Through gluster, each node's pod sees the claim through its own node's FUSE client (device)."""
    assert kube.layout is not None, "needs the local simulator"
    if storage_class == GLUSTER_STORAGE_CLASS and not gluster.gluster_mounts(kube.layout.root):
        pytest.skip("this cluster runs without GlusterFS (TIEREDKV_GLUSTER=0 or not installed)")
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(
        ns,
        {
            "metadata": {"name": "shared"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": storage_class,
            },
        },
    )
    testing.wait_for(
        lambda: core.read_namespaced_persistent_volume_claim("shared", ns).status.phase == "Bound",
        30,
        "the claim to be bound by the PV controller",
    )
    write = "echo $(NODE) `stat -c %d /shared` > /shared/$(NODE); echo $(NODE) > /host/mine; sleep 600"
    container = {
        "name": "c",
        "image": "example/none",
        "command": ["sh", "-c", write],
        "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "volumeMounts": [{"name": "s", "mountPath": "/shared"}, {"name": "h", "mountPath": "/host"}],
    }
    volumes = [
        {"name": "s", "persistentVolumeClaim": {"claimName": "shared"}},
        {"name": "h", "hostPath": {"path": f"/var/lib/{ns}", "type": "DirectoryOrCreate"}},
    ]
    apps.create_namespaced_daemon_set(ns, _daemonset("writer", container, volumes, True))
    pv = core.read_namespaced_persistent_volume_claim("shared", ns).spec.volume_name
    shared = scenario.pv_directory(kube, core.read_persistent_volume(pv).to_dict())
    assert shared is not None
    testing.wait_for(
        lambda: sorted(p.name for p in shared.iterdir()) == ["tkv-node-1", "tkv-node-2"],
        30,
        "both nodes to write into the shared volume",
    )
    devices = {}
    for node in ("tkv-node-1", "tkv-node-2"):
        mine = kube.layout.nodes / node / "hostpath" / "var" / "lib" / ns / "mine"
        testing.wait_for(mine.exists, 10, f"{node}'s hostPath file")
        assert mine.read_text() == f"{node}\n"
        testing.wait_for(lambda n=node: len((shared / n).read_text().split()) == 2, 10, f"{node}'s line")
        devices[node] = int((shared / node).read_text().split()[1])
    if storage_class == GLUSTER_STORAGE_CLASS:
        assert devices == {
            node: kube.layout.gluster_mount(node, gluster.VOLUME).stat().st_dev for node in devices
        }, "each pod must see the volume through its own node's gluster client"
        assert devices["tkv-node-1"] != devices["tkv-node-2"]
    else:
        assert len(set(devices.values())) == 1


def test_a_local_pod_reaches_the_api_with_its_service_account_under_rbac(
    kube: testing.TestCluster, core: client.CoreV1Api, ns: str
) -> None:
    """In-cluster config works: the pod's token is the ServiceAccount's, so RBAC really applies."""
    assert kube.layout is not None, "needs the local simulator"
    script = (
        "import kubernetes as k; k.config.load_incluster_config(); v=k.client.CoreV1Api()\n"
        "try:\n v.list_namespaced_secret('$(NS)'); print('secrets: allowed')\n"
        "except k.client.exceptions.ApiException as e: print('secrets:', e.status)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "incluster", "annotations": {"sim.tieredkv.io/run": "local"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "c",
                    "image": "example/none",
                    "command": ["python", "-c", script],
                    "env": [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                }
            ],
        },
    }
    created = core.create_namespaced_pod(ns, pod)
    testing.wait_for(
        lambda: core.read_namespaced_pod("incluster", ns).status.phase == "Succeeded",
        60,
        "the in-cluster client pod to finish",
    )
    log = kube.layout.pods / created.metadata.uid / "logs" / "c.log"
    assert log.read_text().strip() == "secrets: 403"


def test_a_minimal_kopf_handler_under_kopf_runner_patches_status(
    widget_crd: str, api: client.ApiClient, ns: str
) -> None:
    from kopf.testing import KopfRunner

    custom = client.CustomObjectsApi(api)
    operator = str(Path(__file__).with_name("widget_operator.py"))
    with KopfRunner(["run", "--standalone", f"--namespace={ns}", operator], timeout=60) as runner:
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, widget("k", size=4))

        def observed() -> bool:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "k")
            return bool(obj.get("status", {}).get("observedSize") == 4)

        testing.wait_for(observed, 30, "kopf to patch status.observedSize")
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "k")
        time.sleep(1.0)  # let kopf release its finalizer before it stops
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0


def test_bringing_the_cluster_up_again_is_a_no_op(kube: testing.TestCluster) -> None:
    from tieredkv_devcluster import controlplane

    if kube.layout is None:
        pytest.skip("an opted-in existing cluster is not ours to start")
    before = controlplane.Cluster.load(kube.layout)
    assert before is not None
    again = controlplane.up(kube.layout.root, log=lambda _m: None)
    assert [p.pid for p in again.processes] == [p.pid for p in before.processes]
