"""invoke tasks: the day-to-day commands. `invoke --list` shows them, `invoke --help <task>` explains one."""
from __future__ import annotations

import shutil
import subprocess
import sys

from invoke import Collection, Exit, task

# Debian packages the host needs: toolchains for the artifacts, nspawn + debootstrap for the local
# machines, and the image/registry tools. Installed by `invoke deps` (every other task calls it).
HOST_PACKAGES = {
    "gcc": "gcc", "openssl": "openssl", "ip": "iproute2", "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container", "umoci": "umoci", "skopeo": "skopeo", "runc": "runc",
    "docker-registry": "docker-registry", "ssh": "openssh-client",
}


@task(help={"quiet": "print nothing when everything is already installed"})
def deps(c, quiet=False):
    """Install the Debian packages the host needs (apt-get, only what is missing)."""
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None})
    if shutil.which("go") is None:
        raise Exit("Go is missing: install Go >= 1.24 (Debian bookworm's golang is too old; use the official "
                   "tarball or backports), or set `source: download` in infra/artifacts/lock.yaml.")
    if not missing:
        if not quiet:
            print("host packages: all present")
        return
    print(f"installing Debian packages: {' '.join(missing)}")
    c.run("apt-get update -qq", pty=False)
    c.run(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {' '.join(missing)}")


@task(help={"list": "print name, version, sha256 and path of every artifact",
            "export": "also copy the whole set into this directory (for an offline site)"})
def artifacts(c, list=False, export=None):  # noqa: A002 - `--list` is the flag users expect
    """Build (or fetch, per infra/artifacts/lock.yaml) every pinned binary into ~/.cache/pilothouse.

    The first run compiles Kubernetes, etcd, CoreDNS and the Pulumi CLI from Go modules (about 20
    minutes on 2 cores); later runs reuse the cache and take seconds."""
    deps(c, quiet=True)
    flags = (" --list" if list else "") + (f" --export {export}" if export else "")
    result = c.run(f"{sys.executable} -m infra.artifacts{flags}", warn=True, pty=False)
    if result.failed:
        raise Exit("building the artifacts failed; the message above says what to fix", code=1)


@task(help={"k": "only run tests matching this pytest -k expression",
            "fast": "only the unit tests (no artifacts, no machines)"})
def test(c, k=None, fast=False):
    """Run the test suite: unit tests, then the real binaries, machines and cluster tests."""
    deps(c, quiet=True)
    args = ["-m", "not artifacts and not machines"] if fast else []
    if not fast:
        artifacts(c)
    if k:
        args += ["-k", k]
    code = subprocess.call([sys.executable, "-m", "pytest", "-v", "-rs", *args])
    if code:
        raise Exit(code=code)


ns = Collection(deps, artifacts, test)
