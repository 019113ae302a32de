"""The cluster spec: one typed, validated description of the cluster, built from the stack config.

Everything downstream (machine backends, the Ansible inventory, the workloads) reads this object and
nothing else, so every check lives here and runs before any resource is created. `from_config` takes a
plain dict (the `pilothouse:*` keys without their namespace) so it can be tested without Pulumi.

Machine addresses are fixed by role inside the machine CIDR, so a machine keeps its address across runs
and backends: .1 is the host (bridge or gateway), load balancers .10-.19, masters .20-.29, external etcd
members .30-.39, workers .40-.199, and .200-.220 are MetalLB's LoadBalancer addresses; so the machine CIDR
is a /24 or larger. The machine, pod and service CIDRs are private (RFC 1918 or 100.64.0.0/10) unless
allowPublicCidrs says otherwise.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

LOCK = Path(__file__).parent / "artifacts" / "lock.yaml"
BACKENDS = ("local", "libvirt", "aws")
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


@dataclass(frozen=True)
class Key:
    """One stack config key: Pulumi.yaml declares the same type, default and description (tested)."""

    type: type
    default: bool | int | str
    description: str


KEYS: dict[str, Key] = {
    "clusterName": Key(str, "pilothouse", "Cluster name; prefixes every machine name (a DNS-1123 label)."),
    "backend": Key(str, "local", "Where machines run: local (systemd-nspawn on this host), libvirt or aws."),
    "ha": Key(bool, True, "Highly available control plane: 2+ API servers behind a load balancer, 3+ etcd."),
    "masters": Key(
        int, 3, "Control-plane machines (API server, controller-manager, scheduler; etcd if stacked)."
    ),
    "workers": Key(int, 2, "Worker machines; masters are tainted, so workloads run here."),
    "lbs": Key(
        int, 1, "Load balancers (haproxy) in front of the API servers; 2 or more share a keepalived vip."
    ),
    "etcdNodes": Key(int, 0, "External etcd members; 0 runs etcd stacked on every master."),
    "vip": Key(str, "", "Virtual API address held by keepalived; required with 2+ lbs, inside machineCidr."),
    "kubernetesVersion": Key(
        str, "", "Kubernetes version; empty means the one pinned in infra/artifacts/lock.yaml."
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
    "libvirtUri": Key(str, "qemu:///system", "libvirt: connection URI of the hypervisor."),
    "libvirtPool": Key(str, "default", "libvirt: storage pool for the machines' disks."),
    "libvirtImage": Key(
        str,
        "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
        "libvirt: Debian cloud image (URL or path) every machine's disk is cloned from.",
    ),
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
class AwsOptions:
    operator_cidr: str
    instance_type: str


@dataclass(frozen=True)
class LibvirtOptions:
    uri: str
    pool: str
    image: str


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
    # libyaml's loader when present: the pure-Python one takes ~70 ms on the lock file, per spec built.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    version = yaml.load(lock.read_text(), Loader=loader)["go"]["kubernetes"]["version"]
    return (version,) if isinstance(version, str) else tuple(version)


def from_pulumi_config() -> ClusterSpec:
    """Build the spec from the `pilothouse` namespace of the running Pulumi program's stack config."""
    import pulumi  # only here, so the rest of this module is usable without a Pulumi engine
    from pulumi.runtime import config as runtime_config

    config = pulumi.Config("pilothouse")
    raw: dict[str, object] = {key: config.get(key) for key in KEYS}
    # Pulumi type-checks the keys Pulumi.yaml declares but passes undeclared ones through silently, so a
    # misspelt key would be ignored; the runtime's config holds every stack key, and _typed reports strays.
    for full in {*runtime_config.get_config_env(), *runtime_config.CONFIG.get()}:
        namespace, _, key = full.partition(":")
        if namespace == "pilothouse" and key not in KEYS:
            raw[key] = runtime_config.get_config(full)
    return from_stack_config(raw)


