"""The artifact cache: content lives under ~/.cache/pilothouse/artifacts/<name>/<key>/.

A key is the pinned version plus a hash of the recipe (the lock entry and the builder's own source), so
changing one pin or one recipe rebuilds only that artifact. An entry is built in a temp directory and only
renamed into place after its files are verified and their sha256s written to MANIFEST.json; a directory
without a manifest is never trusted, so an interrupted build is simply redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "MANIFEST.json"


class ArtifactError(Exception):
    """A problem the user can fix; the message says how."""


def cache_root() -> Path:
    return Path(os.environ.get("PILOTHOUSE_CACHE", Path.home() / ".cache" / "pilothouse"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_key(version: str, *parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{version}-{hashlib.sha256(blob).hexdigest()[:12]}"


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    path: Path
    files: dict[str, str]  # file name -> sha256

    def file(self, name: str) -> Path:
        return self.path / name


def lookup(name: str, key: str) -> Entry | None:
    path = cache_root() / "artifacts" / name / key
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return Entry(name, manifest["version"], path, manifest["files"])


def commit(name: str, key: str, version: str, staging: Path) -> Entry:
    """Checksum every file in `staging` and move it into the cache atomically."""
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    (staging / MANIFEST).write_text(json.dumps({"version": version, "files": files}, indent=2))
    final = cache_root() / "artifacts" / name / key
    if final.exists():  # a stale, manifest-less leftover from an interrupted run
        shutil.rmtree(final)
    os.rename(staging, final)
    # Older builds of this artifact (other pins or recipes) are dead weight: one Kubernetes set is ~600 MiB.
    for old in final.parent.iterdir():
        if old != final and not old.name.startswith(".tmp-"):
            shutil.rmtree(old, ignore_errors=True)
    return Entry(name, version, final, files)


def staging_dir(name: str) -> Path:
    parent = cache_root() / "artifacts" / name
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < 2 << 30:
        raise ArtifactError(
            f"only {free >> 20} MiB free under {parent}; artifacts need about 2 GiB to build. "
            "Free some space or point PILOTHOUSE_CACHE at a larger disk."
        )
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
