"""Upgrading the shared cluster to the next pinned Kubernetes release by changing `kubernetesVersion`, as a user
would: every API server first, one at a time behind the load balancers, then the controller managers and
schedulers, then node by node a drain, the new kubelet and kube-proxy, and an uncordon, while the API keeps
answering. The last tests on the shared cluster (conftest runs them in file order), which stays on the new
release until it is destroyed. `invoke test` builds the release beside the other artifacts; a run of this file
alone builds it here on first use (about 11 minutes of compiling on 2 cores).
"""
from __future__ import annotations

import json
import time

import pytest
from pulumi import automation as auto

from infra import artifacts, drill
from infra.spec_model import known_kubernetes_versions

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

DEFAULT, TARGET = known_kubernetes_versions()[:2]
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE = ("kubelet", "kube-proxy")


def started_us(live, machine: str, unit: str) -> int:
    """When the unit's process started, in µs of the monotonic clock the machines share with the host."""
    out = live.ssh(machine, f"systemctl show -p ExecMainStartTimestampMonotonic --value {unit}").stdout
    return int(out.strip())


def running_binary(live, machine: str, unit: str) -> tuple[str, str]:
    """The path of the unit's running executable (with " (deleted)" when it was replaced after the process
    started) and the version that file reports."""
    exe = live.ssh(machine, f"readlink /proc/$(systemctl show -p MainPID --value {unit})/exe").stdout.strip()
    version = live.ssh(machine, f"/usr/local/bin/{unit} --version").stdout.strip()
    return exe, version


def replica_set_pods(live) -> dict[str, str]:
    """uid -> creation time of every pod a ReplicaSet owns (Deployments' pods: the ones a drain moves)."""
    pods = live.kubectl.json("get", "pods", "-A")["items"]
    return {p["metadata"]["uid"]: p["metadata"]["creationTimestamp"] for p in pods
            if any(o["kind"] == "ReplicaSet" for o in p["metadata"].get("ownerReferences", []))}


def test_changing_kubernetes_version_upgrades_in_upstream_order_while_the_api_answers(shared_cluster):
    live = shared_cluster
    assert [int(n) for n in TARGET.lstrip("v").split(".")] > [int(n) for n in DEFAULT.lstrip("v").split(".")]
    artifacts.ensure_kubernetes(TARGET, log=print)
    masters, nodes = [m.name for m in live.spec.masters], [m.name for m in live.spec.nodes]
    pods_before = replica_set_pods(live)
    assert pods_before, "the samples run Deployments"

    loop = drill.RequestLoop(drill.ApiClient(live.kubeconfig))
    loop.start()
    started, started_wall = time.monotonic(), time.time()
    try:
        live.up(kubernetesVersion=TARGET)
    finally:
        stats = loop.stop()
    seconds = time.monotonic() - started
    print(f"\nupgrade {DEFAULT} -> {TARGET}: {seconds:.0f}s; requests through the LB: {stats.sent} sent, "
          f"{stats.failed} failed, longest gap {stats.longest_gap:.1f}s")
    assert stats.failed == 0, f"{stats.failures}\n{live.lb_and_etcd_log(started_wall)}"

    # Every component runs the new binary (a process started before the copy would show its file deleted).
    for unit, machines in [*((u, masters) for u in CONTROL_PLANE), *((u, nodes) for u in NODE)]:
        for machine in machines:
            exe, version = running_binary(live, machine, unit)
            assert exe == f"/usr/local/bin/{unit}" and version.endswith(TARGET), (machine, unit, exe, version)
    assert live.kubectl.json("version")["serverVersion"]["gitVersion"] == TARGET
    node_list = live.kubectl.json("get", "nodes")["items"]
    assert {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"] for n in node_list} == \
        {n: TARGET for n in nodes}

    # Upstream's order: all API servers, then the controllers, then the nodes.
    apiservers = [started_us(live, m, "kube-apiserver") for m in masters]
    controllers = [started_us(live, m, u) for m in masters for u in CONTROL_PLANE[1:]]
    kubelets = [started_us(live, n, "kubelet") for n in nodes]
    assert max(apiservers) < min(controllers) and max(controllers) < min(kubelets)

    # Each node was drained: no Deployment pod from before is left, and every node takes pods again.
    pods_after = replica_set_pods(live)
    assert not set(pods_before) & set(pods_after), "pods that were not moved by a drain"
    assert [n["metadata"]["name"] for n in node_list if n["spec"].get("unschedulable")] == []
    assert [n["metadata"]["name"] for n in node_list
            if "node.pilothouse.io/drained-for-upgrade" in n["metadata"]["labels"]] == []
    live.kubectl.run("wait", "--for=condition=Available", "deployment", "--all", "-A", "--timeout=300s", timeout=320)


def test_a_downgrade_is_refused_before_anything_changes_and_a_second_up_changes_nothing(shared_cluster):
    live = shared_cluster
    with pytest.raises(auto.errors.CommandError, match=f"older than the {TARGET} the cluster runs"):
        live.up(kubernetesVersion=DEFAULT)
    result = live.up(kubernetesVersion=TARGET)
    assert set(result.summary.resource_changes) == {"same"}, json.dumps(result.summary.resource_changes)
    assert live.kubectl.json("version")["serverVersion"]["gitVersion"] == TARGET
