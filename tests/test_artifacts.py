"""The real binaries: built (or taken from the warm cache), then run on loopback."""
from __future__ import annotations

import copy
import hashlib
import http.server
import io
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
import types
import urllib.request

import pytest

from infra import artifacts
from infra.artifacts import store

pytestmark = pytest.mark.artifacts


@pytest.fixture(scope="module")
def lock():
    return artifacts.load_lock()


@pytest.fixture(scope="module")
def built(lock):
    return {e.name: e for e in artifacts.ensure_all(lock)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize("binary,args", [
    ("kube-apiserver", ["--version"]), ("kube-controller-manager", ["--version"]),
    ("kube-scheduler", ["--version"]), ("kubelet", ["--version"]), ("kube-proxy", ["--version"]),
    ("kubectl", ["version", "--client"]), ("etcd", ["--version"]), ("etcdctl", ["version"]), ("etcdutl", ["version"]),
    ("coredns", ["-version"]), ("pulumi", ["version"]),
])
def test_every_binary_reports_its_pinned_version(built, lock, binary, args):
    entry = next(e for e in built.values() if binary in e.files)
    out = subprocess.run([str(entry.file(binary)), *args], capture_output=True, text=True, timeout=60)
    said = out.stdout + out.stderr
    assert lock["go"][entry.name]["version"].lstrip("v") in said, said
    assert "v0.0.0" not in said


def test_cached_files_match_their_recorded_sha256(built):
    for entry in built.values():
        for name, digest in entry.files.items():
            assert store.sha256_file(entry.file(name)) == digest, f"{entry.name}/{name}"


@pytest.fixture
def etcd(built, tmp_path):
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        [str(built["etcd"].file("etcd")), "--data-dir", str(tmp_path / "etcd"), "--name", "t",
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "etcd.log", "w"))
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 30, "etcd /health")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_etcd_serves_a_put_and_a_get_on_loopback(built, etcd):
    ctl = [str(built["etcd"].file("etcdctl")), "--endpoints", etcd]
    subprocess.run([*ctl, "put", "pilothouse", "ahoy"], check=True, capture_output=True, timeout=30)
    got = subprocess.run([*ctl, "get", "pilothouse", "--print-value-only"],
                         check=True, capture_output=True, text=True, timeout=30)
    assert got.stdout.strip() == "ahoy"


def test_kube_apiserver_on_etcd_answers_readyz_and_lists_default_namespace(built, etcd, tmp_path):
    kube = built["kubernetes"]
    key = tmp_path / "sa.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    (tmp_path / "tokens.csv").write_text("s3cret,admin,admin,system:masters\n")
    port = free_port()
    proc = subprocess.Popen(
        [str(kube.file("kube-apiserver")), "--etcd-servers", etcd, "--bind-address", "127.0.0.1",
         "--advertise-address", "127.0.0.1", "--secure-port", str(port), "--cert-dir", str(tmp_path / "certs"),
         "--service-cluster-ip-range", "10.96.0.0/24", "--authorization-mode", "RBAC",
         "--token-auth-file", str(tmp_path / "tokens.csv"),
         "--service-account-issuer", "https://kubernetes.default.svc",
         "--service-account-key-file", str(key), "--service-account-signing-key-file", str(key)],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "apiserver.log", "w"))
    kubectl = [str(kube.file("kubectl")), "--server", f"https://127.0.0.1:{port}", "--token", "s3cret",
               "--insecure-skip-tls-verify"]
    try:
        wait_for(lambda: subprocess.run([*kubectl, "get", "--raw", "/readyz"], capture_output=True,
                                        text=True).stdout.strip() == "ok", 120, "kube-apiserver /readyz")
        wait_for(lambda: "default" in subprocess.run([*kubectl, "get", "ns", "-o", "name"],
                                                     capture_output=True, text=True).stdout, 60, "namespace default")
        anonymous = subprocess.run([str(kube.file("kubectl")), "--server", f"https://127.0.0.1:{port}",
                                    "--insecure-skip-tls-verify", "--token", "wrong", "get", "ns"],
                                   capture_output=True, text=True)
        assert anonymous.returncode != 0 and "Unauthorized" in anonymous.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_pulumi_version_works_without_network(built):
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"], "PULUMI_SKIP_UPDATE_CHECK": "true",
           # A proxy that does not exist: any attempt to go online would fail loudly.
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    out = subprocess.run([str(built["pulumi"].file("pulumi")), "version"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "v3.259.0"


def test_a_warm_run_rebuilds_nothing(built, lock):
    started = time.monotonic()
    again = {e.name: e for e in artifacts.ensure_all(lock, log=lambda m: pytest.fail(f"rebuilt: {m}"))}
    assert {n: e.path for n, e in again.items()} == {n: e.path for n, e in built.items()}
    assert time.monotonic() - started < 60


def test_changing_one_pin_changes_only_that_artifacts_cache_key(lock):
    bumped = copy.deepcopy(lock)
    bumped["go"]["etcd"]["version"] = "v3.6.9"
    keys = {n: artifacts._key(n, s, "build") for n, s in lock["go"].items()}
    new_keys = {n: artifacts._key(n, s, "build") for n, s in bumped["go"].items()}
    assert [n for n in keys if keys[n] != new_keys[n]] == ["etcd"]


def test_a_half_written_cache_entry_is_never_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path))
    half = tmp_path / "artifacts" / "etcd" / "v3.6.8-abc"
    half.mkdir(parents=True)
    (half / "etcd").write_bytes(b"truncated")
    assert store.lookup("etcd", "v3.6.8-abc") is None


