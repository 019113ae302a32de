"""Backend existing, live: six machines booted by this test with infra.machines.local, outside any stack, stand
in for a user's servers. Bad input is refused before any host changes; then `pulumi up` with backend existing
brings the default HA topology (1 LB, 3 masters with stacked etcd, 2 workers; the workers reached through the
LB as jump host) up with the add-ons and no samples; `pulumi destroy` resets the hosts (nothing the roles
installed is left) and they still answer SSH; then the test stops its machines.

Timings (bring-up, destroy) are printed; run with -s to see them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from pulumi import automation as auto

from conftest import cluster_network, live_cluster
from infra import kube, playbook, status
from infra.machines import host as machine_host
from infra.machines import keys, local, remote

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

NETWORK = cluster_network("phbyo", offset=2)
CLUSTER, CIDR = NETWORK["clusterName"], NETWORK["machineCidr"]
PREFIX = CIDR.rsplit(".", 2)[0]  # 10.<n>
BRIDGE = local.bridge_name(CLUSTER)
# name -> (address, roles): the default HA topology.
HOSTS = {"lb": (f"{PREFIX}.0.10", "lb"), "m1": (f"{PREFIX}.0.20", "master,etcd"),
         "m2": (f"{PREFIX}.0.21", "master,etcd"), "m3": (f"{PREFIX}.0.22", "master,etcd"),
         "w1": (f"{PREFIX}.0.40", "worker"), "w2": (f"{PREFIX}.0.41", "worker")}
# Written on the hosts by things other than the roles (journald, ssh logins, Ansible's temp dir), or by the
# kernel's own view of the machine; the reset is not expected to undo them. The `-` files are the copies of the
# user and group databases that useradd and userdel keep of the version before their change (the etcd user).
UNTRACKED = ("var/log/", "var/lib/systemd/", "root/.ansible", "tmp/", "var/tmp/", "root/.cache", "etc/.pwd.lock",
             "var/cache/", "etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-")


def machine_name(short: str) -> str:
    return f"{CLUSTER}-{short}"


def host_lines(key: Path) -> list[str]:
    lines = []
    for short, (address, roles) in HOSTS.items():
        line = f"{machine_name(short)} address={address} roles={roles}"
        if roles == "worker":
            line += f" jump=root@{HOSTS['lb'][0]}"  # reached through the LB, as through a bastion
        lines.append(line)
    return lines


def _entry(path: Path) -> str:
    """A path's state as the machine sees it: a file's digest, a link's target, a directory, or absent."""
    if path.is_symlink():
        return "-> " + os.readlink(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        return "dir"
    return "absent" if not path.exists() or path.stat().st_rdev == 0 else "special"  # 0/0: an overlay whiteout


def upper_state(name: str) -> dict[str, str]:
    """Every path the machine's own overlay layer changed against the shared base image, with its state, leaving
    out UNTRACKED. A path put back as the base has it (a restored file) counts as unchanged."""
    directory = local.machine_dir(name)
    upper = directory / "upper"
    base = Path(json.loads((directory / "spec.json").read_text())["base"])
    state = {}
    for path in upper.rglob("*"):
        rel = str(path.relative_to(upper))
        if (rel + "/").startswith(UNTRACKED) or rel.startswith(UNTRACKED):
            continue
        here, below = _entry(path), _entry(base / rel)
        if here != below:
            state[rel] = here
    return state


def ssh(short: str, key: Path, command: str) -> subprocess.CompletedProcess:
    address = HOSTS[short][0]
    return subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{address}", command],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    """The user's servers: booted here, not by any stack, with their state right after boot."""
    if os.geteuid() != 0:
        pytest.skip("local machines need root")
    workdir = tmp_path_factory.mktemp("byo")
    pair = keys.generate_ed25519("pilothouse-byo-test")
    key = workdir / "id_ed25519"
    key.write_text(pair.private_key)
    key.chmod(0o600)
    names = [machine_name(s) for s in HOSTS]
    try:
        for short, (address, _) in HOSTS.items():
            local.create(local.MachineSpec(machine_name(short), address, 24, BRIDGE, pair.public_key), pair.private_key)
        yield {"key": key, "workdir": workdir, "pristine": {n: upper_state(n) for n in names}}
    finally:
        for name in names:
            local.destroy(name)
    left = [n for n in names if local.status(n) != "absent"]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not left and f" {BRIDGE}:" not in links, f"the test's machines or bridge remain: {left}"


def workdir(machines, name: str) -> Path:
    path = machines["workdir"] / name
    path.mkdir()
    return path


def config(key: Path, hosts: list[str]) -> dict:
    return {**NETWORK, "backend": "existing", "sshKeyPath": str(key), "hosts": hosts}


def changed_hosts(machines) -> dict[str, list[str]]:
    """Per machine, the paths whose state differs from right after boot."""
    found = {}
    for name, before in machines["pristine"].items():
        after = upper_state(name)
        diff = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        if diff:
            found[name] = diff
    return found


def test_bad_hosts_are_refused_one_line_each_before_any_host_changes(machines):
    key: Path = machines["key"]
    wrong = machines["workdir"] / "wrong_key"
    wrong.write_text(keys.generate_ed25519("wrong").private_key)
    wrong.chmod(0o600)
    lines = host_lines(key)
    lines[1] += f" key={wrong}"  # m1: a key the host does not know
    lines[5] = f"{machine_name('w2')} address={PREFIX}.0.45 roles=worker"  # nothing answers there
    # m2 gets less memory than a master needs: its cgroup limit is what it really has.
    limit = machine_host.CGROUP_ROOT / "memory" / f"pm-{machine_name('m2')}" / "memory.limit_in_bytes"
    limit.write_text(str(1024 << 20))
    started = time.monotonic()
    try:
        with pytest.raises(auto.errors.CommandError) as caught:
            with live_cluster("byo-bad", config(key, lines), workdir(machines, "bad")):
                pass
    finally:
        limit.write_text("-1")
    seconds = time.monotonic() - started
    message = str(caught.value)
    problems = sorted({line.strip() for line in message.splitlines() if line.strip().startswith("- host ")})
    print(f"\nrefused in {seconds:.0f}s (up + destroy of an empty stack):\n" + "\n".join(problems))
    assert "3 problem(s) with the hosts; no host was changed" in message
    assert len(problems) == 3, problems
    m1, m2, w2 = problems
    assert m1.startswith(f"- host {machine_name('m1')} (root@{HOSTS['m1'][0]}): SSH refused the key {wrong}")
    assert m2 == (f"- host {machine_name('m2')} ({HOSTS['m2'][0]}): has 1024 MiB of memory; a master/etcd host "
                  "needs at least 1700 MiB: give it more memory or another role")
    assert w2.startswith(f"- host {machine_name('w2')} (root@{PREFIX}.0.45)") and "unreachable over SSH" in w2
    assert changed_hosts(machines) == {}


@pytest.fixture(scope="module")
def cluster(machines):
    """The default HA topology on the test's machines through `pulumi up`; closing `teardown` destroys it."""
    teardown = contextlib.ExitStack()
    started = time.monotonic()
    live = teardown.enter_context(live_cluster("byo", config(machines["key"], host_lines(machines["key"])),
                                               workdir(machines, "up")))
    print(f"\nbackend existing: pulumi up (6 hosts, add-ons, no samples) took {time.monotonic() - started:.0f}s")
    with teardown:
        yield live, teardown


def test_the_default_ha_topology_comes_up_healthy_on_hosts_the_stack_did_not_create(cluster, machines):
    live, _ = cluster
    kubectl = kube.Kubectl(live.kubeconfig)
    server = kubectl.run("config", "view", "-o", "jsonpath={.clusters[0].cluster.server}")
    assert server == f"https://{HOSTS['lb'][0]}:6443"  # the API through the load balancer
    assert kubectl.run("get", "--raw", "/readyz") == "ok"
    nodes = kubectl.json("get", "nodes")["items"]
    ready = {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in n["status"]["conditions"]) for n in nodes}
    assert ready == {machine_name(s): True for s in ("m1", "m2", "m3", "w1", "w2")}
    members = ssh("m1", machines["key"], "etcdctl-pilothouse member list -w simple")
    assert len(members.stdout.strip().splitlines()) == 3, members.stdout + members.stderr
    # `invoke status`'s report, logging in as the machines output says (the user's key; workers via the LB).
    report = status.collect(live.outputs["machines"], live.outputs["ssh_private_key"], live.kubeconfig)
    assert report.healthy and len(report.etcd_members) == 3, status.render(report)
    assert live.outputs["ingress_address"]  # Traefik got a MetalLB address: add-on images came through the mirror
    # The stack made no machine: its resources are a check and one claim per host.
    types = {r["type"] for r in live.stack.export_stack().deployment["resources"]}
    assert not [t for t in types if "LocalMachine" in t]


