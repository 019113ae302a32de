"""Machines the cluster runs on. `local` boots Debian machines with systemd-nspawn on this host.

Plain Python API, in infra.machines.local (used by the Pulumi provider in `provider.py`, tasks and tests):

    ensure_base_rootfs() -> Path
    create(MachineSpec(name, address, cidr_prefix, bridge, ssh_public_key), ssh_private_key) -> MachineState
    destroy(name); status(name) -> "running" | "stopped" | "absent"; list_machines() -> list[MachineState]
"""
