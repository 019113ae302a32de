"""Cluster health as an operator reads it: machines, the services on each, etcd members, lease holders, nodes."""
from __future__ import annotations

import io
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from infra import certs, known_hosts as known_hosts_mod
from infra.kube import Kubectl
from infra.machines import keys, remote
from infra.spec_model import SshAccess

# The systemd units each role runs (roles/*/templates); keepalived only exists with 2+ LBs.
SERVICES = {
    "lb": ["haproxy"],
    "etcd": ["etcd"],
    "master": ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet", "kube-proxy"],
    "worker": ["containerd", "kubelet", "kube-proxy"],
}


@dataclass
class Report:
    machines: list[dict]  # name, roles, address, services: {unit: state}
    etcd_members: list[dict] = field(default_factory=list)  # endpoint, leader, version
    leases: dict[str, str] = field(default_factory=dict)  # lease -> holder
    nodes: dict[str, bool] = field(default_factory=dict)  # node -> Ready
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # not broken yet: certificates close to expiry

    @property
    def healthy(self) -> bool:
        return not self.problems


def _ssh(machine: dict, key: str, command: str, timeout: float = 20, known_hosts: str = "") -> str:
    """Run `command` on a machine: with the stack's generated key, or as its backend says to log in (a user's
    own key file, user or jump host on backend existing). The host key is checked: the machine's pinned key
    (local backend), else the one recorded in the cluster's `known_hosts` file."""
    if machine.get("ssh_key_file"):
        access = SshAccess(machine["ssh_user"], machine["ssh_key_file"], machine.get("jump_host", ""))
        host = remote.Host(machine["name"], machine.get("ssh_address", machine["address"]), (), access, known_hosts)
        sudo = [] if access.user == "root" else ["sudo", "-n"]
        proc = subprocess.run([*remote.ssh_args(host), *sudo, command], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode == 255:
            raise OSError(proc.stderr.strip())
        return proc.stdout
    address = machine["address"]
    client = paramiko.SSHClient()
    if machine.get("ssh_host_key"):
        pinned = keys.host_key_from_line(machine["ssh_host_key"])
        client.get_host_keys().add(address, pinned.get_name(), pinned)
    elif known_hosts and Path(known_hosts).exists():
        client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(address, username="root", pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(key)),
                   timeout=timeout, allow_agent=False, look_for_keys=False)
    try:
        _, out, _ = client.exec_command(command, timeout=timeout)
        return out.read().decode()
    finally:
        client.close()


def _services(machine: dict, key: str, known_hosts: str) -> dict[str, str]:
    units = sorted({u for role in machine["roles"] for u in SERVICES.get(role, [])})
    try:
        states = _ssh(machine, key, "systemctl is-active " + " ".join(units), known_hosts=known_hosts).split()
    except (OSError, subprocess.SubprocessError, paramiko.SSHException) as exc:
        return {u: f"unreachable ({exc.__class__.__name__})" for u in units}
    return dict(zip(units, states))


def collect(machines: list[dict], ssh_key: str, kubeconfig: str) -> Report:
    """The report; `kubeconfig` is the admin kubeconfig's path (its server is the load balancer), in the cluster
    directory beside the PKI whose certificates are checked for expiry."""
    # An operator wants the answer fast: each request gives up after 10 s, each command after 30 s.
    kube = Kubectl(kubeconfig, timeout=30)
    known_hosts = str(Path(kubeconfig).parent / known_hosts_mod.FILE_NAME)
    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(lambda m: _services(m, ssh_key, known_hosts), machines))
    report = Report([{**m, "services": s} for m, s in zip(machines, states)])
    for m in report.machines:
        report.problems += [f"{m['name']}: {u} is {s}" for u, s in m["services"].items() if s != "active"]
    etcd_hosts = [m for m in machines if "etcd" in m["roles"]]
    try:
        raw = _ssh(etcd_hosts[0], ssh_key, "etcdctl-pilothouse endpoint status --cluster -w json",
                   known_hosts=known_hosts)
        for member in json.loads(raw):
            status = member["Status"]
            report.etcd_members.append({"endpoint": member["Endpoint"], "version": status["version"],
                                        "leader": status["leader"] == status["header"]["member_id"]})
        if sum(m["leader"] for m in report.etcd_members) != 1:
            report.problems.append("etcd: no single leader")
        if len(report.etcd_members) != len(etcd_hosts):
            report.problems.append(f"etcd: {len(report.etcd_members)} members answer, {len(etcd_hosts)} expected")
    except (OSError, ValueError, KeyError, IndexError, paramiko.SSHException) as exc:
        report.problems.append(f"etcd: status unavailable ({exc})")
    try:
        for lease in ("kube-controller-manager", "kube-scheduler"):
            holder = kube.json("--request-timeout=10s", "-n", "kube-system", "get", "lease", lease)
            report.leases[lease] = holder["spec"].get("holderIdentity", "").split("_")[0]
            if not report.leases[lease]:
                report.problems.append(f"lease {lease} has no holder")
        for node in kube.json("--request-timeout=10s", "get", "nodes")["items"]:
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
            report.nodes[node["metadata"]["name"]] = ready
        kubelets = {m["name"] for m in machines if {"master", "worker"} & set(m["roles"])}
        report.problems += [f"node {n} is not Ready" for n in sorted(kubelets) if not report.nodes.get(n)]
    except (subprocess.SubprocessError, ValueError, KeyError) as exc:   # KubectlError, TimeoutExpired
        report.problems.append(f"API server (through the load balancer) does not answer: {exc}")
    certificates = certs.scan(Path(kubeconfig).parent / "pki")
    report.warnings += certs.warnings(certificates)
    report.problems += [f"certificate {c.path.name} has expired" for c in certificates if c.days_left() < 0]
    return report


def render(report: Report) -> str:
    lines = [f"{'MACHINE':<26} {'ROLES':<16} {'ADDRESS':<14} SERVICES"]
    for m in report.machines:
        services = " ".join(f"{u}={'ok' if s == 'active' else s}" for u, s in m["services"].items())
        lines.append(f"{m['name']:<26} {','.join(m['roles']):<16} {m['address']:<14} {services}")
    lines.append("")
    for member in report.etcd_members:
        lines.append(f"etcd {member['endpoint']:<28} v{member['version']}{'  (leader)' if member['leader'] else ''}")
    for lease, holder in report.leases.items():
        lines.append(f"lease {lease:<26} held by {holder}")
    ready = sum(report.nodes.values())
    lines.append(f"nodes Ready: {ready}/{len(report.nodes)}")
    lines += [f"WARNING: {w}" for w in report.warnings]
    lines.append("healthy" if report.healthy else "UNHEALTHY:\n  " + "\n  ".join(report.problems))
    return "\n".join(lines)