def from_stack_config(values: Mapping[str, object]) -> ClusterSpec:
    """Build the spec from a stack's config as Pulumi keeps it: the `config` block of Pulumi.<stack>.yaml,
    or the Automation API's `Stack.get_all_config()` (every value a string); keys with or without their
    `pilothouse:` namespace, other namespaces ignored. Strings are read as pulumi.Config reads them
    (get_bool, get_int), so `invoke` can check a stack before starting Pulumi and refuse exactly what the
    program would."""
    cfg: dict[str, object] = {}
    problems: list[str] = []
    for full, value in values.items():
        namespace, _, key = full.rpartition(":")
        if namespace not in ("", "pilothouse") or value is None:
            continue
        if isinstance(value, Mapping) and "secure" in value:
            continue  # encrypted in the stack file; the program checks it once Pulumi has decrypted it
        declared = KEYS.get(key)
        if declared is None or declared.type is str or not isinstance(value, str):
            cfg[key] = value  # unknown keys and wrong types are reported by _typed
            continue
        parsed = _parse(declared.type, value)
        if parsed is None:
            problems.append(
                f"pilothouse:{key} must be {_type_name(declared.type)}, not {value!r}; fix it with "
                f"`pulumi config set --type {_pulumi_type(declared.type)} pilothouse:{key} <value>`"
            )
        else:
            cfg[key] = parsed
    return _build(cfg, problems)


def _parse(t: type, text: str) -> bool | int | None:
    """A config string as pulumi.Config.get_bool / get_int read it; None when they would refuse it."""
    if t is bool:
        return {"true": True, "True": True, "false": False, "False": False}.get(text)
    try:
        return int(text)
    except ValueError:
        return None


def from_config(cfg: Mapping[str, object]) -> ClusterSpec:
    """Build the spec from a plain dict of config keys (no namespace); raises SpecError listing every problem."""
    return _build(cfg, [])


def load() -> ClusterSpec:
    """The spec of the running Pulumi program, for its entry point. A refused spec ends the program with
    its problems and nothing else: the SDK's runtimes (the language host's exec script and the Automation
    API's inline server) log a pulumi.RunError's message alone, but print any other exception with its
    traceback."""
    import pulumi

    try:
        return from_pulumi_config()
    except SpecError as exc:
        raise pulumi.RunError(str(exc)) from None


def _type_name(t: type) -> str:
    return {bool: "a boolean (true or false)", int: "a whole number", str: "a string"}[t]


def _pulumi_type(t: type) -> str:
    return {bool: "bool", int: "int", str: "string"}[t]


def _typed(cfg: Mapping[str, object], problems: list[str]) -> tuple[dict, set[str]]:
    """Values of the right type (defaults filled in) and the keys whose given value was unusable."""
    values: dict = {}
    bad: set[str] = set()
    for key in cfg:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the known keys are {', '.join(KEYS)}."
            problems.append(
                f"unknown config key pilothouse:{key}; {hint} Rename or remove it (Pulumi.yaml declares every key)"
            )
    for key, declared in KEYS.items():
        value = cfg.get(key, declared.default)
        # bool is an int in Python; a count given as true/false is a mistake, not 1/0.
        ok = isinstance(value, declared.type) and (declared.type is bool or not isinstance(value, bool))
        if not ok:
            if declared.type is bool and isinstance(value, str) and value.lower() in ("true", "false"):
                hint = f"the string {value!r} is not a boolean; write {value.lower()} without quotes"
            else:
                hint = (f"got {type(value).__name__} {value!r}; set it with "
                        f"`pulumi config set --type {_pulumi_type(declared.type)} pilothouse:{key} <value>`")
            problems.append(f"pilothouse:{key} must be {_type_name(declared.type)}: {hint}")
            bad.add(key)
        values[key] = value
    return values, bad


def _network(key: str, text: str, problems: list[str]) -> ipaddress.IPv4Network | None:
    example = KEYS[key].default or "203.0.113.7/32"
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(f"pilothouse:{key} {text!r} is not a CIDR; write it like {example}")
            return None
        problems.append(f"pilothouse:{key} {text!r} has host bits set; did you mean {loose}?")
        return None
    if net.version != 4:
        problems.append(
            f"pilothouse:{key} {text!r} is IPv6; this cluster is IPv4 only, use an IPv4 CIDR like {example}"
        )
        return None
    return net


