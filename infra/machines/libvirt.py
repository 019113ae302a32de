"""The `libvirt` backend: the spec's machines as libvirt VMs on this host (infra.machines.vm), through a Pulumi
dynamic provider that drives `virsh`.

Why not the official pulumi-libvirt provider: its plugin is built from a Go module the module proxy here
refuses, so it cannot be installed; and libvirt's Python binding is not on PyPI as a wheel (it compiles against
libvirt's headers). `virsh` is libvirt's own client, installed with the daemon, and speaks the same API.

Machines `libvirtMachines` does not select (by role or name) are local systemd-nspawn machines on the same
bridge: a cluster may keep its control plane in light local machines and run workers as VMs with kernels of
their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ReadResult, Resource, ResourceProvider

from infra.machines import local, vm
from infra.machines.errors import MachineSpecError
from infra.machines.provider import LocalMachines, SshKey
from infra.spec_model import ClusterSpec, Machine

# Memory (MiB) and vCPUs by the most demanding role a VM has.
SIZES = {"master": (2048, 2), "worker": (2048, 2), "etcd": (1024, 1), "lb": (512, 1)}
# Any change to these means a different VM: it is destroyed, then created anew.
REPLACE_ON = ("name", "address", "cidr_prefix", "bridge", "ssh_public_key", "memory_mib", "vcpus", "uri", "pool",
              "accel")


def size_of(machine: Machine) -> tuple[int, int]:
    return max(SIZES[r] for r in machine.roles)


NUMBERS = ("cidr_prefix", "memory_mib", "vcpus")


def _spec(props: dict[str, Any]) -> vm.VmSpec:
    # Pulumi hands numbers to a dynamic provider as floats.
    return vm.VmSpec(**{k: int(props[k]) if k in NUMBERS else props[k] for k in REPLACE_ON})


class LibvirtMachineProvider(ResourceProvider):
    """Creates, reads and deletes one VM through infra.machines.vm."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        if not all(isinstance(news.get(k), (str, int, float)) for k in REPLACE_ON):
            return CheckResult(news, [])  # the key is unknown until it exists (preview); checked at create
        try:
            _spec(news)
        except MachineSpecError as e:
            return CheckResult(news, [CheckFailure("name", str(e))])
        return CheckResult(news, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        host_key = vm.create(_spec(props), props["ssh_private_key"])
        return CreateResult(id_=props["name"], outs={**{k: props[k] for k in REPLACE_ON}, "ssh_host_key": host_key})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # A VM that is not running is reported gone, so `pulumi up --refresh` boots it again from its disk.
        if vm.status(id_) != "running":
            return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs={**props, "ssh_host_key": vm.ssh_host_key(id_)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(replaces), replaces=replaces,
                          stables=[] if replaces else list(REPLACE_ON), delete_before_replace=True)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        vm.destroy(id_, props.get("uri"))


@dataclass(frozen=True)
class LibvirtMachineArgs:
    spec: ClusterSpec
    machine: Machine
    ssh_public_key: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]  # used only to check that root can log in; pass a secret


class LibvirtMachine(Resource):
    """A Debian VM under libvirt on this host, SSH-ready when created."""

    ssh_host_key: pulumi.Output[str]

    def __init__(self, resource_name: str, args: LibvirtMachineArgs, opts: pulumi.ResourceOptions | None = None):
        spec, m = args.spec, args.machine
        memory, vcpus = size_of(m)
        props = {"name": m.name, "address": m.address, "cidr_prefix": spec.machine_cidr.prefixlen,
                 "bridge": local.bridge_name(spec.name), "ssh_public_key": args.ssh_public_key,
                 "memory_mib": memory, "vcpus": vcpus, "uri": spec.libvirt.uri, "pool": spec.libvirt.pool,
                 "accel": spec.libvirt.accel, "ssh_private_key": pulumi.Output.secret(args.ssh_private_key),
                 "ssh_host_key": None}
        super().__init__(LibvirtMachineProvider(), resource_name, props, opts)


class LibvirtMachines(LocalMachines):
    """Every machine of the spec, as a VM when `libvirtMachines` selects it, else as a local machine;
    all on the cluster's bridge (the host is its .1, where the registry mirror listens), sharing one SSH key."""

    TYPE = "pilothouse:machines:LibvirtMachines"

    def _machine(self, resource_name: str, spec: ClusterSpec, machine: Machine, key: SshKey,
                 opts: pulumi.ResourceOptions) -> Resource:
        if not spec.libvirt.is_vm(machine):
            return super()._machine(resource_name, spec, machine, key, opts)
        return LibvirtMachine(resource_name, LibvirtMachineArgs(spec, machine, key.public_key, key.private_key),
                              opts=opts)