def test_an_unknown_version_fails_with_a_message_naming_the_lock_file(lock, tmp_path, monkeypatch):
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path))
    bad = copy.deepcopy(lock)
    bad["go"]["coredns"]["version"] = "v1.99.99"
    with pytest.raises(artifacts.ArtifactError, match="lock.yaml"):
        artifacts.ensure_go("coredns", bad)
    assert not any((tmp_path / "artifacts" / "coredns").iterdir()), "a failed build left files behind"



def test_a_binary_the_module_lacks_fails_while_resolving_and_names_the_package(lock, tmp_path, monkeypatch):
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path))
    bad = copy.deepcopy(lock)
    bad["go"]["etcdutl"]["binaries"] = {"etcdutl": "no-such-command"}
    with pytest.raises(artifacts.ArtifactError, match=r"resolving modules failed[\s\S]*no-such-command"):
        artifacts.ensure_go("etcdutl", bad)
    assert not any((tmp_path / "artifacts" / "etcdutl").iterdir()), "a failed build left files behind"

def test_a_missing_go_toolchain_is_named(lock, tmp_path, monkeypatch):
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(artifacts.ArtifactError, match="no Go toolchain"):
        artifacts.ensure_go("coredns", lock)


@pytest.fixture
def release_server(built, tmp_path):
    """A loopback stand-in for the upstream release host, serving the same files plus .sha256 companions."""
    root = tmp_path / "releases"
    kube = built["kubernetes"]
    for name in ("kubectl", "kube-proxy"):
        target = root / "v1.34.4" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(kube.file(name).read_bytes())
        (root / "v1.34.4" / f"{name}.sha256").write_text(hashlib.sha256(target.read_bytes()).hexdigest())
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _download_lock(lock, base_url):
    dl = copy.deepcopy(lock)
    dl["source"] = "download"
    spec = dl["go"]["kubernetes"]
    spec["binaries"] = {"kubectl": "cmd/kubectl", "kube-proxy": "cmd/kube-proxy"}
    spec["download"] = {"url": base_url + "/{version}/{binary}"}
    return dl


def test_download_source_fetches_and_verifies_against_the_published_sha256(release_server, lock, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path / "cache"))
    _, url = release_server
    entry = artifacts.ensure_go("kubernetes", _download_lock(lock, url))
    assert set(entry.files) == {"kubectl", "kube-proxy"}
    manifest = json.loads((entry.path / store.MANIFEST).read_text())
    assert manifest["version"] == "v1.34.4"


def test_download_with_a_wrong_checksum_is_refused_and_nothing_is_cached(release_server, lock, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path / "cache"))
    root, url = release_server
    (root / "v1.34.4" / "kubectl.sha256").write_text("0" * 64)
    with pytest.raises(artifacts.ArtifactError, match="does not match"):
        artifacts.ensure_go("kubernetes", _download_lock(lock, url))
    assert not any((tmp_path / "cache" / "artifacts" / "kubernetes").iterdir())


def test_download_takes_the_language_host_and_its_script_from_the_cli_archive(lock, tmp_path, monkeypatch):
    """Upstream ships pulumi-language-python inside the CLI's tarball: a download fetches the CLI's release
    (v3.259.0, not the v3.79.0 built here) and takes the exec script from the same archive."""
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "releases"
    root.mkdir()
    archive = root / "pulumi-v3.259.0-linux-x64.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in (("pulumi/pulumi-language-python", b"\x7fELF stamped v3.259.0"),
                           ("pulumi/pulumi-language-python-exec", b"#!/usr/bin/env python\n")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    (root / (archive.name + ".sha256")).write_text(hashlib.sha256(archive.read_bytes()).hexdigest())
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dl = copy.deepcopy(lock)
        dl["source"] = "download"
        spec = dl["go"]["pulumi-language-python"]
        spec["download"]["url"] = f"http://127.0.0.1:{server.server_address[1]}/pulumi-{{version}}-linux-x64.tar.gz"
        entry = artifacts.ensure_go("pulumi-language-python", dl)
    finally:
        server.shutdown()
    assert set(entry.files) == {"pulumi-language-python", "pulumi-language-python-exec"}
    assert entry.file("pulumi-language-python-exec").read_bytes().startswith(b"#!")


def test_export_writes_every_file_with_a_checksum_list(built, tmp_path):
    bundle = artifacts.export_bundle(list(built.values()), tmp_path / "bundle")
    sums = (bundle / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == sum(len(e.files) for e in built.values())
    for line in sums:
        digest, rel = line.split("  ")
        assert store.sha256_file(bundle / rel) == digest


def test_a_nearly_full_disk_is_refused_before_building(tmp_path, monkeypatch):
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path))
    # The filesystem is real; only its free-space answer is replaced, since filling a disk here is not an option.
    monkeypatch.setattr(store.shutil, "disk_usage", lambda _p: types.SimpleNamespace(free=100 << 20))
    with pytest.raises(artifacts.ArtifactError, match="only 100 MiB free"):
        store.staging_dir("etcd")
    assert list((tmp_path / "artifacts" / "etcd").iterdir()) == []

