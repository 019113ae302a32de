"""The base root filesystem every local machine boots from (read-only, the lower layer of its overlay).

Built once with debootstrap from the host's own Debian mirror and cached under
~/.cache/pilothouse/rootfs/<suite>-<recipe hash>/. The hash covers the package list and this file, so a
changed recipe builds a new base and an old one is never half-updated. The build happens in a temp directory
renamed into place only when complete: a directory with the final name is always a finished base.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from infra.artifacts import load_lock
from infra.machines.errors import RootfsBuildError
from infra.machines.host import ensure_host_packages

SUITE = "bookworm"
# What a node needs before Ansible configures it: the OS, at the suite's current versions. The cluster's own
# packages (containerd, runc, CNI plugins, haproxy, keepalived) are pinned in lock.yaml `machine_packages:`;
# Kubernetes binaries themselves come from the artifacts.
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "openssh-sftp-server", "iproute2", "iptables",
    "iputils-ping", "python3", "ca-certificates", "procps", "kmod", "conntrack", "ethtool", "socat",
    "ebtables", "curl",
)
# Installed but not started at boot: Ansible configures and enables them on the machines that need them.
DISABLED_UNITS = ("containerd.service", "haproxy.service", "keepalived.service",
                  "apt-daily.timer", "apt-daily-upgrade.timer")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# systemd-nspawn mounts the v1 controllers read-only; kubelet and containerd must create cgroups in them.
CGROUP_RW_SCRIPT = """#!/bin/sh
set -e
awk '$3 == "cgroup" {print $2}' /proc/self/mounts | while read -r dir; do
    mount -o remount,bind,rw "$dir"
done
"""
CGROUP_RW_UNIT = """[Unit]
Description=Make cgroup v1 controllers writable for containerd and kubelet
DefaultDependencies=no
Before=sysinit.target containerd.service kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/pilothouse-cgroup-rw

[Install]
WantedBy=sysinit.target
"""
# Each machine gets its own host key written at create time (see local.py), so the base has none.
SSHD_CONFIG = """HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""
JOURNALD_CONFIG = """[Journal]
Storage=persistent
SystemMaxUse=64M
"""
# Keep documentation out from the start instead of deleting it afterwards.
DPKG_NODOC = """path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""


def cache_root() -> Path:
    return Path(os.environ.get("PILOTHOUSE_CACHE", Path.home() / ".cache" / "pilothouse"))


def host_mirrors() -> tuple[str, str]:
    """The (main, security) Debian mirrors the host's apt uses, so debootstrap needs no extra config."""
    main, security = DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for stanza in sources.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith("#"))
            uri = fields.get("URIs", "").split()[0] if fields.get("URIs") else ""
            suites = fields.get("Suites", "").split()
            if f"{SUITE}-security" in suites and uri:
                security = uri
            elif SUITE in suites and uri:
                main = uri
    elif Path("/etc/apt/sources.list").exists():
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri, suite = [p for p in parts[1:] if not p.startswith("[")][:2]
                if suite == f"{SUITE}-security":
                    security = uri
                elif suite == SUITE:
                    main = uri
    return main.rstrip("/"), security.rstrip("/")


def pinned_packages() -> dict[str, str]:
    return load_lock()["machine_packages"]


def recipe_key() -> str:
    recipe = {"suite": SUITE, "packages": BASE_PACKAGES, "pinned": pinned_packages(), "mirrors": host_mirrors(),
              "source": Path(__file__).read_text()}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{SUITE}-{digest}"


def base_rootfs_path() -> Path:
    return cache_root() / "rootfs" / recipe_key()


