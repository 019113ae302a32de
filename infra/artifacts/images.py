"""Container images as OCI archives, built offline from pinned Debian packages and local sources.

Each family under `images:` in lock.yaml is one build: a root filesystem layer (on top of the busybox layer for most),
saved with umoci as an OCI layout holding one manifest per tag, then tarred into an oci-archive under
~/.cache/pilothouse/images/<family>/<version>-<recipe hash>/. Families that sit on busybox reuse its
archive's layer blob, so the registry and containerd store it once. The builds themselves are image_recipes.py's;
this module finds them in the cache, builds what is missing and lists them.

    python -m infra.artifacts.images           build what is missing
    python -m infra.artifacts.images --list    name, tag, digest, size and archive of every image
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path

from infra import yamlload

from . import MissingArtifact, debpkg, ensure_go, image_recipes, lookup_go
from .image_recipes import ARCHIVE, MANIFEST, STANDIN_SRC, build_family, ensure_host_packages
from .store import ArtifactError, cache_root, recipe_key

SPEC = Path(__file__).with_name("lock.yaml")  # its `images:` section

def load_spec(path: Path = SPEC) -> dict:
    spec = yamlload.load(path.read_text())["images"]
    for name, family in spec["families"].items():
        for field in ("recipe", "version", "tags"):
            if field not in family:
                raise ArtifactError(f"{path}: image family {name} has no `{field}`")
        if family.get("base") and family["base"] not in spec["families"]:
            raise ArtifactError(f"{path}: image family {name} sits on unknown base {family['base']!r}")
        for pkg in family.get("debs", []) + family.get("libdebs", []):
            if pkg not in spec["debian"]:
                raise ArtifactError(f"{path}: image family {name} uses Debian package {pkg} without a pin under `images.debian:`")
    return spec


# ---- building and caching ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageTag:
    family: str
    tag: str
    digest: str  # manifest digest, what the registry reports for each ref
    refs: tuple[str, ...]
    standin: str | None


@dataclass(frozen=True)
class ImageFamily:
    name: str
    version: str
    archive: Path
    tags: tuple[ImageTag, ...]

    @property
    def size(self) -> int:
        return self.archive.stat().st_size


@functools.cache
def _source_digest() -> str:
    h = hashlib.sha256(inspect.getsource(image_recipes).encode())
    h.update(inspect.getsource(debpkg).encode())
    for path in sorted(STANDIN_SRC.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def family_key(name: str, spec: dict, base_key: str | None, artifact_sha256: str | None) -> str:
    """The cache key of a family's build; `artifact_sha256` is the digest the artifact store recorded for the
    binary it wraps (read, not recomputed: hashing them took half a second of every `pulumi up`)."""
    family = spec["families"][name]
    pins = {p: spec["debian"][p] for p in family.get("debs", []) + family.get("libdebs", [])}
    return recipe_key(family["version"], name, family, pins, base_key, _source_digest(), artifact_sha256)


def family_dir(name: str, key: str) -> Path:
    return cache_root() / "images" / name / key


def load_family(name: str, key: str) -> ImageFamily | None:
    path = family_dir(name, key)
    try:
        meta = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not (path / ARCHIVE).exists():
        return None
    tags = tuple(ImageTag(name, t["tag"], t["digest"], tuple(t["refs"]), t.get("standin")) for t in meta["tags"])
    return ImageFamily(name, meta["version"], path / ARCHIVE, tags)


def ensure_images(names: list[str] | None = None, spec: dict | None = None, log=print,
                  build: bool = True) -> list[ImageFamily]:
    """Build (or find in the cache) every family, or just `names` and their bases.

    With `build=False` nothing is built: a family missing from the cache raises MissingArtifact, which is
    how the Pulumi program finds its images (building is `invoke artifacts`' job, before the graph).
    """
    spec = spec or load_spec()
    wanted = names or list(spec["families"])
    for name in wanted:
        if name not in spec["families"]:
            raise ArtifactError(f"unknown image family {name!r}; lock.yaml `images:` has {', '.join(spec['families'])}")
    if build:
        ensure_host_packages("umoci", "dpkg-deb")
    done: dict[str, tuple[str, ImageFamily]] = {}

    def ensure(name: str) -> ImageFamily:
        if name in done:
            return done[name][1]
        family = spec["families"][name]
        base = ensure(family["base"]) if family.get("base") else None
        artifact, artifact_sha256 = None, None
        if "artifact" in family:
            # Built (or taken from the cache) like any other artifact, so the image always wraps the pin.
            source = family["artifact"]["name"]
            entry = ensure_go(source, log=log) if build else lookup_go(source)
            artifact = entry.file(family["artifact"]["file"])
            artifact_sha256 = entry.files[family["artifact"]["file"]]
        key = family_key(name, spec, done[family["base"]][0] if base else None, artifact_sha256)
        built = load_family(name, key)
        if built is None and not build:
            raise MissingArtifact(f"image {name} {family['version']} is not built yet: run `invoke artifacts`")
        if built is None:
            started = time.monotonic()
            log(f"  {name}: building {family['version']}")
            build_family(name, spec, family_dir(name, key), base and base.archive,
                         [t.tag for t in base.tags] if base else [], artifact, log)
            built = load_family(name, key)
            log(f"  {name}: built in {time.monotonic() - started:.1f}s, {built.size / 1e6:.1f} MB")
        done[name] = (key, built)
        return built

    return [ensure(n) for n in wanted]


def missing(spec: dict | None = None) -> list[str]:
    """`image name version` of every family the cache lacks (building nothing)."""
    spec = spec or load_spec()
    absent = []
    for name, family in spec["families"].items():
        try:
            ensure_images([name], spec, log=lambda _m: None, build=False)
        except MissingArtifact:
            absent.append(f"image {name} {family['version']}")
    return absent


def mirror_path(ref: str) -> tuple[str, str, str]:
    """registry host, repository path and tag of a full ref, e.g. docker.io/library/nginx:latest."""
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    return host, repo, tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.artifacts.images", description=__doc__.split("\n")[0])
    parser.add_argument("families", nargs="*", help="families to build (default: all in lock.yaml `images:`)")
    parser.add_argument("--list", action="store_true", help="print name, tag, digest, size and archive of each image")
    args = parser.parse_args(argv)
    try:
        started = time.monotonic()
        families = ensure_images(args.families or None, log=lambda m: print(m, flush=True))
        elapsed = time.monotonic() - started
    except ArtifactError as e:
        print(f"error: {e}")
        return 1
    if args.list:
        for f in families:
            for t in f.tags:
                print(f"{f.name:14} {t.tag:18} {t.digest[:19]}  {f.size / 1e6:6.1f} MB  {f.archive}")
                for ref in t.refs:
                    print(f"{'':14}   -> {ref}")
    total = sum(f.size for f in families)
    print(f"{len(families)} image archives, {sum(len(f.tags) for f in families)} tags, "
          f"{total / 1e6:.1f} MB, ready in {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
