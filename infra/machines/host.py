"""What the host itself needs before it can run machines: packages, kernel settings, a bridge, cgroups.

PID 1 here is not systemd, so nothing else will create a cgroup per machine or a bridge for us: both are
plain kernel objects managed directly through /sys and `ip`.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path

from infra import debian
from infra.machines.errors import HostSetupError

# Debian packages the host needs to build rootfs images and boot machines.
HOST_PACKAGES = ("systemd-container", "debootstrap", "iproute2", "util-linux", "mount")

# Machines cannot write /proc/sys outside net.*, so what kubelet and containerd expect is set on the host.
HOST_SYSCTLS = {
    "vm.overcommit_memory": 1,
    "kernel.panic": 10,
    "kernel.panic_on_oops": 1,
}
# Raised, never lowered: each kubelet and containerd uses many inotify instances; 128 runs out at 3 nodes.
HOST_SYSCTL_MINIMUMS = {
    "fs.inotify.max_user_instances": 8192,
    "fs.inotify.max_user_watches": 524288,
}

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Marks bridges we made, so we never delete one somebody else owns.
BRIDGE_ALIAS = "pilothouse"


def run(cmd: list[str], what: str, fix: str = "", **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure raise HostSetupError naming what failed, its output and the fix."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise HostSetupError(f"{what} failed ({' '.join(cmd[:4])} exited {proc.returncode}): {detail}"
                             + (f"\n{fix}" if fix else ""))
    return proc


def require_root() -> None:
    if os.geteuid() != 0:
        raise HostSetupError("local machines need root (mounts, cgroups, bridges): run as root or with sudo")


def ensure_host_packages(packages: tuple[str, ...] = HOST_PACKAGES) -> list[str]:
    """Install whichever of `packages` is missing with apt-get; returns what was installed."""
    require_root()
    return debian.ensure(packages, HostSetupError)


def ensure_host_sysctls() -> None:
    """Set the kernel settings machines cannot set themselves; idempotent, never lowers a limit."""
    for key, value in HOST_SYSCTLS.items():
        _write_sysctl(key, value)
    for key, minimum in HOST_SYSCTL_MINIMUMS.items():
        if int(_read_sysctl(key)) < minimum:
            _write_sysctl(key, minimum)


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def _read_sysctl(key: str) -> str:
    return _sysctl_path(key).read_text().strip()


def _write_sysctl(key: str, value: int) -> None:
    if _read_sysctl(key) != str(value):
        try:
            _sysctl_path(key).write_text(str(value))
        except OSError as e:
            raise HostSetupError(f"cannot set {key}={value} on the host ({e}); run as root on a host "
                                 "whose /proc/sys is writable") from e


# --- bridge -----------------------------------------------------------------------------------------

def bridge_address(network: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    """The host's own address on a machine network: always the first host (.1 in a /24)."""
    return ipaddress.IPv4Interface(f"{network.network_address + 1}/{network.prefixlen}")


def bridge_exists(bridge: str) -> bool:
    return Path("/sys/class/net", bridge, "bridge").is_dir()


def bridge_members(bridge: str) -> list[str]:
    brif = Path("/sys/class/net", bridge, "brif")
    return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def ensure_bridge(bridge: str, network: ipaddress.IPv4Network) -> None:
    """Create `bridge` with the host at .1 of `network`, or check an existing one matches."""
    want = bridge_address(network)
    if Path("/sys/class/net", bridge).exists():
        if not bridge_exists(bridge):
            raise HostSetupError(f"interface {bridge} exists and is not a bridge; pick another bridge name")
        shown = run(["ip", "-4", "-o", "addr", "show", "dev", bridge], "reading bridge address").stdout
        if str(want) not in shown.split():
            raise HostSetupError(f"bridge {bridge} exists without {want} (it has: {shown.strip() or 'none'}); "
                                 "machines on one bridge must share one network: use another bridge or CIDR")
        return
    run(["ip", "link", "add", bridge, "type", "bridge"], f"creating bridge {bridge}")
    try:
        run(["ip", "link", "set", bridge, "alias", BRIDGE_ALIAS], "marking bridge")
        run(["ip", "addr", "add", str(want), "dev", bridge], f"adding {want} to {bridge}")
        run(["ip", "link", "set", bridge, "up"], f"bringing {bridge} up")
    except HostSetupError:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        raise


