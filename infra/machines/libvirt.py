"""libvirt/KVM machines for a ClusterSpec, with the official pulumi_libvirt provider.

Tested only with Pulumi mocks (tests/test_cloud_backends.py): nested KVM hangs on the machines this
project is developed on, so booting these for real is unverified. Kept thin for that reason: one NAT
network holding the machine CIDR (the host takes .1), a Debian cloud image as the shared base volume,
and per machine a copy-on-write disk, a cloud-init disk (hostname, static address, SSH key) and a domain.

Addresses are static (cloud-init network config, matched on a MAC derived from the address) rather than
DHCP leases, so each machine has its spec address from first boot and the network needs no DHCP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_libvirt as libvirt
import yaml

from infra.spec_model import ClusterSpec, Machine, SpecError

SSH_USER = "debian"
# Memory (MiB) and vCPUs by the most demanding role a machine has.
SIZES = {"master": (2048, 2), "worker": (2048, 2), "etcd": (1024, 1), "lb": (512, 1)}
DISK_BYTES = 20 * 1024**3


def mac_for(address: str) -> str:
    """A stable MAC in QEMU's 52:54:00 range, unique per address within a /8."""
    octets = ipaddress.IPv4Address(address).packed[1:]
    return "52:54:00:" + ":".join(f"{o:02x}" for o in octets)


def size_of(machine: Machine) -> tuple[int, int]:
    return max(SIZES[r] for r in machine.roles)


def network_config(spec: ClusterSpec, machine: Machine) -> str:
    """cloud-init network config v2: the spec address, the host as gateway and resolver."""
    return yaml.safe_dump(
        {
            "version": 2,
            "ethernets": {
                "primary": {
                    "match": {"macaddress": mac_for(machine.address)},
                    "addresses": [f"{machine.address}/{spec.machine_cidr.prefixlen}"],
                    "routes": [{"to": "default", "via": spec.host_address}],
                    "nameservers": {"addresses": [spec.host_address]},
                }
            },
        },
        sort_keys=False,
    )


def user_data(machine: Machine, public_key: str) -> str:
    body = {
        "hostname": machine.name,
        "preserve_hostname": False,
        "users": [
            {
                "name": SSH_USER,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "ssh_authorized_keys": [public_key],
            }
        ],
        "ssh_pwauth": False,
    }
    return "#cloud-config\n" + yaml.safe_dump(body, sort_keys=False)


@dataclass
class LibvirtMachinesArgs:
    spec: ClusterSpec
    ssh_public_key: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]


class LibvirtMachines(pulumi.ComponentResource):
    machines: pulumi.Output[list]
    images_from_host = True  # the host is .1 of the NAT network, where the registry mirror listens
    ssh_user: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]

    def __init__(self, name: str, args: LibvirtMachinesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pilothouse:machines:LibvirtMachines", name, None, opts)
        spec = args.spec
        if spec.backend != "libvirt":
            raise SpecError(
                [f"pilothouse:backend is {spec.backend!r}; LibvirtMachines builds only backend 'libvirt'"]
            )
        provider = libvirt.Provider(
            f"{name}-provider", uri=spec.libvirt.uri, opts=pulumi.ResourceOptions(parent=self)
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)

        network = libvirt.Network(
            f"{name}-network",
            name=spec.name,
            mode="nat",
            addresses=[str(spec.machine_cidr)],
            dhcp=libvirt.NetworkDhcpArgs(enabled=False),
            dns=libvirt.NetworkDnsArgs(enabled=True, local_only=False),
            autostart=True,
            opts=child,
        )
        base = libvirt.Volume(
            f"{name}-base",
            name=f"{spec.name}-base.qcow2",
            pool=spec.libvirt.pool,
            source=spec.libvirt.image,
            format="qcow2",
            opts=child,
        )

        domains = []
        for m in spec.machines:
            disk = libvirt.Volume(
                f"{name}-{m.name}-disk",
                name=f"{m.name}.qcow2",
                pool=spec.libvirt.pool,
                base_volume_id=base.id,
                size=DISK_BYTES,
                format="qcow2",
                opts=child,
            )
            seed = libvirt.CloudInitDisk(
                f"{name}-{m.name}-cloudinit",
                name=f"{m.name}-cloudinit.iso",
                pool=spec.libvirt.pool,
                user_data=pulumi.Output.from_input(args.ssh_public_key).apply(
                    lambda key, m=m: user_data(m, key)
                ),
                meta_data=yaml.safe_dump({"instance-id": m.name, "local-hostname": m.name}),
                network_config=network_config(spec, m),
                opts=child,
            )
            memory, vcpu = size_of(m)
            domains.append(
                libvirt.Domain(
                    f"{name}-{m.name}",
                    name=m.name,
                    memory=memory,
                    vcpu=vcpu,
                    cloudinit=seed.id,
                    disks=[libvirt.DomainDiskArgs(volume_id=disk.id)],
                    network_interfaces=[
                        libvirt.DomainNetworkInterfaceArgs(network_id=network.id, mac=mac_for(m.address))
                    ],
                    # Debian's cloud kernels log to the serial console and stall at boot without one.
                    consoles=[libvirt.DomainConsoleArgs(type="pty", target_port="0", target_type="serial")],
                    autostart=True,
                    opts=child,
                )
            )

        self.machines = pulumi.Output.all(*[d.id for d in domains]).apply(
            lambda _: [
                {"name": m.name, "roles": list(m.roles), "address": m.address, "ssh_address": m.address,
                 "ssh_user": SSH_USER, "ssh_key_file": "", "jump_host": "", "ssh_host_key": ""}
                for m in spec.machines
            ]
        )
        self.ssh_user = pulumi.Output.from_input(SSH_USER)
        self.ssh_private_key = pulumi.Output.secret(args.ssh_private_key)
        self.register_outputs(
            {
                "machines": self.machines,
                "ssh_user": self.ssh_user,
                "ssh_private_key": self.ssh_private_key,
            }
        )
