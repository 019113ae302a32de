"""The local backend's Pulumi side: the `LocalMachine` and `SshKey` dynamic providers, and `LocalMachines`,
the component that makes every machine of a cluster spec.

Dynamic providers run in Pulumi's Python provider host, so no plugin binary is needed. The provider process
imports this module by name: run Pulumi from the repository root (where `infra` is importable).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import (CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, Resource,
                            ResourceProvider, UpdateResult)

from infra.machines import keys, local
from infra.machines.errors import MachineSpecError
from infra.spec_model import ClusterSpec, Machine

# Any change to these means a different machine: it is destroyed, then created anew.
REPLACE_ON = ("name", "address", "cidr", "bridge", "ssh_public_key")


def spec_from_props(props: dict[str, Any]) -> local.MachineSpec:
    try:
        network = ipaddress.IPv4Network(props["cidr"])
    except (KeyError, ValueError) as e:
        raise MachineSpecError(f"cidr must be an IPv4 network such as 10.250.0.0/24, got "
                               f"{props.get('cidr')!r}") from e
    if ipaddress.IPv4Address(props["address"]) not in network:
        raise MachineSpecError(f"machine {props['name']}: address {props['address']} is outside {network}; "
                               "pick an address inside the machine CIDR")
    return local.MachineSpec(props["name"], props["address"], network.prefixlen, props["bridge"],
                             props["ssh_public_key"])


def _outputs(props: dict[str, Any], state: local.MachineState) -> dict[str, Any]:
    # The private key is an input only: it is never copied into outputs, so it cannot leak through them.
    return {**{k: props[k] for k in REPLACE_ON}, "hostname": state.hostname, "ssh_host_key": state.ssh_host_key}


class LocalMachineProvider(ResourceProvider):
    """Creates, reads and deletes one systemd-nspawn machine through infra.machines.local."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        missing = [k for k in (*REPLACE_ON, "ssh_private_key") if not news.get(k)]
        if missing:
            return CheckResult(news, [CheckFailure(k, f"{k} is required") for k in missing])
        if not all(isinstance(news[k], str) for k in REPLACE_ON):
            return CheckResult(news, [])  # unknown until an earlier resource exists (preview); checked at create
        try:
            spec_from_props(news)
        except (MachineSpecError, ValueError) as e:
            return CheckResult(news, [CheckFailure("address", str(e))])
        return CheckResult(news, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        state = local.create(spec_from_props(props), props["ssh_private_key"])
        return CreateResult(id_=state.name, outs=_outputs(props, state))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = local.get(id_)
        if state is None or state.status != "running":
            # A blank id tells Pulumi the resource is gone, so `pulumi refresh` drops a dead machine.
            return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs=_outputs({**props, **_spec_props(state.spec)}, state))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # `olds` are the stored outputs, which never hold the private key; a new key pair always changes
        # ssh_public_key too, so comparing the identity fields is enough.
        replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
        # Same name, new machine: the old one must go first (names, addresses and state dirs are unique).
        return DiffResult(changes=bool(replaces), replaces=replaces,
                          stables=[] if replaces else list(REPLACE_ON), delete_before_replace=True)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Reached only if the engine asks for an in-place update: make sure the machine is up and reachable.
        state = local.create(spec_from_props(news), news["ssh_private_key"])
        return UpdateResult(outs=_outputs(news, state))

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        local.destroy(id_)


def _spec_props(spec: local.MachineSpec) -> dict[str, Any]:
    network = spec.network
    return {"name": spec.name, "address": spec.address, "cidr": str(network), "bridge": spec.bridge,
            "ssh_public_key": spec.ssh_public_key}


@dataclass(frozen=True)
class LocalMachineArgs:
    name: pulumi.Input[str]  # hostname and machine name
    address: pulumi.Input[str]  # e.g. 10.250.0.11
    cidr: pulumi.Input[str]  # the machine network, e.g. 10.250.0.0/24; the host bridge takes its .1
    bridge: pulumi.Input[str]  # host bridge name, e.g. ph0
    ssh_public_key: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]  # used only to check that root can log in; pass a secret


