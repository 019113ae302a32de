"""The local registry's write protection and the digest pinning of the images the project deploys.

The configuration and pinning checks run without artifacts; the daemon checks start Debian's docker-registry
on loopback with an empty storage (a second each) and send it the requests a pusher would.
"""
from __future__ import annotations

import http.client
from pathlib import Path

import pytest
import yaml

from infra import addons, artifacts, playbook, program
from infra.artifacts import images, registry

DIGEST = "sha256:" + "ab" * 32


def lock_refs() -> set[str]:
    families = yaml.safe_load(artifacts.LOCK.read_text())["images"]["families"].values()
    return {ref for family in families for tag in family["tags"].values() for ref in tag["refs"]}


def fake_pins() -> dict[str, str]:
    """What images.pinned_refs gives for the lock's refs, with one made-up digest per ref."""
    return {ref: f"{ref.rsplit(':', 1)[0]}@sha256:{i:064x}" for i, ref in enumerate(sorted(lock_refs()))}


def request(addr: str, method: str, path: str) -> int:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# ---- configuration, no daemon ---------------------------------------------------------------------------

def test_only_the_read_only_config_sets_distributions_readonly_maintenance(tmp_path):
    ro = registry.config(tmp_path, "10.1.0.1:5000", "s3cret", readonly=True)
    rw = registry.config(tmp_path, "127.0.0.1:40000", "s3cret", readonly=False)
    assert ro["storage"]["maintenance"] == {"readonly": {"enabled": True}}
    assert "maintenance" not in rw["storage"]
    # Same storage and secret: what the writable daemon pushes, the read-only one serves.
    assert ro["storage"]["filesystem"] == rw["storage"]["filesystem"] == {"rootdirectory": str(tmp_path / "data")}
    assert ro["http"] == {"addr": "10.1.0.1:5000", "secret": "s3cret"}


def test_pinned_refs_name_each_ref_by_its_images_digest():
    tag = images.ImageTag("busybox", "busybox", DIGEST, ("docker.io/library/busybox:1.36",
                                                        "registry.k8s.io/busybox:latest"), None)
    family = images.ImageFamily("busybox", "1.35.0", Path("/nonexistent"), (tag,))
    assert registry.pinned_refs([family]) == {"docker.io/library/busybox:1.36": f"docker.io/library/busybox@{DIGEST}",
                                             "registry.k8s.io/busybox:latest": f"registry.k8s.io/busybox@{DIGEST}"}


def test_every_addon_container_is_pinned_by_digest_including_the_helper_pod_in_a_configmap():
    pins = fake_pins()
    seen = []
    for name in ("traefik", "metallb", "local-path", "metrics-server"):
        for plain, pinned in zip(addons.load(name), addons.load(name, pins)):
            spec = (plain.get("spec") or {}).get("template", {}).get("spec", {})
            for before, after in zip(spec.get("containers", []), pinned["spec"]["template"]["spec"]["containers"]
                                     if spec.get("containers") else []):
                assert after["image"] == pins[before["image"]]
                seen.append(after["image"])
    helper = next(o for o in addons.load("local-path", pins) if o["kind"] == "ConfigMap")["data"]["helperPod.yaml"]
    helper_image = yaml.safe_load(helper)["spec"]["containers"][0]["image"]
    assert helper_image == pins["docker.io/library/busybox:latest"]
    assert len(seen) >= 5 and all("@sha256:" in image and ":v" not in image for image in seen), seen
    # Without pins (images from upstream) the manifests keep their tags.
    assert yaml.safe_load(next(o for o in addons.load("local-path") if o["kind"] == "ConfigMap")
                          ["data"]["helperPod.yaml"])["spec"]["containers"][0]["image"] == \
        "docker.io/library/busybox:latest"


def test_an_addon_image_the_registry_does_not_hold_is_refused_up_front():
    pins = fake_pins()
    del pins["docker.io/library/traefik:v3.6.12"]
    with pytest.raises(addons.AddonsError, match="traefik.yaml: image 'docker.io/library/traefik:v3.6.12' is not "
                                                 "built by lock.yaml"):
        addons.load("traefik", pins)


def test_the_sandbox_and_coredns_images_go_to_the_roles_by_digest_only_through_the_mirror():
    pins = fake_pins()
    vars_ = playbook.pinned_role_images(pins)
    assert vars_ == {"containerd_sandbox_image": pins["registry.k8s.io/pause:3.10.1"],
                     "coredns_image": pins["registry.k8s.io/coredns/coredns:v1.14.1"]}
    assert playbook.pinned_role_images({}) == {}
    del pins["registry.k8s.io/pause:3.10.1"]
    with pytest.raises(artifacts.ArtifactError, match="containerd_sandbox_image=registry.k8s.io/pause:3.10.1"):
        playbook.pinned_role_images(pins)


# ---- the daemons ----------------------------------------------------------------------------------------

@pytest.mark.artifacts  # needs Debian's docker-registry on this host (installed on first use)
def test_the_read_only_daemon_refuses_writes_and_a_running_writable_one_is_restarted_read_only(tmp_path):
    images.ensure_host_packages("docker-registry")
    addr = f"127.0.0.1:{registry._loopback_port()}"
    before = registry.start([addr], tmp_path)  # as a registry made before this change ran
    try:
        assert request(addr, "POST", "/v2/probe/blobs/uploads/") == 202
        after = registry.start([addr], tmp_path, readonly=True)
        assert after.pids[addr] != before.pids[addr]
        for method, path in (("POST", "/v2/probe/blobs/uploads/"), ("PUT", "/v2/probe/manifests/latest"),
                             ("DELETE", f"/v2/probe/manifests/{DIGEST}")):
            assert request(addr, method, path) == 405, (method, path)
        assert request(addr, "GET", "/v2/") == 200
        assert registry.start([addr], tmp_path, readonly=True).pids == after.pids  # same config: reused
    finally:
        registry.stop(tmp_path, addr)


@pytest.mark.artifacts
def test_the_writable_daemon_listens_on_loopback_only_while_the_push_runs(tmp_path):
    images.ensure_host_packages("docker-registry")
    with registry.writable(tmp_path) as first, registry.writable(tmp_path) as second:
        assert first.endpoint != second.endpoint  # two clusters pushing at once get a port each
        assert first.endpoint.startswith("127.0.0.1:")
        assert request(first.endpoint, "POST", "/v2/probe/blobs/uploads/") == 202
    assert not registry.answers(first.endpoint) and not registry.answers(second.endpoint)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["http-secret"]


@pytest.mark.artifacts
def test_a_registry_whose_process_is_gone_is_a_change_the_next_up_makes(tmp_path):
    images.ensure_host_packages("docker-registry")
    addr = f"127.0.0.1:{registry._loopback_port()}"
    props = {"listen": addr, "images": [DIGEST], "mode": "read-only", "endpoint": addr}
    provider = program._RegistryProvider()
    registry.start([addr], tmp_path, readonly=True)
    try:
        assert not provider.diff(addr, props, props).changes
    finally:
        registry.stop(tmp_path, addr)
    # Killed with the `pulumi up` that started it, or gone with a host reboot: `up` starts it again.
    assert provider.diff(addr, props, props).changes
