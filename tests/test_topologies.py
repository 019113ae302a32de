"""The topologies the shared HA cluster does not cover, on one small cluster of their own: a single API
server without a load balancer (clients talk to the master), etcd on a machine of its own, and the VXLAN
pod network. Brought up by the same program `pulumi up` runs, with the add-ons and no samples.
"""
from __future__ import annotations

import json
import time

import pytest
import yaml

from infra import playbook
from conftest import live_cluster, server_and_client, cluster_network

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

CONFIG = {**cluster_network("phsmall", offset=1), "ha": False, "masters": 1, "lbs": 0,
          "etcdNodes": 1, "workers": 2, "podNetwork": "vxlan"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    with live_cluster("small", dict(CONFIG), tmp_path_factory.mktemp("small")) as live:
        yield live


def test_clients_reach_the_single_api_server_directly_and_every_node_is_ready(small):
    spec = small.spec
    assert not spec.lbs
    server = yaml.safe_load(open(small.kubeconfig))["clusters"][0]["cluster"]["server"]
    assert server == f"https://{spec.masters[0].address}:6443"
    nodes = small.kubectl.json("get", "nodes")["items"]
    ready = {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in n["status"]["conditions"]) for n in nodes}
    assert ready == {m.name: True for m in spec.nodes}


def test_etcd_runs_on_its_own_machine_and_not_on_the_master(small):
    spec = small.spec
    member = spec.etcd[0]
    assert "master" not in member.roles
    health = small.ssh(member.name, "etcdctl-pilothouse endpoint health")
    assert "is healthy" in health.stdout + health.stderr
    master = spec.masters[0].name
    assert small.ssh(master, "systemctl is-active etcd", check=False).stdout.strip() != "active"


def test_pods_on_different_nodes_talk_over_the_vxlan_network(small):
    server, client = small.spec.workers[0], small.spec.workers[1]
    kubectl = small.kubectl.run
    ip = server_and_client(small, "vx", server.name, client.name, "hello-over-vxlan")
    assert ip.rsplit(".", 1)[0] == server.pod_subnet.rsplit(".", 1)[0], f"{ip} is not in {server.pod_subnet}"
    # The route to the server's pod subnet leaves the client's node through a VXLAN device, not the wire.
    route = small.ssh(client.name, f"ip -j route get {ip}").stdout
    device = json.loads(route)[0]["dev"]
    kind = json.loads(small.ssh(client.name, f"ip -j -d link show {device}").stdout)[0]["linkinfo"]["info_kind"]
    assert kind == "vxlan", f"{ip} is routed via {device} ({kind}), not a vxlan device"
    deadline = time.monotonic() + 30
    while True:
        got = kubectl("-n", "vx", "exec", "client", "--", "sh", "-c", f"timeout 10 wget -qO- http://{ip}:8080/",
                      check=False).strip()
        if got == "hello-over-vxlan" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert got == "hello-over-vxlan"
    # Cluster DNS answers across nodes too (CoreDNS's pods sit wherever the scheduler put them).
    assert "10.96.0.1" in kubectl("-n", "vx", "exec", "client", "--", "nslookup", "kubernetes.default.svc.cluster.local")


def test_a_second_playbook_run_changes_nothing(small):
    spec = small.spec
    workdir = playbook.cluster_dir(spec.name)
    result = playbook.run_playbook(json.loads(small.outputs["inventory"]), json.loads(small.outputs["playbook_vars"]),
                                   small.outputs["ssh_private_key"], workdir / "logs")
    assert result.changed == 0, f"changed={result.changed}; see {result.log}"