class LocalMachine(Resource):
    """A Debian machine booted with systemd-nspawn on this host, SSH-ready when created."""

    address: pulumi.Output[str]
    hostname: pulumi.Output[str]
    ssh_host_key: pulumi.Output[str]

    def __init__(self, resource_name: str, args: LocalMachineArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props = {"name": args.name, "address": args.address, "cidr": args.cidr, "bridge": args.bridge,
                 "ssh_public_key": args.ssh_public_key, "ssh_private_key": pulumi.Output.secret(args.ssh_private_key),
                 "hostname": None, "ssh_host_key": None}
        super().__init__(LocalMachineProvider(), resource_name, props, opts)


class SshKeyProvider(ResourceProvider):
    """Generates an ed25519 key pair once; it is kept in the (encrypted) state, never regenerated."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        pair = keys.generate_ed25519(props.get("comment") or "pilothouse")
        return CreateResult(id_=pair.public_key.split()[1][-16:],
                            outs={"comment": props.get("comment"), "public_key": pair.public_key,
                                  "private_key": pair.private_key})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = olds.get("comment") != news.get("comment")
        return DiffResult(changes=changed, replaces=["comment"] if changed else [])

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)


class SshKey(Resource):
    """An ed25519 SSH key pair; `private_key` is a Pulumi secret."""

    public_key: pulumi.Output[str]
    private_key: pulumi.Output[str]

    def __init__(self, resource_name: str, comment: str = "pilothouse",
                 opts: pulumi.ResourceOptions | None = None) -> None:
        secret = pulumi.ResourceOptions(additional_secret_outputs=["private_key"])
        super().__init__(SshKeyProvider(), resource_name,
                         {"comment": comment, "public_key": None, "private_key": None},
                         pulumi.ResourceOptions.merge(opts, secret))


def machine_record(machine: Machine, ssh_host_key: str) -> dict:
    """A local machine's record in the backends' `machines` output: root over SSH on its own address, with the
    cluster's key and its pinned host key."""
    return {"name": machine.name, "roles": list(machine.roles), "address": machine.address,
            "ssh_address": machine.address, "ssh_user": "root", "ssh_key_file": "", "jump_host": "",
            "ssh_host_key": ssh_host_key}


class LocalMachines(pulumi.ComponentResource):
    """Every machine of the spec as a systemd-nspawn machine on this host, on the cluster's own bridge,
    sharing one SSH key. Subclasses choose another kind of machine for some of them (`_machine`)."""

    TYPE = "pilothouse:machines:LocalMachines"
    machines: pulumi.Output[list]
    ssh_private_key: pulumi.Output[str]
    images_from_host = True

    def __init__(self, name: str, spec: ClusterSpec, opts: pulumi.ResourceOptions | None = None):
        super().__init__(self.TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = SshKey(f"{name}-ssh", comment=f"pilothouse-{spec.name}", opts=child)
        booted = [self._machine(f"{name}-{m.name}", spec, m, key, child) for m in spec.machines]
        # Known once every machine answers SSH, so whatever reads them waits for the machines.
        self.machines = pulumi.Output.all(*[b.ssh_host_key for b in booted]).apply(lambda host_keys: [
            machine_record(m, host_key) for m, host_key in zip(spec.machines, host_keys)])
        self.ssh_private_key = key.private_key
        self.register_outputs({"machines": self.machines, "ssh_private_key": self.ssh_private_key})

    def _machine(self, resource_name: str, spec: ClusterSpec, machine: Machine, key: SshKey,
                 opts: pulumi.ResourceOptions) -> Resource:
        return LocalMachine(resource_name, LocalMachineArgs(
            name=machine.name, address=machine.address, cidr=str(spec.machine_cidr),
            bridge=local.bridge_name(spec.name), ssh_public_key=key.public_key, ssh_private_key=key.private_key),
            opts=opts)
