"""Backend existing: hosts the user already has, listed in the stack config (pilothouse:hosts), as kubespray and
k0sctl work. `pulumi up` creates no machine: it checks every host first (`HostsCheck`), then claims each
(`ExistingHost`), and the playbook runs as on any backend. `pulumi destroy` resets each host (stops and
removes what the roles installed, puts back what they overwrote) and leaves the machine itself alone.

The remote work itself is in `remote.py`; these are its Pulumi resources, as dynamic providers.
"""
from __future__ import annotations

import subprocess
from dataclasses import asdict
from typing import Any

import pulumi
from pulumi import dynamic

from infra import known_hosts, playbook
from infra.machines import remote
from infra.spec_model import ClusterSpec, SshAccess


def _host(props: dict[str, Any], cluster: str) -> remote.Host:
    # Host keys are recorded on first use in the cluster's known_hosts file. Until the first playbook run makes the
    # cluster's directory, and after `pulumi destroy` removed it (before the resets), ssh cannot record them: it
    # then takes the key it sees, as on a first use, and goes on.
    return remote.Host(props["name"], props["address"], tuple(props["roles"]), SshAccess(**props["access"]),
                       str(playbook.cluster_dir(cluster) / known_hosts.FILE_NAME))


def holds_address(address: str) -> bool:
    """Whether this host has `address` on one of its interfaces (the registry mirror listens there)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "to", f"{address}/32"], capture_output=True, text=True)
    return bool(out.stdout.strip())


class HostsCheckError(Exception):
    """At least one host cannot take its roles; the message has one line per problem, each naming its host."""


class _HostsCheckProvider(dynamic.ResourceProvider):
    """Checks every host before any is changed; re-checks when the host list changes."""

    def _check(self, props: dict[str, Any]) -> None:
        problems = []
        if props["registry"] and not holds_address(props["registry"]):
            problems.append(f"this host has no address {props['registry']}, where the registry mirror the hosts "
                            "pull images from listens; the existing backend needs its hosts on a network where "
                            "this host is .1 of pilothouse:machineCidr")
        problems += remote.check([_host(h, props["cluster"]) for h in props["hosts"]], props["cluster"],
                                 props["with_vip"])
        if problems:
            raise HostsCheckError(f"{len(problems)} problem(s) with the hosts; no host was changed:\n"
                                  + "\n".join(f"  - {p}" for p in problems))

    def create(self, props):
        self._check(props)
        return dynamic.CreateResult(id_=props["cluster"], outs=props)

    def diff(self, _id, olds, news):
        return dynamic.DiffResult(changes=olds.get("hosts") != news.get("hosts"))

    def update(self, _id, _olds, news):
        self._check(news)
        return dynamic.UpdateResult(outs=news)


class HostsCheck(dynamic.Resource):
    def __init__(self, name: str, spec: ClusterSpec, hosts: list[dict], registry: str,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__(_HostsCheckProvider(), name, {"cluster": spec.name, "hosts": hosts, "registry": registry,
                                                       "with_vip": bool(spec.vip)}, opts)


# A change of any of these is another host, or the same host with other roles: reset, then claim again.
HOST_IDENTITY = ("name", "address", "roles", "access")


class _ExistingHostProvider(dynamic.ResourceProvider):
    """Claims a host for the cluster on create; resets it on delete. Never creates or deletes a machine."""

    def create(self, props):
        remote.claim(_host(props, props["cluster"]), props["cluster"])
        return dynamic.CreateResult(id_=f"{props['name']}@{props['address']}", outs=props)

    def diff(self, _id, olds, news):
        replaces = [k for k in (*HOST_IDENTITY, "cluster") if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=True)

    def delete(self, _id, props):
        remote.reset(_host(props, props["cluster"]))


class ExistingHost(dynamic.Resource):
    def __init__(self, name: str, cluster: str, host: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__(_ExistingHostProvider(), name, {"cluster": cluster, **host}, opts)


class ExistingHosts(pulumi.ComponentResource):
    """The machines interface (see infra/machines/__init__.py) over hosts the stack did not create."""

    machines: pulumi.Output[list]
    ssh_private_key: pulumi.Output[str]
    images_from_host = True

    def __init__(self, name: str, spec: ClusterSpec, registry: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pilothouse:machines:ExistingHosts", name, None, opts)
        hosts = [{"name": m.name, "address": m.address, "roles": list(m.roles),
                  "access": asdict(spec.access(m.name))} for m in spec.machines]
        check = HostsCheck(f"{name}-check", spec, hosts, registry, opts=pulumi.ResourceOptions(parent=self))
        claimed = [ExistingHost(f"{name}-{h['name']}", spec.name, h,
                                opts=pulumi.ResourceOptions(parent=self, depends_on=[check])) for h in hosts]
        self.machines = pulumi.Output.all(*[c.id for c in claimed]).apply(lambda _: [
            {"name": m.name, "roles": list(m.roles), "address": m.address, "ssh_address": m.address,
             "ssh_user": spec.access(m.name).user, "ssh_key_file": spec.access(m.name).key_path,
             "jump_host": spec.access(m.name).jump_host, "ssh_host_key": ""} for m in spec.machines])
        # Each host logs in with its own key file (ssh_key_file); there is no generated key.
        self.ssh_private_key = pulumi.Output.secret("")
        self.register_outputs({"machines": self.machines})
