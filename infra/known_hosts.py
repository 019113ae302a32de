"""A cluster's known_hosts file: the SSH host keys checked before anything logs into its machines.

One file per cluster, in its directory on this host (`known_hosts`, 0600), used by Ansible, `invoke ssh`,
`invoke status`, the drills and the existing backend's checks alike:

- a machine whose host key the project pinned when it made it (the local backend generates each machine's key)
  has that key written here before every playbook run and is checked strictly (`StrictHostKeyChecking=yes`):
  a machine answering with any other key is refused;
- a host whose key is not known beforehand (backends existing and aws) is trusted on first use: ssh records the
  key the first connection sees in the same file (`accept-new`) and refuses a different key afterwards.
"""
from __future__ import annotations

import os
from pathlib import Path

FILE_NAME = "known_hosts"
# The comment that marks a line as a pinned key the project wrote, so a machine gone from the cluster loses its line.
PINNED = "pilothouse-pinned"


def options(known_hosts: Path | str, pinned: bool) -> list[str]:
    """ssh options that check a host's key against `known_hosts`: strictly for a pinned key, else recording the
    first key seen. Host names stay readable (not hashed), so a person can audit the file."""
    return ["-o", f"UserKnownHostsFile={known_hosts}", "-o", f"StrictHostKeyChecking={'yes' if pinned else 'accept-new'}",
            "-o", "HashKnownHosts=no"]


def entry(address: str, host_key: str) -> str:
    """The known_hosts line of a pinned key ('ssh-ed25519 AAAA... comment') at the address SSH connects to."""
    return f"{address} {' '.join(host_key.split()[:2])} {PINNED}"


def write(path: Path, pinned: list[str]) -> None:
    """Make the file's pinned lines exactly the `entry` lines given, dropping any other line for their addresses (a
    machine made anew has a new key) and keeping the keys ssh recorded on first use. The file is 0600 in a 0700
    directory; it is rewritten only when its content changes."""
    addresses = {line.split()[0] for line in pinned}
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = None
    kept = [line for line in (old or "").splitlines() if line.strip() and line.split()[-1] != PINNED
            and not set(line.split()[0].split(",")) & addresses]
    text = "".join(f"{line}\n" for line in kept + sorted(pinned))
    if text == old:
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
