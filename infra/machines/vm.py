"""libvirt VMs on this host: the machines of the `libvirt` backend, driven through `virsh`.

A VM boots Debian's kernel directly (no boot loader) from a raw ext4 disk in a libvirt storage pool. The disk
is made offline: the cached VM tree (vm_image.py) seen through an overlay holding this VM's own files
(guest.write_identity), written into a sparse file by `mkfs.ext4 -d`, with nothing mounted in the VM's disk
and nothing downloaded. The VM's network card sits on the cluster's host bridge, next to any local machine,
so it reaches the registry mirror at .1 and nothing beyond the bridge.

What it was made from is kept in /var/lib/pilothouse/vms/<name>/spec.json with its console log.
`accel` is `kvm` (hardware virtualisation) or `tcg` (qemu's emulator, for hosts without usable KVM: slow
but a real VM).
"""
from __future__ import annotations

import contextlib
import grp
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

from infra.machines import guest, host, keys, local, vm_image
from infra.machines.errors import HostSetupError, MachineConflictError, MachineError, MachineSpecError

STATE_ROOT = Path(os.environ.get("PILOTHOUSE_VMS", "/var/lib/pilothouse/vms"))
# Under qemu's emulator (TCG) a Debian VM takes about a minute to boot.
BOOT_TIMEOUT = 300.0
DISK_SIZE = "20G"  # sparse: the file holds only what is written
# Where a missing `default` pool is made, as virt-install does.
DEFAULT_POOL_DIR = Path("/var/lib/libvirt/images")
# cgroup v1 only, as on the local machines, so the roles configure kubelet and containerd the same way.
KERNEL_ARGS = ("root=/dev/vda rw console=ttyS0 net.ifnames=0 "
               "systemd.unified_cgroup_hierarchy=0 systemd.legacy_systemd_cgroup_controller=1")
# Under TCG the emulated TSC is one clock for every vCPU, but the kernel cannot tell (qemu64 does not say
# constant_tsc) and falls back to the emulated HPET: every clock read then traps into the emulator, which made
# the node's Go daemons and Ansible's tasks several times slower. KVM guests use kvm-clock by themselves.
TCG_KERNEL_ARGS = "clocksource=tsc tsc=reliable"
ACCELS = ("kvm", "tcg")
START_LIBVIRT = ("start it (`systemctl start libvirtd virtlogd`; on a host without systemd: `libvirtd -d; "
                 "virtlogd -d`)")

Status = Literal["running", "stopped", "absent"]

# What this host needs to run the VMs (`invoke deps` installs them; the daemons are the host's to run).
HOST_PACKAGES = ("libvirt-daemon-system", "libvirt-clients", "qemu-system-x86", "e2fsprogs")


@dataclass(frozen=True)
class VmSpec:
    name: str
    address: str
    cidr_prefix: int
    bridge: str
    ssh_public_key: str
    memory_mib: int
    vcpus: int
    uri: str
    pool: str
    accel: str

    def __post_init__(self) -> None:
        # The name, address and bridge rules are the local machines' own.
        local.MachineSpec(self.name, self.address, self.cidr_prefix, self.bridge, self.ssh_public_key)
        if self.accel not in ACCELS:
            raise MachineSpecError(f"VM {self.name}: accel {self.accel!r} is not one of {', '.join(ACCELS)}")
        if self.memory_mib < 512 or self.vcpus < 1:
            raise MachineSpecError(f"VM {self.name}: needs at least 512 MiB and 1 vCPU")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Interface(f"{self.address}/{self.cidr_prefix}").network


def machine_dir(name: str) -> Path:
    return STATE_ROOT / name


def virsh(uri: str, *args: str, what: str, fix: str = "") -> str:
    if shutil.which("virsh") is None:
        raise HostSetupError("virsh is not installed: the libvirt backend needs libvirt-clients, "
                             "libvirt-daemon-system and qemu-system-x86 (`invoke deps` installs them)")
    return host.run(["virsh", "-q", "-c", uri, *args], what, fix).stdout


def check_hypervisor(uri: str) -> None:
    """Fail with the fix when libvirt at `uri` does not answer."""
    try:
        virsh(uri, "uri", what=f"connecting to libvirt at {uri}")
    except HostSetupError as e:
        raise HostSetupError(f"libvirt at {uri} does not answer: {START_LIBVIRT}, or set pilothouse:libvirtUri "
                             f"to one that does.\n{e}") from None


def ensure_kvm_device_group() -> None:
    """Give /dev/kvm the group and mode Debian's udev rules give it (kvm, 0660) on a host where no udev ran.

    libvirt checks the device as the user it runs qemu as (in group kvm). When that check fails while its cached
    probe of qemu found KVM, it throws the cache away and probes qemu again on every call: about 50 s per
    `virsh define` on a host whose /dev/kvm is root's alone. The VMs' own accelerator is the spec's either way.
    """
    device = Path("/dev/kvm")
    try:
        group = grp.getgrnam("kvm").gr_gid
        st = device.stat()
    except (KeyError, OSError):
        return
    if st.st_gid != group or (st.st_mode & 0o060) != 0o060:
        os.chown(device, -1, group)
        device.chmod(0o660)


