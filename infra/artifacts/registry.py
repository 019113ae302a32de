"""The local OCI registry the cluster pulls every image from, the way an air-gapped site works.

Debian's docker-registry binary runs as a plain daemon (no systemd unit: the host may not run systemd),
one process per listen address, all sharing one storage directory. containerd on each node treats it as a
mirror of docker.io, registry.k8s.io, gcr.io, quay.io and ghcr.io (the containerd role's
`containerd_mirrored_registries`), so manifests keep their upstream names:
docker.io/library/nginx:latest is repository `library/nginx` here, registry.k8s.io/pause:3.10.1 is `pause`.

The daemon on a cluster's bridge is read-only (distribution's `maintenance: readonly`): machines and pods
can pull but every write (upload, manifest put, delete) gets 405. Images are pushed by `publish` through a
second, writable daemon on the same storage that listens on 127.0.0.1 only, at a port the kernel picks (so
clusters on one host never collide), and exists only while the push runs.

Layout of a registry home (default ~/.cache/pilothouse/registry/):
    data/                     blobs and manifests
    run/<addr>.pid|.yml|.log  one daemon per listen address
"""
from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from .debpkg import run
from .images import ImageFamily, ensure_host_packages, ensure_images, mirror_path
from .store import ArtifactError, cache_root

# What containerd would otherwise pull from, per registry host it mirrors.
MANIFEST_TYPES = ", ".join(["application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.oci.image.index.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"])


def default_home() -> Path:
    return cache_root() / "registry"


@dataclass
class RegistryHandle:
    home: Path
    endpoints: list[str]
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """The address to push to (the first one listed)."""
        return self.endpoints[0]

    def stop(self) -> None:
        for addr in self.endpoints:
            _stop_one(self.home, addr)


def _run_dir(home: Path) -> Path:
    return home / "run"


def _slug(addr: str) -> str:
    return addr.replace(":", "_").replace("[", "").replace("]", "")


def _alive_registry(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that process is still our docker-registry, else None."""
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if not cmdline or not cmdline[0].endswith(b"docker-registry"):
        return None  # the pid was reused by something else
    return pid


def answers(addr: str, timeout: float = 1.0) -> bool:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _port_free(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError:
            return False
    return True


def config(home: Path, addr: str, secret: str, readonly: bool) -> dict:
    """docker-registry's configuration for one daemon on the storage under `home`."""
    storage = {"filesystem": {"rootdirectory": str(home / "data")}, "delete": {"enabled": True}}
    if readonly:
        # Refuses every write with 405 Method Not Allowed; reads are unchanged. It also stops this daemon
        # from purging upload directories, which belong to the writable daemon's pushes.
        storage["maintenance"] = {"readonly": {"enabled": True}}
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        # No blob descriptor cache: several daemons share the storage and must not serve stale answers.
        "storage": storage,
        "http": {"addr": addr, "secret": secret},
    }


def _config_text(home: Path, addr: str, readonly: bool) -> str:
    secret_file = _run_dir(home) / "http-secret"
    if not secret_file.exists():
        # Shared by every daemon on this storage so an upload begun on one address can finish on another.
        secret_file.write_text(secrets.token_hex(16))
        secret_file.chmod(0o600)
    return yaml.safe_dump(config(home, addr, secret_file.read_text().strip(), readonly), sort_keys=False)


