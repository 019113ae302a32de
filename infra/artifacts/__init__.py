"""Artifacts: every binary and image the cluster is made of, pinned in lock.yaml and cached by version."""
from __future__ import annotations

import inspect
import shutil
import subprocess
from pathlib import Path

from infra import yamlload

from . import download, gobuild
from .store import ArtifactError, Entry, commit, lookup, recipe_key, staging_dir

LOCK = Path(__file__).with_name("lock.yaml")
SOURCES = ("build", "download")


def load_lock(path: Path = LOCK) -> dict:
    # The program looks up a dozen artifacts per run; the pure-Python loader took ~80 ms for each read of this file.
    lock = yamlload.load(path.read_text())
    if lock.get("source") not in SOURCES:
        raise ArtifactError(f"{path}: source must be one of {', '.join(SOURCES)}, not {lock.get('source')!r}")
    return lock


def _key(name: str, spec: dict, source: str) -> str:
    # The recipe includes the code that runs it, so a builder fix invalidates what it built.
    return recipe_key(spec["version"], source, spec, inspect.getsource(gobuild), inspect.getsource(download))


def verify_version(entry_dir: Path, spec: dict, source: str = "build") -> None:
    """Every binary must report the pinned version; a v0.0.0 means the version stamps were lost."""
    wanted = spec.get("release", spec["version"])
    if source == "download":
        wanted = spec["download"].get("version", wanted)
    wanted = wanted.lstrip("v")
    for binary in spec["binaries"]:
        args = spec.get("version_commands", {}).get(binary, spec["version_command"])
        if args is None:
            if wanted.encode() not in (entry_dir / binary).read_bytes():
                raise ArtifactError(f"{binary} does not carry the pinned release {wanted}")
            continue
        proc = subprocess.run([str(entry_dir / binary), *args],
                              capture_output=True, text=True, timeout=60)
        said = proc.stdout + proc.stderr
        if wanted not in said:
            raise ArtifactError(f"{binary} reports {said.strip()[:200]!r}, not the pinned {spec['version']}")


class MissingArtifact(ArtifactError):
    """An artifact the Pulumi program needs is not in the cache; building is `invoke artifacts`' job."""


def lookup_go(name: str, lock: dict | None = None) -> Entry:
    """The cached build of a pinned artifact, never building it: the Pulumi program only looks artifacts up,
    so `preview` cannot start a long compile and `up` shows its builds before the graph."""
    lock = lock or load_lock()
    entry = lookup(name, _key(name, lock["go"][name], lock["source"]))
    if entry is None:
        raise MissingArtifact(f"{name} {lock['go'][name]['version']} is not built yet: run `invoke artifacts` "
                              "(it shows each build's progress), then try again")
    return entry


def kubernetes_release(version: str, lock: dict | None = None) -> tuple[str, dict]:
    """The cache name and recipe of a pinned Kubernetes release: the `go: kubernetes` entry for its own version;
    for a version under `kubernetes_releases:`, that entry with the version (and the fields given there)
    replaced, cached under a name of its own so neither build evicts the other."""
    lock = lock or load_lock()
    base = lock["go"]["kubernetes"]
    if version == base["version"]:
        return "kubernetes", base
    releases = lock.get("kubernetes_releases") or {}
    if version not in releases:
        raise ArtifactError(f"Kubernetes {version} is not pinned in infra/artifacts/lock.yaml; pinned: "
                            f"{', '.join([base['version'], *releases])}")
    return f"kubernetes-{version}", {**base, **(releases[version] or {}), "version": version}


def lookup_kubernetes(version: str, lock: dict | None = None) -> Entry:
    """The cached build of one pinned Kubernetes release, never building it (see lookup_go)."""
    lock = lock or load_lock()
    name, spec = kubernetes_release(version, lock)
    entry = lookup(name, _key(name, spec, lock["source"]))
    if entry is None:
        build = "invoke artifacts" if name == "kubernetes" else f"invoke artifacts --kubernetes {version}"
        raise MissingArtifact(f"Kubernetes {version} is not built yet: run `{build}` (it shows the build's "
                              "progress), then try again")
    return entry


def ensure_kubernetes(version: str, lock: dict | None = None, log=print) -> Entry:
    """Build (or fetch) one pinned Kubernetes release unless the cache has it. The releases beside the default
    are built only on demand: each is about 11 minutes of compiling on 2 cores."""
    lock = lock or load_lock()
    name, spec = kubernetes_release(version, lock)
    return _ensure(name, spec, lock["source"], log)


def missing(lock: dict | None = None, kubernetes: str = "") -> list[str]:
    """`name version` of every pinned artifact the cache lacks, in lock order, and of the Kubernetes release
    `kubernetes` when it is another one."""
    lock = lock or load_lock()
    wanted = dict(lock["go"])
    if kubernetes:
        name, spec = kubernetes_release(kubernetes, lock)
        wanted.setdefault(name, spec)
    return [f"{name} {spec['version']}" for name, spec in wanted.items()
            if lookup(name, _key(name, spec, lock["source"])) is None]


def ensure_go(name: str, lock: dict | None = None, log=print) -> Entry:
    lock = lock or load_lock()
    return _ensure(name, lock["go"][name], lock["source"], log)


def ensure_tool(name: str, lock: dict | None = None, log=print) -> Entry:
    """A tool of lock.yaml's `tools:` section, built from its Go module on first use (always: no download)."""
    lock = lock or load_lock()
    return _ensure(name, lock["tools"][name], "build", log)


def _ensure(name: str, spec: dict, source: str, log) -> Entry:
    key = _key(name, spec, source)
    entry = lookup(name, key)
    if entry:
        return entry
    log(f"{name} {spec['version']}: {'compiling from Go modules' if source == 'build' else 'downloading'}")
    staging = staging_dir(name)
    try:
        if source == "build":
            gobuild.build(name, spec, staging, log=log)
        else:
            download.fetch(name, spec, staging, log=log)
        verify_version(staging, spec, source)
        return commit(name, key, spec["version"], staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure_all(lock: dict | None = None, log=print) -> list[Entry]:
    lock = lock or load_lock()
    return [ensure_go(name, lock, log) for name in lock["go"]]


def binaries(entries: list[Entry]) -> dict[str, str]:
    """Binary name -> path on this host, the shape the Ansible roles take as `pilothouse_binaries`."""
    return {f: str(e.file(f)) for e in entries for f in e.files}


def binary_digests(entries: list[Entry]) -> dict[str, str]:
    """Binary name -> sha256 (from the store's manifest), which the roles install and check binaries by as
    `pilothouse_binary_digests`."""
    return {f: digest for e in entries for f, digest in e.files.items()}


def export_bundle(entries: list[Entry], dest: Path) -> Path:
    """Copy every artifact into one directory with a SHA256SUMS file, for carrying to an offline site."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = []
    for entry in entries:
        (dest / entry.name).mkdir(exist_ok=True)
        for name, digest in entry.files.items():
            shutil.copy2(entry.file(name), dest / entry.name / name)
            lines.append(f"{digest}  {entry.name}/{name}")
    (dest / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return dest
