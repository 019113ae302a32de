"""The tree every libvirt VM's disk is made from: the local machines' base rootfs plus Debian's kernel.

No cloud image is downloaded: the tree is the cached debootstrap base (infra/machines/rootfs.py) with the
kernel package pinned in lock.yaml `vm_packages:` installed into a copy, so a VM runs the same userland as a
local machine, on a kernel of its own. Cached under ~/.cache/pilothouse/vm/<suite>-<recipe hash>/:

    root/          the tree (each VM's disk is an ext4 filesystem made from it plus the VM's own files)
    vmlinuz        the kernel and its initramfs, booted directly by qemu (no boot loader on the disk)
    initrd.img

Like the base rootfs, it is built in a temporary directory renamed into place when complete.
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
from infra.machines import rootfs
from infra.machines.errors import RootfsBuildError

# A VM boots from /dev/vda directly; the kernel modules the cluster needs are loaded at boot, since nothing
# in a fresh VM would load the bridge netfilter hooks kube-proxy relies on.
FSTAB = "/dev/vda / ext4 rw,relatime 0 1\n"
MODULES = "br_netfilter\noverlay\nvxlan\n"


def pinned_packages() -> dict[str, str]:
    return load_lock()["vm_packages"]


def recipe_key() -> str:
    recipe = {"base": rootfs.recipe_key(), "packages": pinned_packages(), "source": Path(__file__).read_text()}
    return f"{rootfs.SUITE}-{hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]}"


def vm_base_path() -> Path:
    return rootfs.cache_root() / "vm" / recipe_key()


def ensure_vm_base(log=lambda _msg: None) -> Path:
    """Return the cached VM tree, building it first if needed (about 80 s with the base rootfs cached)."""
    final = vm_base_path()
    if final.is_dir():
        return final
    base = rootfs.ensure_base_rootfs()
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        log(f"building the VM disk tree (Debian kernel {pinned_packages()}) into {final}")
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        staging.chmod(0o755)
        try:
            _build(base, staging)
            os.rename(staging, final)
        finally:
            if staging.exists():
                _remove(staging)
    return final


def _build(base: Path, staging: Path) -> None:
    started = time.monotonic()
    root = staging / "root"
    rootfs._run(["cp", "-a", "--reflink=auto", str(base), str(root)], "copying the base rootfs", staging)
    # The base has no resolver (machines reach only their own network); apt in the chroot needs the host's.
    policy = root / "usr/sbin/policy-rc.d"
    rootfs._write(policy, "#!/bin/sh\nexit 101\n", mode=0o755)
    mounts = [(["mount", "-t", "proc", "proc", str(root / "proc")], root / "proc"),
              (["mount", "--bind", "/etc/resolv.conf", str(root / "etc/resolv.conf")], root / "etc/resolv.conf")]
    done = []
    try:
        for cmd, target in mounts:
            subprocess.run(cmd, check=True)
            done.append(target)
        pins = [f"{name}={version}" for name, version in pinned_packages().items()]
        rootfs._chroot(root, ["apt-get", "update"])
        rootfs._chroot(root, ["apt-get", "install", "-y", "--no-install-recommends", *pins],
                       fix="A version pinned in infra/artifacts/lock.yaml `vm_packages:` may have been replaced "
                           "by a Debian update: `apt-cache policy <package>` shows the one to pin.")
        rootfs._chroot(root, ["apt-get", "clean"])
    finally:
        for target in reversed(done):
            subprocess.run(["umount", str(target)], check=False)
    policy.unlink()
    rootfs._write(root / "etc/fstab", FSTAB)
    rootfs._write(root / "etc/modules-load.d/pilothouse.conf", MODULES)
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise RootfsBuildError(f"expected one kernel and one initramfs in {root / 'boot'}, found "
                               f"{[p.name for p in kernels + initrds]}")
    shutil.copy(kernels[0], staging / "vmlinuz")
    shutil.copy(initrds[0], staging / "initrd.img")
    rootfs._clean(root)
    (staging / "recipe.json").write_text(json.dumps(
        {"base": str(base), "packages": pinned_packages(), "kernel": kernels[0].name,
         "build_seconds": round(time.monotonic() - started, 1)}, indent=2))


def _remove(path: Path) -> None:
    for target in (path / "root/proc", path / "root/etc/resolv.conf"):
        if os.path.ismount(target):
            subprocess.run(["umount", "-l", str(target)], check=False)
    shutil.rmtree(path, ignore_errors=True)
