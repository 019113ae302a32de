"""The topologies the shared HA cluster does not cover, on one small cluster of their own: a single API
server without a load balancer (clients talk to the master), etcd on a machine of its own, the VXLAN pod
network, and the libvirt backend: a third worker, added last, is a VM under qemu's emulator (TCG: KVM does not
work here) booted from the disk made offline, beside the local machines the cluster starts with. Brought up by
the same program `pulumi up` runs, with the add-ons and no samples.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime

import pytest
import yaml

from infra import playbook
from infra.machines import vm
from conftest import live_cluster, server_and_client, cluster_network

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

NETWORK = cluster_network("phsmall", offset=1)
# Every machine is local but the third worker, which `pulumi up` makes only when the test adds it: under TCG a
# VM takes minutes where a local machine takes seconds, so one VM, configured once, keeps the suite's time.
VM_WORKER = f"{NETWORK['clusterName']}-worker-3"
CONFIG = {**NETWORK, "ha": False, "masters": 1, "lbs": 0, "etcdNodes": 1, "workers": 2, "podNetwork": "vxlan",
          "backend": "libvirt", "libvirtMachines": VM_WORKER, "libvirtAccel": "tcg"}


@pytest.fixture(scope="module")
def small(tmp_path_factory, libvirt_daemons):
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


def test_a_vm_added_as_a_worker_boots_its_own_kernel_and_becomes_a_ready_node(small):
    small.up(workers=3)
    spec = small.spec
    worker = spec.workers[-1]
    assert worker.name == VM_WORKER and spec.libvirt.is_vm(worker)
    assert not any(spec.libvirt.is_vm(m) for m in spec.machines if m != worker)
    assert vm.domain_state(spec.libvirt.uri, worker.name) == "running"
    assert "<domain type='qemu'>" in (vm.machine_dir(worker.name) / "domain.xml").read_text()  # TCG
    # Only the new worker got the node roles (scale.yml), as for a local one.
    log = (playbook.cluster_dir(spec.name) / "logs" / "ansible.log").read_text()
    assert "PLAY [Nodes being added]" in log and "PLAY [Control plane" not in log
    # The VM runs the Debian kernel pinned in lock.yaml, not this host's, which the local machines share.
    kernel = small.ssh(worker.name, "uname -r").stdout.strip()
    assert kernel.endswith("-amd64") and kernel != os.uname().release
    assert small.ssh(spec.masters[0].name, "uname -r").stdout.strip() == os.uname().release
    node = small.kubectl.json("get", "node", worker.name)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert node["status"]["nodeInfo"]["kernelVersion"] == kernel
    # A pod on the VM answers a pod on a local machine over VXLAN, across the two kernels.
    ip = server_and_client(small, "vm", worker.name, spec.workers[0].name, "hello-from-a-vm")
    got = small.kubectl.run("-n", "vm", "exec", "client", "--", "sh", "-c",
                            f"timeout 10 wget -qO- http://{ip}:8080/").strip()
    assert got == "hello-from-a-vm"
    # Figures for the record: the VM's boot, and its node's Ready time counted from that boot.
    boot = small.ssh(worker.name, "systemd-analyze time | head -1; stat -c %Y /proc/1").stdout.splitlines()
    ready_at = datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00")).timestamp()
    print(f"\n{worker.name}: {boot[0]}; node Ready {ready_at - int(boot[1]):.0f}s after the VM booted")
