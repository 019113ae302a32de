"""Debian packages the host needs, installed with apt-get only when missing.

One helper for every layer (machines, images, `invoke deps`), each raising its own error type so a failure
reads as part of what was being done.
"""
from __future__ import annotations

import os
import shutil
import subprocess


def missing(packages: list[str] | tuple[str, ...]) -> list[str]:
    """The packages dpkg does not list as installed, in the order given."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
                          capture_output=True, text=True)
    installed = {line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in dict.fromkeys(packages) if p not in installed]


def ensure(packages: list[str] | tuple[str, ...], error: type[Exception] = RuntimeError,
           log=None) -> list[str]:
    """Install whichever of `packages` is missing; returns what was installed. Raises `error` naming the fix."""
    todo = missing(packages)
    if not todo:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise error(f"missing Debian packages {' '.join(todo)}: install them as root "
                    f"(`sudo apt-get install -y {' '.join(todo)}`)")
    if log:
        log(f"installing Debian packages: {' '.join(todo)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Other tools may hold the dpkg lock briefly; wait for it instead of failing.
    lock_wait = ["-o", "DPkg::Lock::Timeout=600"]
    for step, args in (("update", ["update", "-q"]),
                       ("install", ["install", "-y", "-q", "--no-install-recommends", *todo])):
        proc = subprocess.run(["apt-get", *lock_wait, *args], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise error(f"apt-get {step} failed while installing {' '.join(todo)}: "
                        f"{(proc.stderr or proc.stdout).strip()[-1500:]}\n"
                        "Check that the Debian mirror in /etc/apt/sources.list(.d) is reachable, then retry.")
    return todo
