"""The cluster spec's data: its config keys, the objects it is made of, and the address layout.

Machine addresses are fixed by role inside the machine CIDR, so a machine keeps its address across runs
and backends: .1 is the host (bridge or gateway), load balancers .10-.19, masters .20-.29, external etcd
members .30-.39, workers .40-.199, and .200-.220 are MetalLB's LoadBalancer addresses; so the machine CIDR
is a /24 or larger.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from infra import yamlload

LOCK = Path(__file__).parent / "artifacts" / "lock.yaml"
BACKENDS = ("local", "existing", "libvirt", "aws")
POD_NETWORKS = ("routed", "vxlan")
# Raft needs a majority: an odd count gains a tolerated failure per two members; past 7 writes slow down.
ETCD_SIZES = (1, 3, 5, 7)
API_PORT = 6443
# Each kubelet node gets a /24 of the pod CIDR (the controller-manager's --node-cidr-mask-size).
NODE_POD_PREFIX = 24
# kube-apiserver refuses an IPv4 service range larger than a /12 (2^20 addresses).
MAX_SERVICE_PREFIX = 12
MIN_SERVICE_PREFIX = 24
# Offsets of the first and last address MetalLB may hand out; workers must stay below the first.
LB_RANGE = (200, 220)
# Offset of the first address of each role in the machine CIDR, and how many addresses it may use.
LAYOUT = {"lb": (10, 10), "master": (20, 10), "etcd": (30, 10), "worker": (40, LB_RANGE[0] - 40)}
# Each node's /NODE_POD_PREFIX of podCidr, by slot like its address: masters the first LAYOUT["master"] slots,
# workers the ones after. A node keeps its subnet when the count of the other role changes (masters 3 -> 5 must
# not move a worker's pods to another subnet).
POD_SLOTS = {"master": 0, "worker": LAYOUT["master"][1]}
# The count key and the plural of each role, for messages.
ROLE_KEYS = {"lb": "lbs", "master": "masters", "etcd": "etcdNodes", "worker": "workers"}
ROLE_NAMES = {"lb": "load balancers", "master": "masters", "etcd": "external etcd members", "worker": "workers"}
# The layout reaches .220, so the machine network must hold 256 addresses.
MIN_MACHINE_PREFIX = 24
# Longest hostname label (RFC 1123); the local backend allows fewer (local_name_limit()).
MAX_NAME = 63
# Private ranges: public addresses used inside the cluster would shadow the real hosts that own them
# (and the machine network is routed to the host's bridge).
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
# Ranges that cannot carry unicast traffic between hosts at all, allowPublicCidrs or not.
NEVER_NETWORKS = {
    ipaddress.ip_network("0.0.0.0/8"): "'this network' (0.0.0.0/8)",
    ipaddress.ip_network("127.0.0.0/8"): "loopback (127.0.0.0/8)",
    ipaddress.ip_network("169.254.0.0/16"): "link-local (169.254.0.0/16)",
    ipaddress.ip_network("224.0.0.0/4"): "multicast (224.0.0.0/4)",
    ipaddress.ip_network("240.0.0.0/4"): "reserved (240.0.0.0/4)",
}
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The keys that describe backend existing's hosts (infra/spec_hosts.py reads them).
EXISTING_KEYS = ("hosts", "sshUser", "sshKeyPath", "jumpHost")


@dataclass(frozen=True)
class Key:
    """One stack config key: Pulumi.yaml declares the same type, default and description (tested)."""

    type: type
    default: bool | int | str | list
    description: str


KEYS: dict[str, Key] = {
    "clusterName": Key(str, "pilothouse", "Cluster name; prefixes every machine name (a DNS-1123 label)."),
    "backend": Key(
        str, "local", "Where machines run: local (systemd-nspawn on this host), existing (hosts you list), libvirt or aws."
    ),
    "ha": Key(bool, True, "Highly available control plane: 2+ API servers behind a load balancer, 3+ etcd."),
    "masters": Key(
        int, 3, "Control-plane machines (API server, controller-manager, scheduler; etcd if stacked)."
    ),
    "workers": Key(int, 2, "Worker machines; masters are tainted, so workloads run here."),
    "lbs": Key(
        int, 1, "Load balancers (haproxy) in front of the API servers; 2 or more share a keepalived vip."
    ),
    "etcdNodes": Key(int, 0, "External etcd members; 0 runs etcd stacked on every master."),
    "etcdBackupSchedule": Key(
        str, "", "Verified etcd snapshots on every member on this systemd OnCalendar schedule (e.g. hourly); empty: none."
    ),
    "etcdBackupRetention": Key(int, 5, "How many scheduled snapshots each etcd member keeps (the newest)."),
    "vip": Key(str, "", "Virtual API address held by keepalived; required with 2+ lbs, inside machineCidr."),
    "kubernetesVersion": Key(
        str, "", "Kubernetes version; empty means the default pinned in infra/artifacts/lock.yaml. Another release "
        "pinned there (kubernetes_releases) upgrades a running cluster, one minor release at a time, never down."
    ),
    "machineCidr": Key(
        str, "10.77.0.0/24", "Network the machines live on, a /24 or larger; .1 is the host."
    ),
    "podCidr": Key(str, "10.244.0.0/16", "Pod addresses; each node gets a /24 of it."),
    "serviceCidr": Key(str, "10.96.0.0/12", "ClusterIP Service addresses; the 10th is the cluster DNS."),
    "allowPublicCidrs": Key(
        bool, False, "Accept machine, pod and service CIDRs outside RFC 1918 and 100.64.0.0/10 (you own them)."
    ),
    "podNetwork": Key(str, "routed", "How pod traffic crosses nodes: routed (static routes) or vxlan."),
    "masterName": Key(str, "master", "Name part of master machines: <clusterName>-<masterName>-<n>."),
    "workerName": Key(str, "worker", "Name part of worker machines."),
    "lbName": Key(str, "lb", "Name part of load balancer machines."),
    "etcdName": Key(str, "etcd", "Name part of external etcd machines."),
    "operatorCidr": Key(
        str, "", "aws: addresses allowed to reach SSH, the API and NodePorts (e.g. your IP/32)."
    ),
    "awsInstanceType": Key(str, "t3.medium", "aws: EC2 instance type of every machine."),
    "hosts": Key(
        list, [], "existing: one line per host: '<name> address=<ip> roles=<lb|master,etcd|master|etcd|worker> "
        "[user=<ssh user>] [key=<private key path>] [jump=<[user@]host[:port]>]'."
    ),
    "sshUser": Key(str, "root", "existing: SSH user of hosts without user=; other than root it needs passwordless sudo."),
    "sshKeyPath": Key(str, "", "existing: SSH private key file of hosts without key= (e.g. ~/.ssh/id_ed25519)."),
    "jumpHost": Key(str, "", "existing: [user@]host[:port] that hosts without jump= are reached through; empty: directly."),
    "libvirtUri": Key(str, "qemu:///system", "libvirt: URI of this host's hypervisor (the VMs join its bridge): qemu:///system."),
    "libvirtPool": Key(str, "default", "libvirt: `dir` storage pool holding the VMs' disks (`default` is made if missing)."),
    "libvirtMachines": Key(
        str, "lb,master,etcd,worker",
        "libvirt: the machines that are VMs, by role or by name; the others are local machines on the same bridge.",
    ),
    "libvirtAccel": Key(str, "kvm", "libvirt: kvm (hardware virtualisation) or tcg (qemu's emulator, slow)."),
}


class SpecError(ValueError):
    """The stack config describes a cluster that cannot work; `problems` lists every reason with its fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the cluster spec has {len(problems)} problem(s); nothing was created:\n{lines}")