def test_a_second_up_changes_nothing(cluster):
    live, _ = cluster
    assert set(live.stack.preview().change_summary) == {"same"}


def test_destroy_resets_every_host_and_leaves_it_reachable(cluster, machines):
    _, teardown = cluster
    started = time.monotonic()
    teardown.close()  # `pulumi destroy`, then conftest's check that the cluster directory is gone
    print(f"\nbackend existing: pulumi destroy (reset of 6 hosts) took {time.monotonic() - started:.0f}s")
    key = machines["key"]
    for short in HOSTS:
        name = machine_name(short)
        assert local.status(name) == "running", f"{name} was stopped: destroy must leave the machine alone"
        left = ssh(short, key, "ps -eo comm= | grep -E '^(kube|etcd|containerd|haproxy|keepalived)' ; "
                               "iptables-save | grep -cE '(KUBE|CNI)-' ; ip -o link show | grep -cE 'cni0|ph-vxlan|veth'; "
                               f"ls -A {remote.STATE_DIR} 2>/dev/null | wc -l")
        assert left.returncode == 0 or left.stdout, f"{name}: ssh failed after the reset: {left.stderr}"
        assert left.stdout.split() == ["0", "0", "0"], f"{name}: processes, chains, links or state left:\n{left.stdout}"
        assert not any((local.machine_dir(name) / "containerd").iterdir()), f"{name}: /var/lib/containerd not emptied"
    left = changed_hosts(machines)
    assert left == {}, f"left on the hosts by the cluster: {json.dumps(left, indent=1)}"
    assert not playbook.cluster_dir(CLUSTER).exists()