def ensure_base_rootfs() -> Path:
    """Return the cached base rootfs, building it first if needed (about 2 minutes cold)."""
    final = base_rootfs_path()
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Serialise builders: machines created in parallel all ask for the base at once.
    with open(final.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        ensure_host_packages()
        free = shutil.disk_usage(final.parent).free
        if free < 2 << 30:
            raise RootfsBuildError(f"only {free >> 20} MiB free under {final.parent}; the base rootfs needs "
                                   "about 1 GiB while building. Free space or set PILOTHOUSE_CACHE to a larger disk.")
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        staging.chmod(0o755)  # it becomes "/" of every machine; mkdtemp's 0700 would lock out non-root users
        try:
            _build(staging)
            os.rename(staging, final)
        finally:
            if staging.exists():
                _remove_tree(staging)
    return final


def _remove_tree(path: Path) -> None:
    # A failed build can leave /proc mounted inside; never recurse into a live mount.
    proc = path / "proc"
    if os.path.ismount(proc):
        subprocess.run(["umount", "-l", str(proc)], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _build(root: Path) -> None:
    main, security = host_mirrors()
    pinned = pinned_packages()
    started = time.monotonic()
    _run(["debootstrap", "--variant=minbase", "--components=main", "--merged-usr",
          "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg", SUITE, str(root), main],
         "debootstrap", root)
    _write(root / "etc/apt/sources.list", "")
    _write(root / "etc/apt/sources.list.d/debian.sources",
           f"Types: deb\nURIs: {main}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
           "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
           f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
           "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    _write(root / "etc/apt/apt.conf.d/90pilothouse", 'APT::Install-Recommends "false";\n')
    _write(root / "etc/dpkg/dpkg.cfg.d/90pilothouse-nodoc", DPKG_NODOC)
    # Without this, package scripts run by invoke-rc.d would start haproxy & co. on the host itself.
    _write(root / "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        _chroot(root, ["apt-get", "update"])
        pins = [f"{name}={version}" for name, version in pinned.items()]
        _chroot(root, ["apt-get", "install", "-y", "--no-install-recommends", *BASE_PACKAGES, *pins],
                fix="A pinned version in infra/artifacts/lock.yaml `machine_packages:` may have been replaced "
                    "by a Debian security update: `apt-cache policy <package>` shows the one to pin.")
        _chroot(root, ["systemctl", "disable", *DISABLED_UNITS])
        _chroot(root, ["systemctl", "enable", "systemd-networkd.service", "ssh.service"])
        _chroot(root, ["apt-get", "clean"])
    finally:
        subprocess.run(["umount", str(root / "proc")], check=False)
    (root / "usr/sbin/policy-rc.d").unlink()
    _write(root / "usr/local/sbin/pilothouse-cgroup-rw", CGROUP_RW_SCRIPT, mode=0o755)
    _write(root / "etc/systemd/system/pilothouse-cgroup-rw.service", CGROUP_RW_UNIT)
    _symlink(root, "/etc/systemd/system/pilothouse-cgroup-rw.service",
             "etc/systemd/system/sysinit.target.wants/pilothouse-cgroup-rw.service")
    _write(root / "etc/ssh/sshd_config.d/pilothouse.conf", SSHD_CONFIG)
    _write(root / "etc/systemd/journald.conf.d/pilothouse.conf", JOURNALD_CONFIG)
    _write(root / "etc/resolv.conf", "# Machines reach only their own network: no upstream DNS.\n")
    (root / "var/lib/containerd").mkdir(parents=True, exist_ok=True)
    _clean(root)
    (root / ".pilothouse-base").write_text(json.dumps(
        {"suite": SUITE, "packages": BASE_PACKAGES, "pinned": pinned, "mirror": main,
         "build_seconds": round(time.monotonic() - started, 1)}, indent=2))


def _clean(root: Path) -> None:
    """Drop what a machine never needs and what must be unique per machine."""
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/debconf/*-old",
                    "etc/ssh/ssh_host_*", "var/lib/dbus/machine-id", "var/log/*.log",
                    "var/log/apt/*", "usr/share/doc/*/changelog*", "tmp/*"):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # Empty, not absent: systemd then gives each boot the machine id local.py writes per machine.
    _write(root / "etc/machine-id", "")


def _run(cmd: list[str], what: str, root: Path, env: dict[str, str] | None = None,
         fix: str = "If the mirror is unreachable, check /etc/apt/sources.list(.d) and retry.") -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        log = root.parent / f"{root.name}.failed.log"
        log.write_text(proc.stdout + proc.stderr)
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise RootfsBuildError(f"{what} failed (exit {proc.returncode}); full output in {log}:\n{tail}\n{fix}")


def _chroot(root: Path, cmd: list[str], **kwargs) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    _run(["chroot", str(root), *cmd], " ".join(cmd[:2]), root, env=env, **kwargs)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _symlink(root: Path, target: str, link: str) -> None:
    path = root / link
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_symlink():
        path.symlink_to(target)