@dataclass(frozen=True)
class Machine:
    name: str
    roles: tuple[str, ...]  # of "lb", "etcd", "master", "worker"
    address: str
    pod_subnet: str | None  # only machines running a kubelet (masters and workers)


@dataclass(frozen=True)
class SshAccess:
    """How Ansible and the host checks log into a machine the stack did not create (backend existing)."""

    user: str
    key_path: str  # private key file on this host, ~ expanded
    jump_host: str  # "" (direct) or [user@]host[:port]


@dataclass(frozen=True)
class AwsOptions:
    operator_cidr: str
    instance_type: str


@dataclass(frozen=True)
class LibvirtOptions:
    uri: str
    pool: str
    machines: tuple[str, ...]  # roles and machine names: the machines they select are VMs, the rest local
    accel: str

    def is_vm(self, machine: "Machine") -> bool:
        return machine.name in self.machines or any(r in self.machines for r in machine.roles)


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    backend: str
    ha: bool
    kubernetes_version: str
    machine_cidr: ipaddress.IPv4Network
    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    pod_network: str
    vip: str | None
    machines: tuple[Machine, ...]
    aws: AwsOptions
    libvirt: LibvirtOptions
    # Backend existing: each host's SSH access, in machine order; empty for the backends that make machines.
    ssh_access: tuple[tuple[str, SshAccess], ...] = ()
    # Scheduled snapshots on every etcd member (systemd OnCalendar; "" for none) and how many each keeps.
    etcd_backup_schedule: str = ""
    etcd_backup_retention: int = 5

    def access(self, name: str) -> SshAccess | None:
        return dict(self.ssh_access).get(name)

    def with_role(self, role: str) -> tuple[Machine, ...]:
        return tuple(m for m in self.machines if role in m.roles)

    @property
    def masters(self) -> tuple[Machine, ...]:
        return self.with_role("master")

    @property
    def workers(self) -> tuple[Machine, ...]:
        return self.with_role("worker")

    @property
    def lbs(self) -> tuple[Machine, ...]:
        return self.with_role("lb")

    @property
    def etcd(self) -> tuple[Machine, ...]:
        return self.with_role("etcd")

    @property
    def stacked_etcd(self) -> bool:
        return all("master" in m.roles for m in self.etcd)

    @property
    def nodes(self) -> tuple[Machine, ...]:
        """Machines running a kubelet."""
        return tuple(m for m in self.machines if m.pod_subnet is not None)

    @property
    def host_address(self) -> str:
        return str(self.machine_cidr[1])

    @property
    def first_service_ip(self) -> str:
        """The `kubernetes` Service's ClusterIP; the API server certificate must name it."""
        return str(self.service_cidr[1])

    @property
    def cluster_dns(self) -> str:
        return str(self.service_cidr[10])

    @property
    def api_address(self) -> str:
        """Where clients reach the API: the vip, else the only LB, else (no LB, no HA) the only master."""
        if self.vip:
            return self.vip
        return (self.lbs or self.masters)[0].address

    @property
    def lb_address_range(self) -> str:
        """Addresses MetalLB hands to LoadBalancer Services: .200-.220 of the machine network, above every
        machine (the spec refuses a machine network too small to hold them)."""
        return f"{self.machine_cidr[LB_RANGE[0]]}-{self.machine_cidr[LB_RANGE[1]]}"


def known_kubernetes_versions(lock: Path = LOCK) -> tuple[str, ...]:
    pinned = yamlload.load(lock.read_text())
    return (pinned["go"]["kubernetes"]["version"], *(pinned.get("kubernetes_releases") or {}))


def pod_subnet(pod: ipaddress.IPv4Network | None, slot: int | None) -> str | None:
    """The node pod subnet in `slot` of `pod` (POD_SLOTS); None without a usable pod CIDR, a slot, or room for the
    slot (the pod CIDR checks report those)."""
    if pod is None or slot is None or pod.prefixlen > NODE_POD_PREFIX:
        return None
    if slot >= 2 ** (NODE_POD_PREFIX - pod.prefixlen):
        return None
    size = 2 ** (32 - NODE_POD_PREFIX)
    return str(ipaddress.ip_network((int(pod.network_address) + slot * size, NODE_POD_PREFIX)))
