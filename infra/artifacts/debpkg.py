"""Debian packages for the images: binary packages unpacked into a layer, the shared libraries its programs
load, and source packages for the one program Debian builds without a feature the notes use.

Everything comes through apt, from the Debian archive the host is configured for, at the versions lock.yaml
pins (`images.debian:` for binary packages, a family's `source:` for a source package).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .store import ArtifactError, cache_root

LOCK = Path(__file__).with_name("lock.yaml")

# Paths from Debian packages that an image never needs.
PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/bug",
         "usr/share/vim", "usr/share/apport", "etc/init.d", "etc/logrotate.d", "etc/default", "etc/ufw",
         "lib/systemd", "usr/lib/systemd", "etc/cron.daily")


def run(cmd: list[str], what: str, **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise ArtifactError(f"{what} failed ({' '.join(cmd[:4])} ...):\n{(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc.stdout


def fetch_deb(package: str, version: str) -> Path:
    """The pinned .deb, downloaded once into the cache with `apt-get download`."""
    cache = cache_root() / "images" / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    name = f"{package}_{version.replace(':', '%3a')}_"
    found = [p for p in cache.glob(name + "*.deb")]
    if found:
        return found[0]
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        proc = subprocess.run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp,
                              capture_output=True, text=True)
        debs = list(tmp.glob("*.deb"))
        if proc.returncode != 0 or len(debs) != 1:
            raise ArtifactError(
                f"cannot download Debian package {package}={version}: {proc.stderr.strip()[-400:]}\n"
                f"Run `apt-get update`; if Debian no longer serves this version, `apt-cache policy {package}` "
                f"shows the current one: pin it under `images.debian:` in {LOCK}.")
        os.rename(debs[0], cache / debs[0].name)
        return cache / debs[0].name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unpack_debs(packages: list[str], pins: dict, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for package in packages:
        run(["dpkg-deb", "-x", str(fetch_deb(package, pins[package])), str(into)], f"unpacking {package}")


def prune(root: Path) -> None:
    for rel in PRUNE:
        target = root / rel
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)


def _is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def add_shared_libs(layer: Path, sysroot: Path) -> None:
    """Copy from `sysroot` (unpacked library packages) exactly the shared libraries `layer`'s ELF files load.

    The sysroot's own loader resolves them, so nothing comes from the host; a library it has to take
    from the host means a package is missing from the family's `libdebs`.
    """
    loader = sysroot / "lib64" / "ld-linux-x86-64.so.2"
    if not loader.exists():
        raise ArtifactError("dynamically linked files need `libc6` in the family's libdebs (lock.yaml `images:`)")
    search = ":".join(str(sysroot / d) for d in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"))
    needed: set[Path] = {Path("lib64/ld-linux-x86-64.so.2")}
    for path in sorted(p for p in layer.rglob("*") if _is_elf(p)):
        proc = subprocess.run([str(loader), "--library-path", search, "--list", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            continue  # statically linked: nothing to copy
        for line in proc.stdout.splitlines():
            if "=>" not in line:
                continue
            target = line.split("=>")[1].split("(")[0].strip()
            if target == "not found" or not target.startswith(str(sysroot)):
                lib = line.split("=>")[0].strip()
                raise ArtifactError(f"{path.relative_to(layer)} needs {lib}, which no package in the family's "
                                    "libdebs provides; add its Debian package there (lock.yaml `images:`)")
            needed.add(Path(target).relative_to(sysroot))
    for rel in sorted(needed):
        _copy_with_links(sysroot, rel, layer)


def _copy_with_links(src_root: Path, rel: Path, dst_root: Path) -> None:
    """Copy src_root/rel to dst_root/rel, following a chain of symlinks and copying each link too."""
    while True:
        src, dst = src_root / rel, dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            return
        if src.is_symlink():
            link = os.readlink(src)
            os.symlink(link, dst)
            rel = Path(link).relative_to("/") if link.startswith("/") else (rel.parent / link)
            rel = Path(os.path.normpath(rel))
            continue
        shutil.copy2(src, dst)
        return


# ---- source packages ---------------------------------------------------------------------------------

def _debian_source_lines() -> str:
    """deb-src lines for every Debian archive the host's apt uses for binary packages (the same mirror and
    suites), so a source package comes from where its binaries do."""
    out = run(["apt-get", "indextargets", "--format", "$(ORIGIN)\t$(REPO_URI)\t$(RELEASE)\t$(COMPONENT)",
               "Identifier: Packages"], "listing apt's package indexes")
    lines = sorted({f"deb-src {uri} {release} {component}" for origin, uri, release, component
                    in (line.split("\t") for line in out.splitlines() if line.count("\t") == 3)
                    if origin == "Debian"})
    if not lines:
        raise ArtifactError("apt knows no Debian archive (`apt-get indextargets` lists none): configure one in "
                            "/etc/apt/sources.list.d/ and run `apt-get update`")
    return "\n".join(lines) + "\n"


def fetch_source(package: str, version: str) -> Path:
    """The pinned source package's files (.dsc and its tarballs), downloaded once with `apt-get source`.

    apt reads the sources index through a private list directory, so the host's apt configuration is left as
    it is; apt checks every file against the archive's signed index.
    """
    cache = cache_root() / "images" / "sources"
    done = cache / f"{package}_{version.replace(':', '%3a')}"
    if (done / ".complete").exists():
        return done
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        (tmp / "lists" / "partial").mkdir(parents=True)
        (tmp / "sources.list").write_text(_debian_source_lines())
        apt = ["apt-get", "-q", "-o", f"Dir::Etc::SourceList={tmp / 'sources.list'}",
               "-o", "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={tmp / 'lists'}"]
        run([*apt, "update"], "reading Debian's source package index")
        (tmp / "files").mkdir()
        proc = subprocess.run([*apt, "source", "--download-only", f"{package}={version}"], cwd=tmp / "files",
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ArtifactError(f"cannot download the Debian source package {package}={version}: "
                                f"{proc.stderr.strip()[-400:]}\n`apt-cache showsrc {package}` (with deb-src "
                                f"lines) shows the versions Debian serves: pin one in {LOCK}.")
        (tmp / "files" / ".complete").touch()
        if done.exists():
            shutil.rmtree(done)
        os.rename(tmp / "files", done)
        return done
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unpack_source(package: str, version: str, into: Path) -> Path:
    """The pinned source package unpacked with Debian's patches applied (dpkg-source -x); its directory."""
    files = fetch_source(package, version)
    upstream = version.split(":", 1)[-1]
    dsc = files / f"{package}_{upstream}.dsc"
    if not dsc.exists():
        raise ArtifactError(f"{files} holds no {dsc.name}; remove that directory and build again")
    into.mkdir(parents=True, exist_ok=True)
    tree = into / package
    run(["dpkg-source", "-x", str(dsc), str(tree)], f"unpacking the {package} source package")
    return tree
