"""The kubeadm peer of tests/bench_kubeadm.py runs the cluster's own build: kubeadm from the same module and
version, images wrapping the same pinned binaries, and configurations kubeadm accepts. No machines."""
from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

from infra import artifacts
from infra.artifacts import images

PEER = Path(__file__).resolve().parent / "peer"


def test_kubeadm_is_built_from_the_clusters_kubernetes_module_and_version():
    lock = artifacts.load_lock()
    kubeadm, kubernetes = lock["tools"]["kubeadm"], lock["go"]["kubernetes"]
    for field in ("version", "module", "staging", "stamps"):
        assert kubeadm[field] == kubernetes[field], field
    assert kubeadm["binaries"] == {"kubeadm": "cmd/kubeadm"}


def test_the_peer_images_wrap_the_clusters_pinned_binaries_under_the_tags_kubeadm_asks_for():
    lock = artifacts.load_lock()
    spec = images.load_spec(PEER / "images.yaml")
    wrapped = {}
    for name, family in spec["families"].items():
        if "artifact" not in family:
            continue
        source = lock["go"][family["artifact"]["name"]]
        assert family["version"] == source["version"], name
        assert family["artifact"]["file"] in source["binaries"], name
        [tag] = family["tags"].values()
        wrapped[family["artifact"]["file"]] = tag["refs"]
    kubernetes, etcd = lock["go"]["kubernetes"]["version"], lock["go"]["etcd"]["version"]
    assert wrapped == {
        **{c: [f"registry.k8s.io/{c}:{kubernetes}"]
           for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")},
        "etcd": [f"registry.k8s.io/etcd:{etcd.removeprefix('v')}-0"],
    }


def render(host: str) -> list[dict]:
    masters, workers = ["m1", "m2", "m3"], ["w1", "w2"]
    hostvars = {h: {"ansible_host": f"10.74.0.{20 + i}"} for i, h in enumerate(masters + workers)}
    hostvars["m1"]["peer_ca_hash"] = "ab" * 32
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(PEER), undefined=jinja2.StrictUndefined)
    text = env.get_template("kubeadm.yaml.j2").render(
        ansible_managed="managed", inventory_hostname=host, ansible_host=hostvars[host]["ansible_host"],
        hostvars=hostvars, groups={"kube_control_plane": masters, "kube_node": masters + workers},
        peer_token="abcdef.0123456789abcdef", peer_certificate_key="cd" * 32, peer_etcd_tag="3.6.8-0",
        peer_coredns_tag="v1.14.1", pilothouse_cluster_name="phpeer", pilothouse_kubernetes_version="v1.34.4",
        pilothouse_api_endpoint="10.74.0.10", pilothouse_api_port=6443, pilothouse_pod_cidr="10.244.0.0/16",
        pilothouse_service_cidr="10.96.0.0/12")
    return list(yaml.safe_load_all(text))


def test_the_first_master_inits_the_others_join_and_only_masters_join_the_control_plane():
    init, cluster, kubelet, proxy = render("m1")
    assert [d["kind"] for d in (init, cluster, kubelet, proxy)] == [
        "InitConfiguration", "ClusterConfiguration", "KubeletConfiguration", "KubeProxyConfiguration"]
    assert init["nodeRegistration"]["name"] == "m1"
    assert init["localAPIEndpoint"]["advertiseAddress"] == "10.74.0.20"
    assert init["patches"] == {"directory": "/etc/kubernetes/peer-patches"}
    assert cluster["controlPlaneEndpoint"] == "10.74.0.10:6443"
    assert cluster["etcd"]["local"]["imageTag"] == "3.6.8-0" and cluster["dns"]["imageTag"] == "v1.14.1"
    assert proxy["mode"] == "nftables"

    [master] = render("m2")
    assert master["kind"] == "JoinConfiguration"
    assert master["discovery"]["bootstrapToken"]["caCertHashes"] == ["sha256:" + "ab" * 32]
    assert master["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == "10.74.0.21"
    assert master["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": "10.74.0.21"}]

    [worker] = render("w1")
    assert "controlPlane" not in worker and worker["nodeRegistration"]["name"] == "w1"
