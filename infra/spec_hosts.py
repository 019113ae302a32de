"""Backend existing in the cluster spec: the hosts the user lists, one line each, read into machines and SSH
access with every problem reported the way infra/spec.py reports the rest (what is wrong and the fix).

A line reads like an Ansible inventory line, which kubespray users know:

    <name> address=<ip> roles=<lb | master,etcd | master | etcd | worker> [user=<ssh user>] [key=<private key>]
           [jump=<[user@]host[:port]>]

user, key and jump default to pilothouse:sshUser, sshKeyPath and jumpHost.
"""
from __future__ import annotations

import ipaddress
import itertools
import re
from collections import Counter
from pathlib import Path

from infra.spec_model import (
    DNS_1123_LABEL, ETCD_SIZES, LB_RANGE, MAX_NAME, NODE_POD_PREFIX, POD_SLOTS, Machine, SshAccess, pod_subnet,
)

HOST_FIELDS = ("address", "roles", "user", "key", "jump")
# The role sets a host may have: a master runs etcd too when etcd is stacked; an LB's haproxy and an API server
# both want port 6443, and a master already runs a kubelet (tainted), so no other mixes.
HOST_ROLES = {frozenset(r): r for r in (("lb",), ("master", "etcd"), ("master",), ("etcd",), ("worker",))}
SSH_USER = re.compile(r"^[a-z_][a-z0-9_.-]*$")
JUMP_HOST = re.compile(r"^(?:(?P<user>[a-z_][a-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?$")


def existing_hosts(
    v: dict, net: ipaddress.IPv4Network, pod: ipaddress.IPv4Network | None, problems: list[str]
) -> tuple[tuple[Machine, ...], tuple[tuple[str, SshAccess], ...]]:
    """The machines and SSH access of backend existing, from its host lines:
    '<name> address=<ip> roles=<roles> [user=<user>] [key=<path>] [jump=<[user@]host[:port]>]'."""
    lines = v["hosts"]
    example = f"'node-1 address={net[20]} roles=master,etcd'"
    if not lines:
        problems.append(f"pilothouse:backend existing needs pilothouse:hosts, one line per host such as {example}: "
                        f"`pulumi config set --path 'pilothouse:hosts[0]' \"{example[1:-1]}\"`")
        return (), ()
    # Pod subnets by slot, as for generated machines: masters in line order from the first, workers from
    # POD_SLOTS["worker"], so a master added later moves no worker's pods.
    slots = {"master": iter(range(POD_SLOTS["master"], POD_SLOTS["worker"])), "worker": itertools.count(POD_SLOTS["worker"])}
    reserved = {net.network_address, net.broadcast_address, net[1]}
    lb_range = (net[LB_RANGE[0]], net[LB_RANGE[1]])
    machines: list[Machine] = []
    access: list[tuple[str, SshAccess]] = []
    before = len(problems)
    for line in lines:
        name, *pairs = line.split() or [""]
        where = f"pilothouse:hosts line {line!r}"
        if not DNS_1123_LABEL.match(name) or len(name) > MAX_NAME or "=" in name:
            problems.append(f"{where}: it must start with the host's name, a DNS-1123 label (lower-case letters, "
                            f"digits and '-', at most {MAX_NAME}), then its fields, e.g. {example}")
            continue
        where = f"pilothouse:hosts host {name}"
        fields: dict[str, str] = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if key not in HOST_FIELDS or not eq:
                problems.append(f"{where}: {pair!r} is not a field; write key=value with key one of "
                                f"{', '.join(HOST_FIELDS)}")
            elif key in fields:
                problems.append(f"{where}: {key}= is given twice; keep one")
            else:
                fields[key] = value
        missing = [k for k in ("address", "roles") if k not in fields]
        if missing:
            problems.append(f"{where}: {' and '.join(k + '=' for k in missing)} missing, e.g. {example}")
            continue
        try:
            address = ipaddress.IPv4Address(fields["address"])
        except ValueError:
            problems.append(f"{where}: address={fields['address']} is not an IPv4 address; the roles use it as the "
                            "node's IP (etcd, kubelet, certificates), so give the IP, not a DNS name")
            continue
        if address not in net or address in reserved:
            problems.append(f"{where}: address {address} is not a usable address of machineCidr {net} (this host "
                            f"is {net[1]}, where the hosts pull images from); set pilothouse:machineCidr to the "
                            "hosts' network")
        elif lb_range[0] <= address <= lb_range[1]:
            problems.append(f"{where}: address {address} is in MetalLB's LoadBalancer range {lb_range[0]}-"
                            f"{lb_range[1]}, where a Service could take it; give the host an address outside it")
        roles = HOST_ROLES.get(frozenset(fields["roles"].split(",")))
        if roles is None:
            problems.append(f"{where}: roles={fields['roles']} is not a role set this cluster builds; use one of "
                            f"{', '.join(','.join(r) for r in HOST_ROLES.values())}")
            continue
        user = fields.get("user", v["sshUser"])
        key = fields.get("key", v["sshKeyPath"])
        jump = fields.get("jump", v["jumpHost"])
        if not SSH_USER.match(user):
            problems.append(f"{where}: SSH user {user!r} is not a user name; set user= or pilothouse:sshUser")
        if not key:
            problems.append(f"{where}: no SSH key; set pilothouse:sshKeyPath (every host) or key= on its line to "
                            "the private key that logs into it")
        elif not Path(key).expanduser().is_file():
            problems.append(f"{where}: SSH key file {key} does not exist on this host; point key= or "
                            "pilothouse:sshKeyPath at the private key that logs into it")
        match = JUMP_HOST.match(jump) if jump else None
        if jump and (match is None or (match["port"] and not 0 < int(match["port"]) < 65536)):
            problems.append(f"{where}: jump host {jump!r} is not [user@]host[:port], e.g. admin@bastion.example:22")
        subnet = None
        # Without a usable podCidr (reported by its own check) no host gets a subnet.
        if pod is not None and pod.prefixlen <= NODE_POD_PREFIX and ("master" in roles or "worker" in roles):
            slot = next(slots["master" if "master" in roles else "worker"], None)
            subnet = pod_subnet(pod, slot)
            if slot is None:
                problems.append(f"pilothouse:hosts host {name}: more than {POD_SLOTS['worker']} masters; the pod "
                                f"subnets keep {POD_SLOTS['worker']} for masters (3, 5 or 7 make an HA control plane)")
            elif subnet is None:
                problems.append(f"pilothouse:podCidr {pod} has no /{NODE_POD_PREFIX} left for host {name} (masters "
                                f"take the first {POD_SLOTS['worker']}, workers the ones after); use a larger podCidr "
                                "(e.g. 10.244.0.0/16)")
        machines.append(Machine(name, roles, str(address), subnet))
        access.append((name, SshAccess(user, str(Path(key).expanduser()) if key else "", jump)))
    for what, values in (("names", [m.name for m in machines]), ("addresses", [m.address for m in machines])):
        repeated = sorted(x for x, c in Counter(values).items() if c > 1)
        if repeated:
            problems.append(f"pilothouse:hosts: {what} repeat ({', '.join(repeated)}); each host needs its own")
    if len(problems) == before:
        check_host_roles(v["ha"], machines, problems)
    return tuple(machines), tuple(access)