def start(listen: list[str], storage_dir: Path | None = None, timeout: float = 15.0,
          readonly: bool = False) -> RegistryHandle:
    """Serve the registry on each `host:port` in `listen` (plain HTTP), refusing writes if `readonly`; reuse
    daemons already running there with the same configuration, restart those running with another."""
    if not listen:
        raise ArtifactError("registry.start needs at least one host:port to listen on, e.g. 127.0.0.1:5000")
    ensure_host_packages("docker-registry")
    home = Path(storage_dir) if storage_dir else default_home()
    run_dir = _run_dir(home)
    run_dir.mkdir(parents=True, exist_ok=True)
    (home / "data").mkdir(exist_ok=True)
    handle = RegistryHandle(home, list(listen))
    for addr in listen:
        pidfile = run_dir / f"{_slug(addr)}.pid"
        config_file = run_dir / f"{_slug(addr)}.yml"
        wanted = _config_text(home, addr, readonly)
        pid = _alive_registry(pidfile)
        same = config_file.exists() and config_file.read_text() == wanted
        if pid and same and answers(addr):
            handle.pids[addr] = pid
            continue
        if pid:  # not answering, or serving another configuration (a writable one from before): start afresh
            _stop_one(home, addr)
        if not _port_free(addr):
            handle.stop()
            raise ArtifactError(f"cannot listen on {addr}: the address is in use or not on this host. "
                                "Pick a free port, or stop what holds it (`ss -ltnp`).")
        config_file.write_text(wanted)
        log = open(run_dir / f"{_slug(addr)}.log", "ab")
        proc = subprocess.Popen([shutil.which("docker-registry"), "serve", str(config_file)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        pidfile.write_text(str(proc.pid))
        handle.pids[addr] = proc.pid
        deadline = time.monotonic() + timeout
        while not answers(addr):
            if proc.poll() is not None or time.monotonic() > deadline:
                handle.stop()
                tail = (run_dir / f"{_slug(addr)}.log").read_text(errors="replace")[-1200:]
                raise ArtifactError(f"docker-registry did not come up on {addr}; its log says:\n{tail}")
            time.sleep(0.1)
    return handle


def _stop_one(home: Path, addr: str) -> None:
    pidfile = _run_dir(home) / f"{_slug(addr)}.pid"
    pid = _alive_registry(pidfile)
    if pid:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 10):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
    pidfile.unlink(missing_ok=True)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # our own child must be reaped, or it lingers as a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # started by an earlier run: watch /proc instead
            if not Path(f"/proc/{pid}").exists():
                return True
        time.sleep(0.05)
    return False


def stop(storage_dir: Path | None = None, listen: str | None = None) -> None:
    """Stop the registry daemon on `listen`, or every one serving `storage_dir` (default: the cache's)."""
    home = Path(storage_dir) if storage_dir else default_home()
    if listen:
        _stop_one(home, listen)
        return
    for pidfile in sorted(_run_dir(home).glob("*.pid")):
        config = pidfile.with_suffix(".yml")
        addr = yaml.safe_load(config.read_text())["http"]["addr"] if config.exists() else pidfile.stem
        _stop_one(home, addr)


def _loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def writable(storage_dir: Path | None = None, attempts: int = 3) -> Iterator[RegistryHandle]:
    """A writable daemon on the storage for the time of a push, on 127.0.0.1 (no machine or pod reaches the
    host's loopback) at a port the kernel picks, so several clusters' pushes never share or fight over one."""
    home = Path(storage_dir) if storage_dir else default_home()
    for attempt in range(attempts):
        addr = f"127.0.0.1:{_loopback_port()}"
        try:
            handle = start([addr], home)
            break
        except ArtifactError:  # another process took the port between the probe and the bind
            _forget(home, addr)
            if attempt == attempts - 1:
                raise
    try:
        yield handle
    finally:
        handle.stop()
        _forget(home, addr)


def _forget(home: Path, addr: str) -> None:
    """Remove a stopped temporary daemon's files (its port is not reused)."""
    for suffix in (".yml", ".log"):
        (_run_dir(home) / f"{_slug(addr)}{suffix}").unlink(missing_ok=True)


def publish(storage_dir: Path | None = None, families: list[ImageFamily] | None = None,
            log=print) -> dict[str, int]:
    """Push the images into the storage through a temporary writable daemon on loopback (`writable`)."""
    with writable(storage_dir) as handle:
        return push_all(handle.endpoint, families, log=log)


def remote_digest(endpoint: str, repo: str, tag: str) -> str | None:
    """The manifest digest the registry holds for repo:tag, or None."""
    host, port = endpoint.rsplit(":", 1)
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
    try:
        conn.request("HEAD", f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("Docker-Content-Digest") if resp.status == 200 else None
    except OSError as e:
        raise ArtifactError(f"registry at {endpoint} does not answer ({e}): start it with registry.start") from e
    finally:
        conn.close()


def pinned_refs(families: list[ImageFamily]) -> dict[str, str]:
    """Each ref of the built images -> the same image by its manifest digest (name@sha256:...): pulled that
    way, what runs is what was built, whatever a tag in the registry has been moved to."""
    return {ref: f"{mirror_path(ref)[0]}/{mirror_path(ref)[1]}@{tag.digest}"
            for family in families for tag in family.tags for ref in tag.refs}


def push_all(endpoint: str, families: list[ImageFamily] | None = None, log=print) -> dict[str, int]:
    """Push every image under each of its refs' mirror paths, skipping refs the registry already has."""
    ensure_host_packages("skopeo")
    families = families if families is not None else ensure_images(log=log)
    counts = {"pushed": 0, "present": 0}
    for family in families:
        todo = [(t, ref) for t in family.tags for ref in t.refs
                if remote_digest(endpoint, *mirror_path(ref)[1:]) != t.digest]
        counts["present"] += sum(len(t.refs) for t in family.tags) - len(todo)
        if not todo:
            continue
        with tempfile.TemporaryDirectory(prefix="pilothouse-push-") as tmp:
            # One extraction per archive serves all its tags (oci-archive: would unpack it per copy).
            with tarfile.open(family.archive) as tar:
                tar.extractall(tmp, filter="tar")
            for tag, ref in todo:
                _, repo, ref_tag = mirror_path(ref)
                run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                     f"oci:{tmp}:{tag.tag}", f"docker://{endpoint}/{repo}:{ref_tag}"], f"pushing {ref}")
                counts["pushed"] += 1
                log(f"  pushed {ref} -> {endpoint}/{repo}:{ref_tag}")
    return counts
