"""The `local` machine backend: Debian machines booted with systemd-nspawn on a private bridge.

Each machine is an overlay (the cached base rootfs below, its own upper layer above) booted by
systemd-nspawn in its own cgroups, with its own address, hostname, host key and sshd. It lives under
/var/lib/pilothouse/machines/<name>/:

    spec.json      what it was created from (plus its SSH host key)
    upper/ work/   its overlay layers; rootfs/ is where the overlay is mounted
    containerd/    bind-mounted at /var/lib/containerd (containerd's snapshotter cannot sit on an overlay)
    console.log    everything systemd-nspawn and the machine's console print
    pid            the systemd-nspawn process

The nspawn process is detached from whoever started it, so machines outlive the Pulumi run that made them.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import paramiko

from infra.machines import guest, host, keys
from infra.machines.errors import (HostSetupError, MachineConflictError, MachineError, MachineNotReadyError,
                                   MachineSpecError)
from infra.machines.rootfs import ensure_base_rootfs

STATE_ROOT = Path(os.environ.get("PILOTHOUSE_MACHINES", "/var/lib/pilothouse/machines"))
BOOT_TIMEOUT = 120.0

Status = Literal["running", "stopped", "absent"]

# A machine name is its hostname and names its cgroups and state directory; 32 keeps those paths short.
MAX_NAME_LENGTH = 32
NAME_RE = re.compile(rf"^[a-z0-9]([a-z0-9-]{{0,{MAX_NAME_LENGTH - 2}}}[a-z0-9])?$")
BRIDGE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,14}$")


def bridge_name(cluster_name: str) -> str:
    """The host bridge of a cluster: `ph-<cluster_name>` when it fits an interface name (15 characters,
    IFNAMSIZ), else `ph-`, the name's first 5 characters, `_` and 6 hex digits of its SHA-256.

    Plain truncation would put two clusters whose names share a prefix on one bridge. A cluster name is a
    DNS label and never holds `_`, so a shortened name cannot equal a name that fits; two shortened ones
    clash only if they share the prefix and 24 bits of hash.
    """
    name = f"ph-{cluster_name}"
    if len(name) <= 15:
        return name
    return f"ph-{cluster_name[:5]}_{hashlib.sha256(cluster_name.encode()).hexdigest()[:6]}"


# Out of every machine's bounding set, so neither its root nor a privileged pod holds them (modules, raw I/O,
# reboot, the clock, accounting, suspend): no cluster component uses them (the live tests run without them).
DROPPED_CAPABILITIES = ("CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_BOOT", "CAP_SYS_TIME", "CAP_SYS_PACCT",
                        "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND")

# Flags proven on this kind of host: cgroup v1, no machined, every other capability (kubelet and containerd
# need most of them; nspawn's default set lacks some), the keyring syscalls runc uses, and /dev/kmsg for kubelet.
NSPAWN_FLAGS = (
    "--boot", "--register=no", "--keep-unit", "--console=passive", "--resolv-conf=off",
    "--link-journal=no", "--timezone=off", "--capability=all",
    f"--drop-capability={','.join(DROPPED_CAPABILITIES)}", "--system-call-filter=add_key keyctl",
    "--bind=/dev/kmsg",
)

# Runs between fork and exec of systemd-nspawn: join the machine's own cgroups first, so nothing of the
# machine ever lands in the caller's cgroups, then record the pid (the same pid after exec).
LAUNCHER = """pidfile=$1; cgroups=$2; shift 2
IFS=:
for cg in $cgroups; do echo $$ > "$cg/cgroup.procs"; done
echo $$ > "$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
exec "$@"
"""


@dataclass(frozen=True)
class MachineSpec:
    name: str
    address: str
    cidr_prefix: int
    bridge: str
    ssh_public_key: str

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise MachineSpecError(f"machine name {self.name!r} is not a valid hostname: use 1-32 lowercase "
                                   "letters, digits and '-', not starting or ending with '-'")
        if not BRIDGE_RE.match(self.bridge):
            raise MachineSpecError(f"bridge name {self.bridge!r} is invalid: use at most 15 letters, digits, "
                                   "'-' or '_' (a Linux interface name)")
        try:
            iface = ipaddress.IPv4Interface(f"{self.address}/{self.cidr_prefix}")
        except ValueError as e:
            raise MachineSpecError(f"machine {self.name}: {self.address}/{self.cidr_prefix} is not an IPv4 "
                                   f"address with a prefix length ({e})") from e
        net = iface.network
        if net.prefixlen > 29:
            raise MachineSpecError(f"machine {self.name}: network {net} is too small; use a /29 or larger")
        reserved = {net.network_address, net.broadcast_address, host.bridge_address(net).ip}
        if iface.ip in reserved:
            raise MachineSpecError(f"machine {self.name}: {iface.ip} is reserved in {net} (network, broadcast "
                                   f"or the host's bridge address {host.bridge_address(net).ip}); pick another")
        if len(self.ssh_public_key.split()) < 2 or not self.ssh_public_key.startswith(("ssh-", "ecdsa-")):
            raise MachineSpecError(f"machine {self.name}: ssh_public_key must be one authorized_keys line "
                                   "like 'ssh-ed25519 AAAA... comment'")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Interface(f"{self.address}/{self.cidr_prefix}").network


@dataclass(frozen=True)
class MachineState:
    spec: MachineSpec
    status: Status
    pid: int | None
    ssh_host_key: str  # the machine's sshd public key, for known_hosts
    directory: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        return self.spec.address

    @property
    def hostname(self) -> str:
        return self.spec.name

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"


# --- state on disk ----------------------------------------------------------------------------------

def machine_dir(name: str) -> Path:
    return STATE_ROOT / name


def host_lock() -> contextlib.AbstractContextManager[None]:
    """Serialise changes to shared host state (bridges, mounts, state dirs) across threads and processes."""
    return guest.state_lock(STATE_ROOT)


def _load(name: str) -> tuple[MachineSpec, str] | None:
    try:
        data = json.loads((machine_dir(name) / "spec.json").read_text())
    except (OSError, ValueError):
        return None
    return MachineSpec(**data["spec"]), data["ssh_host_key"]


def _nspawn_pid(name: str) -> int | None:
    """The machine's systemd-nspawn pid, or None if it is not running (checked against pid reuse)."""
    try:
        pid = int((machine_dir(name) / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if os.path.basename(cmdline[0]) != b"systemd-nspawn" or f"--machine={name}".encode() not in cmdline:
        return None
    return pid


def status(name: str) -> Status:
    if not machine_dir(name).is_dir():
        return "absent"
    return "running" if _nspawn_pid(name) else "stopped"


def get(name: str) -> MachineState | None:
    loaded = _load(name)
    if loaded is None:
        return None
    spec, host_key = loaded
    pid = _nspawn_pid(name)
    return MachineState(spec, "running" if pid else "stopped", pid, host_key, machine_dir(name))


def list_machines() -> list[MachineState]:
    if not STATE_ROOT.is_dir():
        return []
    found = (get(d.name) for d in sorted(STATE_ROOT.iterdir()) if d.is_dir() and not d.name.startswith("."))
    return [m for m in found if m is not None]


def memory_stats(name: str) -> dict[str, int]:
    """Memory of everything in the machine, from its memory cgroup (bytes)."""
    path = host.CGROUP_ROOT / "memory" / f"pm-{name}"
    stat = dict(line.split() for line in (path / "memory.stat").read_text().splitlines())
    return {"usage": int((path / "memory.usage_in_bytes").read_text()),
            "rss": int(stat["total_rss"]), "cache": int(stat["total_cache"])}


# --- create -----------------------------------------------------------------------------------------

def create(spec: MachineSpec, ssh_private_key: str, timeout: float = BOOT_TIMEOUT) -> MachineState:
    """Boot a machine and wait until root can log in over SSH with `ssh_private_key`.

    Idempotent: a running machine with the same spec is left alone; a stopped one is booted again from
    its own disk. A machine of that name with a different spec is refused (destroy it first). A failed
    first boot leaves nothing behind but a copy of its console log.
    """
    pkey = keys.load_private_key(ssh_private_key)
    if not keys.same_public_key(keys.public_key_of(pkey), spec.ssh_public_key):
        raise MachineSpecError(f"machine {spec.name}: the private key given does not match ssh_public_key")
    host.require_root()
    existing = _load(spec.name)
    if existing is not None and existing[0] != spec:
        raise MachineConflictError(f"machine {spec.name} exists with a different spec ({existing[0]}); "
                                   f"destroy it first: python -m infra.machines.local down {spec.name}")
    if existing is not None and _nspawn_pid(spec.name):
        state = get(spec.name)
        _wait_ready(state, pkey, timeout)
        return state

    fresh = existing is None
    try:
        host.ensure_host_packages()
        host.ensure_host_sysctls()
        base = ensure_base_rootfs()
        with host_lock():
            if fresh:
                _prepare(spec, base)
            else:
                _stop_leftovers(spec.name)
                _mount_overlay(spec.name, Path(json.loads((machine_dir(spec.name) / "spec.json")
                                                          .read_text())["base"]))
            host.ensure_bridge(spec.bridge, spec.network)
            _launch(spec)
        state = get(spec.name)
        _wait_ready(state, pkey, timeout)
        return state
    except BaseException:
        if fresh:
            _keep_failed_console(spec.name)
            destroy(spec.name)
        raise


def _prepare(spec: MachineSpec, base: Path) -> None:
    """Make the machine's directories, mount its overlay and write what makes it this machine."""
    d = machine_dir(spec.name)
    for sub in ("upper", "work", "rootfs", "containerd"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    _mount_overlay(spec.name, base)
    host_key = guest.write_identity(d / "rootfs", spec.name, spec.address, spec.cidr_prefix, "host0",
                                    spec.ssh_public_key)
    # Written last: a machine without spec.json is one whose preparation never finished (a run killed in
    # the middle), which the next create prepares again from the start instead of booting it half-made.
    spec_file = d / "spec.json.new"
    spec_file.write_text(json.dumps({"spec": asdict(spec), "ssh_host_key": host_key, "base": str(base)},
                                    indent=2))
    spec_file.rename(d / "spec.json")



def _mount_overlay(name: str, base: Path) -> None:
    d = machine_dir(name)
    if os.path.ismount(d / "rootfs"):
        return
    if not base.is_dir():
        raise HostSetupError(f"machine {name} was built on base {base}, which is gone from the cache; "
                             f"destroy and recreate it: python -m infra.machines.local down {name}")
    host.run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={base},upperdir={d / 'upper'},workdir={d / 'work'}", str(d / "rootfs")],
             f"mounting the overlay of machine {name}")


def _launch(spec: MachineSpec) -> None:
    d = machine_dir(spec.name)
    (d / "pid").unlink(missing_ok=True)
    cgroups = host.create_machine_cgroups(spec.name)
    nspawn = ["systemd-nspawn", *NSPAWN_FLAGS, f"--network-bridge={spec.bridge}",
              f"--machine={spec.name}", f"--hostname={spec.name}", f"--directory={d / 'rootfs'}",
              f"--bind={d / 'containerd'}:/var/lib/containerd"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "0"}
    with open(d / "console.log", "ab") as console:
        # setsid --fork: the nspawn process is reparented to init and no longer belongs to our session.
        subprocess.run(["setsid", "--fork", "sh", "-c", LAUNCHER, "launcher", str(d / "pid"),
                        ":".join(map(str, cgroups)), *nspawn],
                       stdin=subprocess.DEVNULL, stdout=console, stderr=console, env=env, check=True,
                       close_fds=True)
    # The pid file appears just before exec: wait until that pid really is systemd-nspawn.
    deadline = time.monotonic() + 10
    while not _nspawn_pid(spec.name):
        if time.monotonic() > deadline:
            raise MachineNotReadyError(f"systemd-nspawn for {spec.name} did not start; see {d / 'console.log'}:\n"
                                       f"{guest.tail(d / 'console.log')}")
        time.sleep(0.02)


def _wait_ready(state: MachineState, pkey: paramiko.PKey, timeout: float) -> None:
    guest.wait_booted(state.name, state.address, state.ssh_host_key, pkey, timeout,
                      lambda: _nspawn_pid(state.name) is not None, state.console_log)


def _keep_failed_console(name: str) -> None:
    log = machine_dir(name) / "console.log"
    if log.exists():
        failed = STATE_ROOT / ".failed"
        failed.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, failed / f"{name}-console.log")


# --- destroy ----------------------------------------------------------------------------------------

def destroy(name: str) -> None:
    """Remove a machine completely: processes, cgroups, mounts, state dir, and its bridge if now unused.

    Idempotent: destroying an absent machine does nothing. The machine is stopped at once rather than shut
    down: its disk goes with it, so nothing in it has state worth a clean shutdown.
    """
    host.require_root()
    loaded = _load(name)
    trash = None
    with host_lock():
        _stop_leftovers(name)
        d = machine_dir(name)
        _remove_nspawn_lock(d / "rootfs")
        for mount in _mounts_under(d):
            host.run(["umount", mount], f"unmounting {mount}",
                     f"Something still uses it; check `fuser -vm {mount}`.")
        if d.exists():
            # Renamed under the lock, deleted outside it: machines destroyed together delete their files
            # (images, logs) side by side instead of one after another.
            trash = STATE_ROOT / f".trash-{name}-{os.getpid()}-{time.monotonic_ns()}"
            d.rename(trash)
        if loaded is not None:
            bridge = loaded[0].bridge
            if not any(m.spec.bridge == bridge for m in list_machines()):
                wait_for_empty_bridge(bridge)
                host.remove_bridge_if_unused(bridge)
    if trash is not None:
        shutil.rmtree(trash)


def pull_plug(name: str) -> None:
    """A power loss: SIGKILL every process of a running machine at once, so nothing in it shuts down cleanly
    and its address stops answering. Its disk stays; `create` boots it again (what `pulumi up --refresh` does
    once refresh has seen it stopped)."""
    host.require_root()
    if _nspawn_pid(name) is None:
        raise MachineError(f"machine {name} is not running")
    host.kill_machine_processes(name)


def _stop_leftovers(name: str) -> None:
    """Kill whatever still runs in the machine's cgroups (after a crash or a slow shutdown) and drop them,
    with the host end of its veth."""
    host.kill_machine_processes(name)
    host.remove_machine_cgroups(name)
    # The veth normally dies with the machine's network namespace, but anything on the host that still
    # holds that namespace (seen here: a thread of the sandbox's init) keeps it, and the bridge, alive; a
    # machine booted again after a power loss then fails with "Failed to add new veth interfaces: File
    # exists". Deleting our end removes the pair. nspawn names it vb-<name> (an altname when it is long).
    subprocess.run(["ip", "link", "del", "dev", f"vb-{name}"], capture_output=True)


def _remove_nspawn_lock(rootfs: Path) -> None:
    """systemd-nspawn leaves its image lock (named after the root's device and inode) in /run: drop it."""
    if os.path.ismount(rootfs):
        st = rootfs.stat()
        Path(f"/run/systemd/nspawn/locks/inode-{st.st_dev}:{st.st_ino}").unlink(missing_ok=True)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return sorted({m for m in mounts if m.startswith(prefix)}, key=len, reverse=True)


def wait_for_empty_bridge(bridge: str, timeout: float = 5.0) -> None:
    # The kernel removes a dead machine's veth asynchronously, moments after its namespace goes.
    deadline = time.monotonic() + timeout
    while host.bridge_members(bridge) and time.monotonic() < deadline:
        time.sleep(0.05)


# --- CLI --------------------------------------------------------------------------------------------

def _cli_key() -> keys.KeyPair:
    """A key kept on the host for machines made from the command line."""
    path = STATE_ROOT / ".cli" / "id_ed25519"
    if not path.exists():
        pair = keys.generate_ed25519("pilothouse-cli")
        path.parent.mkdir(parents=True, exist_ok=True)
        guest.write(path, pair.private_key, 0o600)
        guest.write(path.with_suffix(".pub"), pair.public_key + "\n")
    return keys.KeyPair(path.read_text(), path.with_suffix(".pub").read_text().strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.machines.local",
                                     description="Create, list and remove local systemd-nspawn machines.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create machines (idempotent) and wait until SSH works")
    up.add_argument("machines", nargs="+", metavar="NAME=ADDRESS/PREFIX", help="e.g. m1=10.250.0.11/24")
    up.add_argument("--bridge", default="ph0", help="host bridge to attach them to (default ph0)")
    down = sub.add_parser("down", help="destroy machines (all of them with --all)")
    down.add_argument("names", nargs="*")
    down.add_argument("--all", action="store_true", help="destroy every machine")
    sub.add_parser("list", help="show machines and their status")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            pair = _cli_key()
            for item in args.machines:
                name, _, cidr = item.partition("=")
                address, _, prefix = cidr.partition("/")
                if not prefix.isdigit():
                    parser.error(f"{item!r}: expected NAME=ADDRESS/PREFIX, e.g. m1=10.250.0.11/24")
                started = time.monotonic()
                state = create(MachineSpec(name, address, int(prefix), args.bridge, pair.public_key),
                               pair.private_key)
                print(f"{state.name} {state.address} ready in {time.monotonic() - started:.1f}s "
                      f"(ssh -i {STATE_ROOT / '.cli' / 'id_ed25519'} root@{state.address})")
        elif args.command == "down":
            names = [m.name for m in list_machines()] if args.all else args.names
            for name in names:
                destroy(name)
                print(f"{name} destroyed")
        else:
            for m in list_machines():
                print(f"{m.name:<20} {m.status:<8} {m.address:<16} bridge={m.spec.bridge} pid={m.pid or '-'}")
    except MachineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