def check_host_roles(ha: bool, machines: list[Machine], problems: list[str]) -> None:
    """The rules _check_counts applies to counts, for hosts listed with their roles."""
    count = {r: sum(r in m.roles for m in machines) for r in ("lb", "master", "etcd", "worker")}
    if count["master"] < 1:
        problems.append("pilothouse:hosts has no master; give at least one host roles=master,etcd (3 for HA)")
    if count["worker"] < 1:
        problems.append("pilothouse:hosts has no worker; masters are tainted against workloads, so give at least "
                        "one host roles=worker")
    stacked = [m.name for m in machines if set(m.roles) == {"master", "etcd"}]
    if stacked and len(stacked) != count["master"] or stacked and count["etcd"] != len(stacked):
        problems.append("pilothouse:hosts mixes stacked and separate etcd: either every master is "
                        "roles=master,etcd, or etcd runs on hosts of its own (roles=etcd) and masters are roles=master")
    if count["etcd"] % 2 == 0:
        problems.append(f"pilothouse:hosts gives {count['etcd']} etcd members; an even count tolerates no more "
                        "failures than one fewer and risks a split vote: use 1 (ha false), 3, 5 or 7")
    elif count["etcd"] not in ETCD_SIZES:
        problems.append(f"pilothouse:hosts gives {count['etcd']} etcd members; use one of 1, 3, 5, 7")
    if not ha:
        return
    if count["etcd"] == 1:
        problems.append("pilothouse:hosts gives 1 etcd member, which cannot survive a failure; with ha true use 3, "
                        "5 or 7 (or set pilothouse:ha false)")
    if count["master"] == 1:
        problems.append("pilothouse:ha is true but pilothouse:hosts has 1 master; HA needs at least 2 API servers "
                        "behind the load balancer (3 recommended), or set ha false")
    if count["lb"] < 1:
        problems.append("pilothouse:ha is true but pilothouse:hosts has no load balancer: give a host roles=lb, or "
                        "set ha false")
