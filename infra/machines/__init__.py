"""Machines the cluster runs on, one backend per kind, all behind one interface.

Every backend is a Pulumi ComponentResource built from the cluster spec, with the same outputs:

    machines          Output[list[dict]], one per spec machine, in spec order: name, roles, address (the node's
                      IP on the machine network, what the roles use), ssh_address (where SSH connects; the same
                      unless a cloud machine is reached on a public IP), ssh_user, ssh_key_file (a private key file
                      on this host, or "" for ssh_private_key), jump_host ("" or [user@]host[:port]) and
                      ssh_host_key (the machine's pinned SSH host key, "ssh-ed25519 AAAA...", or "" when it is
                      not known beforehand and is recorded on first use; see infra/known_hosts.py)
    ssh_private_key   Output[str], secret: the key generated for the machines ("" when each has a key file)
    images_from_host  bool: True when the machines pull images through the registry mirror this host runs on
                      its machine-network address (.1); False when they pull from the upstream registries

Backends: `local` (provider.LocalMachines: systemd-nspawn machines on this host), `existing`
(existing.ExistingHosts: hosts the user lists, checked, claimed and reset, never created or deleted), `libvirt`
(libvirt.LibvirtMachines: VMs on this host through virsh, infra.machines.vm, with local machines for the roles
it does not take) and `aws` (aws.AwsMachines, tested with Pulumi mocks only).

The local machines' plain Python API is infra.machines.local (used by the provider, tasks and tests):

    ensure_base_rootfs() -> Path
    create(MachineSpec(name, address, cidr_prefix, bridge, ssh_public_key), ssh_private_key) -> MachineState
    destroy(name); status(name) -> "running" | "stopped" | "absent"; list_machines() -> list[MachineState]
"""
