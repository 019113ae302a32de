"""Make a stack usable again after a run that was killed (SIGKILL, a closed terminal, a power loss).

A killed `pulumi up` leaves two things in a file backend: its lock, which makes every later command fail
with "the stack is currently locked", and the operations it had started, recorded as pending. Pulumi goes
on with pending operations but warns on every run until an interactive `pulumi refresh` clears them, and a
resource whose create was cut off is not in the state at all, so `pulumi destroy` would leave it behind.

Every create of this project's resources may simply run again: a local machine of the same spec is adopted
(infra/machines/local.py), the playbook converges, pulumi-kubernetes applies server-side (an object that
exists is updated). So `recover` removes the locks of runs that are dead and drops the pending operations,
and the next `up` re-does the cut-off work; it returns the machines whose create was cut off, for a
`destroy` that must not leave them running.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pulumi import automation as auto

# A local machine's URN ends with its parent component's type, then the dynamic resource's.
# Machines this host makes (local machines, and VMs beside them): the dynamic resources of these components.
MACHINE_TYPES = tuple(f"pilothouse:machines:{c}$pulumi-python:dynamic:Resource"
                      for c in ("LocalMachines", "LibvirtMachines"))


@dataclass(frozen=True)
class Recovered:
    locks: list[str]  # "pid N, started T" of each stale lock removed
    pending: list[str]  # "<resource name>: interrupted while <creating|updating|deleting|...>"
    cut_off_machines: list[str]  # local machines and VMs whose create was cut off (not in the state)


def _pulumi_alive(pid: int) -> bool:
    """True if `pid` is a running Pulumi process on this host (a dead run's pid may since belong to another)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return os.path.basename(argv0).startswith(b"pulumi")


def stale_locks(state_dir: Path, stack_name: str) -> list[tuple[Path, dict]]:
    """Lock files of `stack_name` left by Pulumi processes of this host that are no longer running. A lock
    taken on another host, or by a live process, is not ours to judge: Pulumi reports it as it is."""
    lock_dir = state_dir / ".pulumi" / "locks" / "organization" / "pilothouse" / stack_name
    found = []
    for path in sorted(lock_dir.glob("*.json")) if lock_dir.is_dir() else []:
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if content.get("hostname") == socket.gethostname() and not _pulumi_alive(int(content.get("pid", 0))):
            found.append((path, content))
    return found


def _has_pending(state_dir: Path, stack_name: str) -> bool:
    """Whether the stack's checkpoint records pending operations, read from the file backend directly: an
    `export` through the CLI would add a second or two to every `invoke up`. Unsure (no file, unreadable)
    counts as yes, so the export decides."""
    try:
        checkpoint = json.loads((state_dir / ".pulumi" / "stacks" / "pilothouse" / f"{stack_name}.json").read_text())
    except (OSError, ValueError):
        return True
    return bool(((checkpoint.get("checkpoint") or {}).get("latest") or {}).get("pending_operations"))


def recover(st: auto.Stack, state_dir: Path, say: Callable[[str], None] = print) -> Recovered:
    """Remove stale locks and pending operations of `st`, saying what was found; does nothing to a stack
    that was not interrupted."""
    locks = []
    for path, content in stale_locks(state_dir, st.name):
        path.unlink()
        locks.append(f"pid {content.get('pid')}, started {content.get('timestamp')}")
        say(f"removed the lock of an interrupted Pulumi run ({locks[-1]})")
    if not _has_pending(state_dir, st.name):
        return Recovered(locks, [], [])
    exported = st.export_stack()
    operations = exported.deployment.get("pending_operations") or []
    if not operations:
        return Recovered(locks, [], [])
    pending = [f"{op['resource']['urn'].rsplit('::', 1)[-1]}: interrupted while {op['type']}" for op in operations]
    cut_off = [op["resource"].get("inputs", {}).get("name") for op in operations
               if op["type"] == "creating" and op["resource"]["urn"].split("::")[-2].endswith(MACHINE_TYPES)]
    exported.deployment["pending_operations"] = []
    st.import_stack(exported)
    say("an earlier run was interrupted; its unfinished operations are dropped from the state and done again:\n"
        + "\n".join(f"  {p}" for p in pending))
    return Recovered(locks, pending, [name for name in cut_off if name])