def _check_scope(key: str, net: ipaddress.IPv4Network, allow_public: bool | None, problems: list[str]) -> None:
    """Refuse ranges that cannot carry the cluster's traffic, and public ones unless allowed (None: the
    allowPublicCidrs value itself was unusable, which is reported already)."""
    never = [what for special, what in NEVER_NETWORKS.items() if net.overlaps(special)]
    if never:
        problems.append(
            f"pilothouse:{key} {net} overlaps the {never[0]} range, which cannot be routed between machines; "
            f"use a private range such as {KEYS[key].default}"
        )
    elif allow_public is False and not any(net.subnet_of(private) for private in PRIVATE_NETWORKS):
        shadowed = {
            "machineCidr": "this host would route it to the cluster's bridge",
            "podCidr": "the cluster would route it to its pods",
            "serviceCidr": "every node would route it to the cluster's Services",
        }[key]
        problems.append(
            f"pilothouse:{key} {net} is not a private network: {shadowed} and lose the real hosts that own "
            "those addresses; use a range inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or "
            f"100.64.0.0/10 (e.g. {KEYS[key].default}), or set pilothouse:allowPublicCidrs true if you own {net}"
        )


@functools.cache
def local_name_limit() -> int:
    """The longest machine name the local backend boots."""
    from infra.machines import local  # late: it pulls in paramiko, which only the local backend needs

    return local.MAX_NAME_LENGTH


