"""Fetch upstream release files, for machines that can reach the release hosts.

Every file is checked against a sha256: the one pinned in lock.yaml (`download.sha256`, keyed by file
name) when present, else the `<url>.sha256` file published beside it upstream.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

from .store import ArtifactError


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.read()
    except OSError as exc:
        raise ArtifactError(f"cannot fetch {url}: {exc}. Without internet, set `source: build` "
                            "in infra/artifacts/lock.yaml.") from exc


def _expected(url: str, pinned: dict, filename: str) -> str:
    if filename in pinned:
        return pinned[filename]
    return _get(url + ".sha256").decode().split()[0]


def version(spec: dict) -> str:
    """The upstream release to fetch: the pin, unless upstream ships this artifact inside another release."""
    return spec["download"].get("version", spec["version"])


def fetch(name: str, spec: dict, out: Path, log=print) -> None:
    dl = spec["download"]
    fields = {"version": version(spec), "bare_version": version(spec).lstrip("v"),
              "release": spec.get("release", spec["version"])}
    pinned = dl.get("sha256", {})
    urls = {dl["url"].format(binary=b, **fields) for b in spec["binaries"]}
    for url in sorted(urls):
        filename = url.rsplit("/", 1)[1]
        log(f"  {name}: fetching {url}")
        data = _get(url)
        got, want = hashlib.sha256(data).hexdigest(), _expected(url, pinned, filename)
        if got != want:
            raise ArtifactError(f"{filename}: sha256 {got} does not match the expected {want}; "
                                "the download is corrupt or the pin is wrong. Nothing was cached.")
        if filename.endswith((".tar.gz", ".tgz")):
            # Upstream archives carry the scripts a build takes from module files next to the binaries.
            scripts = [f for files in spec.get("module_files", {}).values() for f in files]
            _extract(data, [*spec["binaries"], *scripts], out, filename)
        else:
            (out / filename).write_bytes(data)
            (out / filename).chmod(0o755)


def _extract(data: bytes, binaries: list[str], out: Path, filename: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for binary in binaries:
            if binary not in members:
                raise ArtifactError(f"{filename} has no file named {binary}")
            (out / binary).write_bytes(tar.extractfile(members[binary]).read())
            (out / binary).chmod(0o755)