def pool_dir(uri: str, pool: str) -> Path:
    """The directory of a `dir` storage pool, started if it is not; `default` is created when missing."""
    try:
        xml = virsh(uri, "pool-dumpxml", pool, what=f"reading storage pool {pool}")
    except HostSetupError:
        if pool != "default":
            raise HostSetupError(f"libvirt storage pool {pool!r} does not exist at {uri}: create it (`virsh "
                                 f"pool-define-as {pool} dir --target /some/dir; virsh pool-build {pool}`) or "
                                 "leave pilothouse:libvirtPool at `default`") from None
        DEFAULT_POOL_DIR.mkdir(parents=True, exist_ok=True)
        virsh(uri, "pool-define-as", "default", "dir", "--target", str(DEFAULT_POOL_DIR),
              what="defining the default storage pool")
        virsh(uri, "pool-autostart", "default", what="marking the default pool autostart")
        xml = virsh(uri, "pool-dumpxml", pool, what=f"reading storage pool {pool}")
    root = ET.fromstring(xml)
    if root.get("type") != "dir":
        raise HostSetupError(f"libvirt storage pool {pool!r} is of type {root.get('type')!r}; VM disks are "
                             "files made on this host, so the pool must be a `dir` pool")
    if "running" not in virsh(uri, "pool-info", pool, what=f"reading storage pool {pool}"):
        virsh(uri, "pool-start", pool, what=f"starting storage pool {pool}")
    return Path(root.findtext("target/path"))


def _load(name: str) -> tuple[VmSpec, str] | None:
    try:
        data = json.loads((machine_dir(name) / "spec.json").read_text())
    except (OSError, ValueError):
        return None
    return VmSpec(**data["spec"]), data["ssh_host_key"]


def domain_state(uri: str, name: str) -> Status:
    proc = subprocess.run(["virsh", "-q", "-c", uri, "domstate", name], capture_output=True, text=True)
    if proc.returncode != 0:
        return "absent"
    return "running" if proc.stdout.strip() == "running" else "stopped"


def status(name: str) -> Status:
    loaded = _load(name)
    return "absent" if loaded is None else domain_state(loaded[0].uri, name)


def list_vms() -> list[tuple[str, str]]:
    """(name, address) of every VM this host made."""
    found = [_load(d.name) for d in sorted(STATE_ROOT.glob("*")) if d.is_dir() and not d.name.startswith(".")]
    return [(spec.name, spec.address) for spec, _ in filter(None, found)]


def ssh_host_key(name: str) -> str:
    loaded = _load(name)
    return loaded[1] if loaded else ""


def domain_xml(spec: VmSpec, files: dict[str, Path]) -> str:
    """The libvirt domain: direct kernel boot, one virtio disk, one virtio NIC on the bridge, serial to a file."""
    kvm = spec.accel == "kvm"
    cpu = "<cpu mode='host-passthrough'/>" if kvm else "<cpu mode='custom' match='exact'><model>qemu64</model></cpu>"
    return f"""<domain type='{'kvm' if kvm else 'qemu'}'>
  <name>{escape(spec.name)}</name>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(files['kernel']))}</kernel>
    <initrd>{escape(str(files['initrd']))}</initrd>
    <cmdline>{KERNEL_ARGS if kvm else f"{KERNEL_ARGS} {TCG_KERNEL_ARGS}"}</cmdline>
  </os>
  <features><acpi/></features>
  {cpu}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{escape(str(files['disk']))}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='{escape(spec.bridge)}'/>
      <mac address='{mac_for(spec.address)}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='{escape(str(machine_dir(spec.name) / 'console.log'))}' append='on'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""


def mac_for(address: str) -> str:
    """A stable MAC in QEMU's 52:54:00 range, from the last three octets of the address."""
    octets = [int(o) for o in address.split(".")[1:]]
    return "52:54:00:" + ":".join(f"{o:02x}" for o in octets)


def _files(spec: VmSpec, pool: Path) -> dict[str, Path]:
    return {"disk": pool / f"{spec.name}.raw", "kernel": pool / f"{spec.name}.vmlinuz",
            "initrd": pool / f"{spec.name}.initrd"}


