"""The cluster spec's checks of networks, machine counts, names, the VIP, the backup schedule and the aws and libvirt
options: each appends
what is wrong, with the fix, to `problems`, so one run reports every problem (infra/spec.py calls them)."""
from __future__ import annotations

import functools
import ipaddress
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable

from infra.spec_model import (
    ETCD_SIZES, KEYS, LAYOUT, LB_RANGE, MAX_NAME, NEVER_NETWORKS, POD_SLOTS, PRIVATE_NETWORKS,
    ROLE_KEYS, ROLE_NAMES, Machine, pod_subnet,
)


def network(key: str, text: str, problems: list[str]) -> ipaddress.IPv4Network | None:
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


def check_scope(key: str, net: ipaddress.IPv4Network, allow_public: bool | None, problems: list[str]) -> None:
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



def check_counts(v: dict, ha_usable: bool, problems: list[str]) -> None:
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


def machines_by_role(
    v: dict, net: ipaddress.IPv4Network, pod: ipaddress.IPv4Network | None, problems: list[str]
) -> tuple[Machine, ...]:
    stacked = v["etcdNodes"] == 0
    plan = [
        ("lb", v["lbName"], v["lbs"], ("lb",)),
        ("master", v["masterName"], v["masters"], ("master", "etcd") if stacked else ("master",)),
        ("etcd", v["etcdName"], v["etcdNodes"], ("etcd",)),
        ("worker", v["workerName"], v["workers"], ("worker",)),
    ]
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
            subnet = pod_subnet(pod, POD_SLOTS[role] + i) if role in POD_SLOTS else None
            name = f"{v['clusterName']}-{part}-{i + 1}"
            machines.append(Machine(name, roles, str(net[start + i]), subnet))
    repeated = sorted(n for n, c in Counter(m.name for m in machines).items() if c > 1)
    if repeated:
        problems.append(
            f"machine names repeat ({', '.join(repeated)}); give pilothouse:masterName, workerName, lbName and "
            "etcdName different values"
        )
    return tuple(machines)


def check_name_lengths(v: dict, machines: tuple[Machine, ...], problems: list[str]) -> None:
    """Every machine name must be a hostname label, and short enough for the backend that boots it."""
    if not machines:
        return
    local = v["backend"] in ("local", "libvirt")
    limit = local_name_limit() if local else MAX_NAME
    longest = max(machines, key=lambda m: len(m.name)).name
    cut = len(longest) - limit
    if cut <= 0:
        return
    what = f"the {v['backend']} backend boots names of at most {limit}" if local else f"a hostname allows at most {limit}"
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


def check_vip(
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


def check_aws(v: dict, usable: Callable[..., bool], problems: list[str]) -> None:
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
    operator = network("operatorCidr", v["operatorCidr"], problems)
    if operator is not None and operator.prefixlen == 0:
        problems.append(
            "pilothouse:operatorCidr 0.0.0.0/0 opens SSH and the API to the whole internet; use your address/32"
        )


LIBVIRT_URI = re.compile(r"^qemu(\+unix)?:///system(\?\S*)?$")
LIBVIRT_POOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def libvirt_machines(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def check_libvirt(v: dict, usable: Callable[..., bool], problems: list[str], machines: tuple[Machine, ...]) -> None:
    if usable("libvirtUri") and not LIBVIRT_URI.match(v["libvirtUri"]):
        problems.append(
            f"pilothouse:libvirtUri {v['libvirtUri']!r} is not this host's system hypervisor: the VMs join this "
            "host's bridge and registry mirror, so only qemu:///system (or qemu+unix:///system) works"
        )
    if usable("libvirtPool") and not LIBVIRT_POOL.match(v["libvirtPool"]):
        problems.append(f"pilothouse:libvirtPool {v['libvirtPool']!r} is not a pool name; use e.g. `default`")
    if usable("libvirtMachines", "clusterName", "masterName", "workerName", "lbName", "etcdName"):
        chosen = libvirt_machines(v["libvirtMachines"])
        # A name may be one the cluster gets only when a count grows: the next worker can be a VM.
        parts = "|".join(re.escape(v[k]) for k in ("masterName", "workerName", "lbName", "etcdName"))
        possible = re.compile(rf"^{re.escape(v['clusterName'])}-({parts})-[1-9][0-9]*$")
        unknown = [c for c in chosen if c not in ROLE_KEYS and not possible.match(c)]
        if unknown or not chosen:
            example = machines[-1].name if machines else "worker"
            problems.append(
                f"pilothouse:libvirtMachines {v['libvirtMachines']!r} must list roles ({', '.join(ROLE_KEYS)}) or "
                f"machine names of this cluster, separated by commas (e.g. `worker` or `{example}`)"
                + (f"; {', '.join(unknown)} is neither" if unknown else "")
            )
    if usable("libvirtAccel") and v["libvirtAccel"] not in ("kvm", "tcg"):
        problems.append(
            f"pilothouse:libvirtAccel {v['libvirtAccel']!r} must be kvm (hardware virtualisation) or tcg (qemu's "
            "emulator, for hosts without usable KVM)"
        )


# What an OnCalendar expression is made of; anything else (quotes, newlines) would break the unit file.
CALENDAR_CHARS = re.compile(r"^[A-Za-z0-9 *:,./~+-]+$")


def check_backup_schedule(schedule: str, retention: int, problems: list[str]) -> None:
    if retention < 1:
        problems.append(f"pilothouse:etcdBackupRetention is {retention}; each member must keep at least 1 snapshot")
    if not schedule:
        return
    fix = "use a systemd OnCalendar expression such as hourly, daily or '*-*-* 00/6:00:00'"
    if not CALENDAR_CHARS.match(schedule):
        problems.append(f"pilothouse:etcdBackupSchedule {schedule!r} is not a calendar expression; {fix}")
        return
    # The machines' systemd reads it; this host's parses it the same way, before anything is made.
    if shutil.which("systemd-analyze"):
        proc = subprocess.run(["systemd-analyze", "calendar", schedule], capture_output=True, text=True)
        if proc.returncode != 0:
            problems.append(f"pilothouse:etcdBackupSchedule {schedule!r}: {proc.stderr.strip()}; {fix}")
