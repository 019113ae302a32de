"""What makes a machine tree one particular machine, and the wait for it to boot: shared by the `local`
backend (an nspawn machine's overlay) and the `libvirt` backend (a VM's disk).
"""
from __future__ import annotations

import contextlib
import fcntl
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import paramiko

from infra.machines import keys
from infra.machines.errors import MachineNotReadyError


def write_identity(root: Path, name: str, address: str, prefix: int, interface: str, ssh_public_key: str) -> str:
    """Write hostname, machine id, static address, root's authorized key and a fresh SSH host key under
    `root`; returns the host's public key line (to pin it)."""
    host_key = keys.generate_ed25519(comment=f"root@{name}")
    write(root / "etc/hostname", f"{name}\n")
    write(root / "etc/hosts", f"127.0.0.1 localhost\n{address} {name}\n"
                              "::1 localhost ip6-localhost ip6-loopback\n")
    write(root / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    # Static address, no gateway: machines reach the bridge network and nothing beyond it.
    write(root / f"etc/systemd/network/10-{interface}.network",
          f"[Match]\nName={interface}\n\n[Network]\nAddress={address}/{prefix}\n"
          "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    write(root / "root/.ssh/authorized_keys", ssh_public_key.strip() + "\n", 0o600)
    (root / "root/.ssh").chmod(0o700)
    write(root / "etc/ssh/ssh_host_ed25519_key", host_key.private_key, 0o600)
    write(root / "etc/ssh/ssh_host_ed25519_key.pub", host_key.public_key + "\n")
    return host_key.public_key


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console log)"


def wait_booted(name: str, address: str, host_key: str, pkey: paramiko.PKey, timeout: float,
                alive: Callable[[], bool], console_log: Path) -> None:
    """Wait until root logs in over SSH (host key pinned) and systemd says the boot is finished; stop early
    when `alive()` says the machine is gone."""
    deadline = time.monotonic() + timeout
    last = "no answer on port 22"
    while time.monotonic() < deadline:
        if not alive():
            raise MachineNotReadyError(f"machine {name} stopped while booting; last lines of "
                                       f"{console_log}:\n{tail(console_log)}")
        attempt = min(5.0, max(deadline - time.monotonic(), 0.01))  # never wait past the deadline
        try:
            result = ssh_run(address, host_key, pkey, "systemctl is-system-running", timeout=attempt)
        except (OSError, paramiko.SSHException) as e:
            last = f"ssh: {e}"
            time.sleep(0.2)
            continue
        if result in ("running", "degraded"):
            return
        last = f"systemctl is-system-running: {result}"
        time.sleep(0.2)
    raise MachineNotReadyError(f"machine {name} at {address} not ready after {timeout:.0f}s "
                               f"({last}); see {console_log}:\n{tail(console_log)}")


def ssh_run(address: str, host_key: str, pkey: paramiko.PKey, command: str, timeout: float) -> str:
    client = paramiko.SSHClient()
    key = keys.host_key_from_line(host_key)
    client.get_host_keys().add(address, key.get_name(), key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(address, username="root", pkey=pkey, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, allow_agent=False, look_for_keys=False)
        _, stdout, _ = client.exec_command(command, timeout=timeout)
        return stdout.read().decode().strip()
    finally:
        client.close()


@contextlib.contextmanager
def state_lock(root: Path) -> Iterator[None]:
    """Serialise changes under a backend's state root across threads and processes."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