def create(spec: VmSpec, ssh_private_key: str, timeout: float = BOOT_TIMEOUT, log=lambda _msg: None) -> str:
    """Make and boot the VM, and wait until root logs in over SSH; returns its SSH host key.

    Idempotent like the local machines: a running VM with the same spec is left alone, a stopped one is
    started from its own disk, one with another spec is refused. A failed first boot leaves nothing behind.
    """
    pkey = keys.load_private_key(ssh_private_key)
    if not keys.same_public_key(keys.public_key_of(pkey), spec.ssh_public_key):
        raise MachineSpecError(f"VM {spec.name}: the private key given does not match ssh_public_key")
    host.require_root()
    check_hypervisor(spec.uri)
    ensure_kvm_device_group()
    existing = _load(spec.name)
    if existing is not None and existing[0] != spec:
        raise MachineConflictError(f"VM {spec.name} exists with a different spec ({existing[0]}); destroy it "
                                   "first (`pulumi destroy`, or `virsh destroy` and `virsh undefine` it)")
    fresh = existing is None or domain_state(spec.uri, spec.name) == "absent"
    try:
        host.ensure_host_sysctls()
        host.ensure_bridge(spec.bridge, spec.network)
        if fresh:
            host_key = _make(spec, log)
        else:
            host_key = existing[1]
        if domain_state(spec.uri, spec.name) != "running":
            virsh(spec.uri, "start", spec.name, what=f"starting VM {spec.name}")
        console = machine_dir(spec.name) / "console.log"
        guest.wait_booted(spec.name, spec.address, host_key, pkey, timeout,
                          lambda: domain_state(spec.uri, spec.name) == "running", console)
        return host_key
    except BaseException:
        if fresh:
            destroy(spec.name, spec.uri)
        raise


def _make(spec: VmSpec, log) -> str:
    base = vm_image.ensure_vm_base(log)
    pool = pool_dir(spec.uri, spec.pool)
    files = _files(spec, pool)
    d = machine_dir(spec.name)
    with guest.state_lock(STATE_ROOT):
        d.mkdir(parents=True, exist_ok=True)
        # Written first, so that destroy finds what to remove if anything below fails.
        (d / "spec.json").write_text(json.dumps({"spec": asdict(spec), "ssh_host_key": "", "pool_dir": str(pool)},
                                                indent=2))
    scratch = Path(tempfile.mkdtemp(prefix=".disk-", dir=STATE_ROOT))
    try:
        for sub in ("upper", "work", "merged"):
            (scratch / sub).mkdir()
        host.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={base / 'root'},upperdir="
                  f"{scratch / 'upper'},workdir={scratch / 'work'}", str(scratch / "merged")],
                 f"mounting the disk tree of VM {spec.name}")
        try:
            host_key = guest.write_identity(scratch / "merged", spec.name, spec.address, spec.cidr_prefix,
                                            "eth0", spec.ssh_public_key)
            files["disk"].unlink(missing_ok=True)
            host.run(["truncate", "-s", DISK_SIZE, str(files["disk"])], f"making the disk of VM {spec.name}")
            host.run(["mkfs.ext4", "-q", "-F", "-L", spec.name[:16], "-d", str(scratch / "merged"),
                      str(files["disk"])], f"writing the disk of VM {spec.name}")
        finally:
            subprocess.run(["umount", str(scratch / "merged")], check=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    shutil.copy(base / "vmlinuz", files["kernel"])
    shutil.copy(base / "initrd.img", files["initrd"])
    virsh(spec.uri, "pool-refresh", spec.pool, what=f"refreshing storage pool {spec.pool}")
    xml = d / "domain.xml"
    xml.write_text(domain_xml(spec, files))
    virsh(spec.uri, "define", str(xml), what=f"defining VM {spec.name}")
    (d / "spec.json").write_text(json.dumps({"spec": asdict(spec), "ssh_host_key": host_key,
                                             "pool_dir": str(pool)}, indent=2))
    return host_key


def destroy(name: str, uri: str | None = None) -> None:
    """Power the VM off, undefine it and delete its disk, kernel and state; then the bridge if unused.
    Idempotent."""
    host.require_root()
    loaded = _load(name)
    if loaded is None and uri is None:
        return
    spec = loaded[0] if loaded else None
    uri = spec.uri if spec else uri
    if domain_state(uri, name) == "running":
        virsh(uri, "destroy", name, what=f"stopping VM {name}")
    if domain_state(uri, name) != "absent":
        virsh(uri, "undefine", name, what=f"undefining VM {name}")
    if spec is not None:
        with contextlib.suppress(OSError, ValueError):
            pool = Path(json.loads((machine_dir(name) / "spec.json").read_text())["pool_dir"])
            for path in _files(spec, pool).values():
                path.unlink(missing_ok=True)
            subprocess.run(["virsh", "-q", "-c", uri, "pool-refresh", spec.pool], capture_output=True)
    shutil.rmtree(machine_dir(name), ignore_errors=True)
    if spec is not None:
        with local.host_lock():
            if not any(m.spec.bridge == spec.bridge for m in local.list_machines()):
                local.wait_for_empty_bridge(spec.bridge)  # qemu's tap leaves the bridge as qemu exits
                host.remove_bridge_if_unused(spec.bridge)


def pull_plug(name: str) -> None:
    """A power loss: stop the VM at once (`virsh destroy`); `create` boots it again from its disk."""
    loaded = _load(name)
    if loaded is None or domain_state(loaded[0].uri, name) != "running":
        raise MachineError(f"VM {name} is not running")
    virsh(loaded[0].uri, "destroy", name, what=f"stopping VM {name}")