def remove_bridge_if_unused(bridge: str) -> bool:
    """Delete a bridge we created once nothing is attached to it; returns True if it was deleted."""
    if not bridge_exists(bridge) or bridge_members(bridge):
        return False
    alias = Path("/sys/class/net", bridge, "ifalias").read_text().strip()
    if alias != BRIDGE_ALIAS:
        return False
    run(["ip", "link", "del", bridge], f"deleting bridge {bridge}")
    return True


# --- cgroups (v1) -----------------------------------------------------------------------------------

def cgroup_hierarchies(mounts: str | None = None) -> list[Path]:
    """Mount points of every cgroup hierarchy: each v1 controller, name=systemd, and the v2 one if mounted.

    The v2 one matters even though machines use v1: systemd-nspawn places its supervisor and payload
    cgroups relative to its own v2 cgroup, so a machine left at the v2 root would share them with others.
    """
    found = []
    if mounts is None:
        mounts = Path("/proc/self/mounts").read_text()
    for line in mounts.splitlines():
        fields = line.split()
        # Only the host's hierarchies: a systemd-nspawn starting in parallel briefly mounts its own
        # cgroup2 under /tmp/unifiedXXXXXX, which is gone by the time we would use it.
        if fields[2] in ("cgroup", "cgroup2") and Path(fields[1]).parent == CGROUP_ROOT:
            found.append(Path(fields[1]))
    if not any(p.name == "systemd" for p in found):
        raise HostSetupError("no name=systemd cgroup v1 hierarchy is mounted; systemd-nspawn needs one: "
                             "mkdir -p /sys/fs/cgroup/systemd && "
                             "mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd")
    return found


def machine_cgroups(name: str) -> list[Path]:
    return [h / f"pm-{name}" for h in cgroup_hierarchies()]


def create_machine_cgroups(name: str) -> list[Path]:
    """One `pm-<name>` cgroup per hierarchy, so machines never share cgroups (two kubelets would fight)."""
    paths = machine_cgroups(name)
    for path in paths:
        path.mkdir(exist_ok=True)
        if path.parent.name == "cpuset":
            # A new v1 cpuset accepts no task until it has cpus and mems of its own.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((path.parent / knob).read_text())
    return paths


def cgroup_pids(path: Path) -> set[int]:
    pids: set[int] = set()
    if path.is_dir():
        for procs in path.rglob("cgroup.procs"):
            try:
                pids.update(int(p) for p in procs.read_text().split())
            except OSError:
                continue  # removed while we walked
    return pids


def machine_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for path in machine_cgroups(name):
        pids |= cgroup_pids(path)
    return pids


def kill_machine_processes(name: str, timeout: float = 10.0) -> None:
    """SIGKILL everything left in the machine's cgroups and wait until they are gone."""
    deadline = time.monotonic() + timeout
    while pids := machine_pids(name):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise HostSetupError(f"processes {sorted(pids)} of machine {name} survive SIGKILL; "
                                 "they may be stuck in the kernel (D state): check `ps -o pid,stat,cmd`")
        time.sleep(0.1)


def remove_machine_cgroups(name: str) -> None:
    """rmdir the machine's cgroups, deepest first (systemd and kubelet inside create children)."""
    for path in machine_cgroups(name):
        if not path.is_dir():
            continue
        for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            _rmdir_cgroup(sub)
        _rmdir_cgroup(path)


def _rmdir_cgroup(path: Path) -> None:
    # A cgroup emptied a moment ago can still be busy while the kernel finishes tearing tasks down.
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    raise HostSetupError(f"cannot remove cgroup {path}: still busy; check `cat {path}/cgroup.procs`")