def _build(cfg: Mapping[str, object], problems: list[str]) -> ClusterSpec:
    v, bad = _typed(cfg, problems)

    def usable(*keys: str) -> bool:
        return not bad.intersection(keys)

    # Names.
    for key in ("clusterName", "masterName", "workerName", "lbName", "etcdName"):
        if usable(key) and not DNS_1123_LABEL.match(v[key]):
            problems.append(
                f"pilothouse:{key} {v[key]!r} is not a DNS-1123 label; use lower-case letters, digits and "
                "'-', starting and ending with a letter or digit"
            )

    backend = v["backend"]
    if usable("backend") and backend not in BACKENDS:
        problems.append(f"pilothouse:backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if usable("podNetwork") and v["podNetwork"] not in POD_NETWORKS:
        problems.append(
            f"pilothouse:podNetwork {v['podNetwork']!r} is unknown; choose one of {', '.join(POD_NETWORKS)}"
        )

    known_versions = known_kubernetes_versions()
    version = v["kubernetesVersion"] or known_versions[0]
    if usable("kubernetesVersion") and version not in known_versions:
        problems.append(
            f"pilothouse:kubernetesVersion {version!r} is not pinned in infra/artifacts/lock.yaml; "
            f"known: {', '.join(known_versions)} (or leave it empty for the pinned one)"
        )

    # Counts.
    counts_ok = True
    for key in ("masters", "workers", "lbs", "etcdNodes"):
        if not usable(key):
            counts_ok = False
        elif v[key] < 0:
            problems.append(f"pilothouse:{key} is {v[key]}; a count must be 0 or more")
            counts_ok = False
    if counts_ok:
        _check_counts(v, usable("ha"), problems)

    # Networks: each valid and routable, then no two overlapping (routing would be ambiguous).
    allow_public = v["allowPublicCidrs"] if usable("allowPublicCidrs") else None
    nets = {}
    for key in ("machineCidr", "podCidr", "serviceCidr"):
        if usable(key):
            net = _network(key, v[key], problems)
            if net is not None:
                _check_scope(key, net, allow_public, problems)
                nets[key] = net
    names = list(nets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if nets[a].overlaps(nets[b]):
                problems.append(
                    f"pilothouse:{a} {nets[a]} overlaps pilothouse:{b} {nets[b]}; every pair of machine, pod "
                    "and service CIDRs must be disjoint (e.g. 10.77.0.0/24, 10.244.0.0/16, 10.96.0.0/12)"
                )
    # Networks too small for what is laid out in them: (key, smallest prefix, what needs the room).
    for key, smallest, why in (
        ("machineCidr", MIN_MACHINE_PREFIX,
         "machines are laid out by role up to .220: load balancers .10, masters .20, external etcd .30, workers "
         f".40-.{LB_RANGE[0] - 1}, then MetalLB's LoadBalancer addresses .{LB_RANGE[0]}-.{LB_RANGE[1]}"),
        ("serviceCidr", MIN_SERVICE_PREFIX,
         "every Service takes one and the first and 10th are reserved for the API and DNS"),
    ):
        net = nets.get(key)
        if net is not None and net.prefixlen > smallest:
            problems.append(f"pilothouse:{key} {net} has only {net.num_addresses} addresses, but {why}; use a "
                            f"/{smallest} or larger, e.g. {net.supernet(new_prefix=smallest)}")
            if key == "machineCidr":
                del nets[key]  # no layout to check machines against
    machine_net = nets.get("machineCidr")
    service = nets.get("serviceCidr")
    if service is not None and service.prefixlen < MAX_SERVICE_PREFIX:
        problems.append(
            f"pilothouse:serviceCidr {service} is larger than kube-apiserver accepts; use a "
            f"/{MAX_SERVICE_PREFIX} or smaller (e.g. 10.96.0.0/12)"
        )
    pod = nets.get("podCidr")
    node_count = v["masters"] + v["workers"] if counts_ok else 0
    if pod is not None and pod.prefixlen > NODE_POD_PREFIX:
        problems.append(
            f"pilothouse:podCidr {pod} is smaller than the /{NODE_POD_PREFIX} each node needs; "
            "use e.g. 10.244.0.0/16"
        )
    elif pod is not None and node_count > 2 ** (NODE_POD_PREFIX - pod.prefixlen):
        needed = NODE_POD_PREFIX - math.ceil(math.log2(node_count))
        problems.append(
            f"pilothouse:podCidr {pod} holds {2 ** (NODE_POD_PREFIX - pod.prefixlen)} node subnets of "
            f"/{NODE_POD_PREFIX} but the cluster has {node_count} nodes; use a larger podCidr, a /{needed} or "
            "larger (e.g. 10.244.0.0/16)"
        )

    machines: tuple[Machine, ...] = ()
    names_ok = usable("clusterName", "masterName", "workerName", "lbName", "etcdName")
    if machine_net is not None and counts_ok and names_ok:
        machines = _machines(v, machine_net, pod, problems)
        if usable("backend"):
            _check_name_lengths(v, machines, problems)

    vip = v["vip"] or None
    if usable("vip", "lbs") and counts_ok:
        _check_vip(vip, v["lbs"], machine_net, machines, problems)

    if usable("backend") and backend == "aws":
        _check_aws(v, usable, problems)
    if usable("backend") and backend == "libvirt":
        for key in ("libvirtUri", "libvirtPool", "libvirtImage"):
            if usable(key) and not v[key]:
                problems.append(
                    f"pilothouse:{key} is empty; the libvirt backend needs it: `pulumi config rm "
                    f"pilothouse:{key}` for the default ({KEYS[key].default}) or set it"
                )

    if problems:
        raise SpecError(problems)
    return ClusterSpec(
        name=v["clusterName"],
        backend=backend,
        ha=v["ha"],
        kubernetes_version=version,
        machine_cidr=nets["machineCidr"],
        pod_cidr=nets["podCidr"],
        service_cidr=nets["serviceCidr"],
        pod_network=v["podNetwork"],
        vip=vip,
        machines=machines,
        aws=AwsOptions(operator_cidr=v["operatorCidr"], instance_type=v["awsInstanceType"]),
        libvirt=LibvirtOptions(uri=v["libvirtUri"], pool=v["libvirtPool"], image=v["libvirtImage"]),
    )


def _check_counts(v: dict, ha_usable: bool, problems: list[str]) -> None:
    masters, workers, lbs, external = v["masters"], v["workers"], v["lbs"], v["etcdNodes"]
    if masters < 1:
        problems.append("pilothouse:masters is 0; a cluster needs at least 1 master (3 for HA)")
    if workers < 1:
        problems.append(
            "pilothouse:workers is 0; masters are tainted against workloads, so set workers to 1 or more"
        )
    members = external or masters
    where = "pilothouse:etcdNodes" if external else "pilothouse:masters (etcd is stacked on every master)"
    if members % 2 == 0 and members > 0:
        fix = "use 3 masters, or set etcdNodes to 3" if not external else "use 3, 5 or 7"
        problems.append(
            f"{where} gives {members} etcd members; an even count tolerates no more failures than one fewer "
            f"and risks a split vote: {fix}"
        )
    elif members not in ETCD_SIZES and members > 0:
        problems.append(f"{where} gives {members} etcd members; use one of 1, 3, 5, 7 (1 only with ha false)")
    if not ha_usable:
        return
    if v["ha"]:
        if members == 1:
            problems.append(
                f"{where} gives 1 etcd member, which cannot survive a failure; with ha true use 3, 5 or 7 "
                "(or set pilothouse:ha false)"
            )
        if masters < 2:
            problems.append(
                f"pilothouse:ha is true but pilothouse:masters is {masters}; HA needs at least 2 API servers "
                "behind the load balancer (3 recommended), or set ha false"
            )
        if lbs < 1:
            problems.append(
                "pilothouse:ha is true but pilothouse:lbs is 0; the API servers need a load balancer in front: "
                "set lbs to 1 (or 2 with a vip), or set ha false"
            )


def _machines(
    v: dict, net: ipaddress.IPv4Network, pod: ipaddress.IPv4Network | None, problems: list[str]
) -> tuple[Machine, ...]:
    stacked = v["etcdNodes"] == 0
    plan = [
        ("lb", v["lbName"], v["lbs"], ("lb",)),
        ("master", v["masterName"], v["masters"], ("master", "etcd") if stacked else ("master",)),
        ("etcd", v["etcdName"], v["etcdNodes"], ("etcd",)),
        ("worker", v["workerName"], v["workers"], ("worker",)),
    ]
    subnets = (
        pod.subnets(new_prefix=NODE_POD_PREFIX)
        if pod is not None and pod.prefixlen <= NODE_POD_PREFIX
        else None
    )
    machines = []
    for role, part, count, roles in plan:
        start, room = LAYOUT[role]
        if count > room:
            # The layout is fixed by offset, so a larger machineCidr does not make room.
            why = (f"; .{LB_RANGE[0]}-.{LB_RANGE[1]} are MetalLB's LoadBalancer addresses" if role == "worker"
                   else "")
            problems.append(
                f"pilothouse:{ROLE_KEYS[role]} is {count}, but {ROLE_NAMES[role]} have {room} addresses "
                f"(.{start}-.{start + room - 1} of machineCidr{why}); use at most {room}"
            )
            continue
        for i in range(count):
            pod_subnet = None
            if subnets is not None and ("master" in roles or "worker" in roles):
                # None once the pod CIDR runs out; the pod CIDR checks report that.
                pod_subnet = next(subnets, None)
            name = f"{v['clusterName']}-{part}-{i + 1}"
            machines.append(Machine(name, roles, str(net[start + i]), pod_subnet and str(pod_subnet)))
    repeated = sorted(n for n, c in Counter(m.name for m in machines).items() if c > 1)
    if repeated:
        problems.append(
            f"machine names repeat ({', '.join(repeated)}); give pilothouse:masterName, workerName, lbName and "
            "etcdName different values"
        )
    return tuple(machines)


def _check_name_lengths(v: dict, machines: tuple[Machine, ...], problems: list[str]) -> None:
    """Every machine name must be a hostname label, and short enough for the backend that boots it."""
    if not machines:
        return
    local = v["backend"] == "local"
    limit = local_name_limit() if local else MAX_NAME
    longest = max(machines, key=lambda m: len(m.name)).name
    cut = len(longest) - limit
    if cut <= 0:
        return
    what = f"the local backend boots names of at most {limit}" if local else f"a hostname allows at most {limit}"
    cluster = v["clusterName"]
    # <clusterName>-<part>-<n>: say which of the two can give up the characters.
    part = longest[len(cluster) + 1 :].rsplit("-", 1)[0]
    key = next(k for k in ("masterName", "workerName", "lbName", "etcdName") if v[k] == part)
    if cut < len(cluster):
        fix = f"shorten pilothouse:clusterName by {cut} characters (to {len(cluster) - cut} or fewer)"
    elif cut < len(part):
        fix = f"shorten pilothouse:{key} {part!r} by {cut} characters"
    else:
        fix = f"shorten pilothouse:clusterName and pilothouse:{key} by {cut} characters between them"
    problems.append(f"machine name {longest!r} is {len(longest)} characters and {what}; {fix}")


def _check_vip(
    vip: str | None,
    lbs: int,
    net: ipaddress.IPv4Network | None,
    machines: tuple[Machine, ...],
    problems: list[str],
) -> None:
    example = f"{net[5]}" if net is not None else ".5 of machineCidr"
    if lbs >= 2 and not vip:
        problems.append(
            f"pilothouse:lbs is {lbs}, so keepalived needs a virtual address: set pilothouse:vip to a free "
            f"address in machineCidr (e.g. {example})"
        )
        return
    if vip and lbs < 2:
        problems.append(
            f"pilothouse:vip is set but pilothouse:lbs is {lbs}; a vip needs 2 or more load balancers: set lbs "
            "to 2 or unset vip"
        )
    if not vip:
        return
    try:
        address = ipaddress.IPv4Address(vip)
    except ValueError:
        problems.append(f"pilothouse:vip {vip!r} is not an IPv4 address; write one like {example}")
        return
    if net is None:
        return
    if address not in net or address in (net.network_address, net.broadcast_address):
        problems.append(
            f"pilothouse:vip {vip} is not a usable address of machineCidr {net}; pick one inside it "
            f"(e.g. {example})"
        )
    elif address == net[1]:
        problems.append(
            f"pilothouse:vip {vip} is the host's address on the machine network; pick another (e.g. {example})"
        )
    elif net[LB_RANGE[0]] <= address <= net[LB_RANGE[1]]:
        problems.append(
            f"pilothouse:vip {vip} is in MetalLB's LoadBalancer range {net[LB_RANGE[0]]}-{net[LB_RANGE[1]]}, "
            f"where a Service could take it; pick a free address below .10 (e.g. {example})"
        )
    else:
        taken = [m.name for m in machines if m.address == vip]
        if taken:
            problems.append(f"pilothouse:vip {vip} is {taken[0]}'s address; pick a free one (e.g. {example})")


def _check_aws(v: dict, usable: Callable[..., bool], problems: list[str]) -> None:
    if usable("lbs") and v["lbs"] >= 2:
        problems.append(
            "pilothouse:backend aws cannot move a keepalived vip (a VPC has no layer-2 failover); set "
            "pilothouse:lbs to 1 and unset pilothouse:vip on aws"
        )
    if usable("podNetwork") and v["podNetwork"] != "vxlan":
        problems.append(
            "pilothouse:backend aws needs pilothouse:podNetwork vxlan: security groups filter by source, and "
            "routed pod traffic from node addresses would need every port open between nodes"
        )
    if not usable("operatorCidr"):
        return
    if not v["operatorCidr"]:
        problems.append(
            "pilothouse:backend aws needs pilothouse:operatorCidr, the addresses allowed SSH and API access: "
            "`pulumi config set pilothouse:operatorCidr <your IP>/32`"
        )
        return
    operator = _network("operatorCidr", v["operatorCidr"], problems)
    if operator is not None and operator.prefixlen == 0:
        problems.append(
            "pilothouse:operatorCidr 0.0.0.0/0 opens SSH and the API to the whole internet; use your address/32"
        )
