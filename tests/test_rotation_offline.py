"""Certificate rotation without machines: the pki module's new keys on every re-issue, `invoke certs.rotate`'s plan,
its refusal of an unhealthy cluster, and how it recognises the kubelets' CSRs. The live half is in
tests/test_second_day.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra import etcd, playbook, rotation, status

MODULE = Path(__file__).resolve().parents[1] / "roles" / "pki" / "library" / "pilothouse_pki.py"
CERTS = [{"name": "apiserver", "ca": "ca", "cn": "kube-apiserver", "usages": ["server"], "dns": ["kubernetes"],
          "ips": ["10.9.9.20"]},
         {"name": "admin", "ca": "ca", "cn": "kubernetes-admin", "orgs": ["pilothouse:cluster-admins"]},
         {"name": "etcd-peer-m1", "ca": "etcd-ca", "cn": "m1", "usages": ["server", "client"], "ips": ["10.9.9.20"]}]


def pki_module(directory: Path, **args) -> dict:
    """One run of the pilothouse_pki module, as Ansible runs it (its arguments in a JSON file)."""
    params = {"dir": str(directory), "cas": [{"name": "ca", "cn": "kubernetes-ca"}, {"name": "etcd-ca", "cn": "etcd-ca"}],
              "certs": CERTS, "keypairs": ["sa"], "secrets": [{"name": "encryption-key", "bytes": 32}], **args}
    args_file = directory.parent / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    proc = subprocess.run([sys.executable, str(MODULE), str(args_file)], capture_output=True, text=True)
    out = json.loads(proc.stdout)
    assert not out.get("failed"), out
    return out


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_rekey_reissues_every_leaf_with_a_new_key_and_keeps_the_cas_and_secrets(tmp_path):
    pki = tmp_path / "pki"
    pki_module(pki)
    assert pki_module(pki)["changed"] is False
    before, leaves_before = files(pki), rotation.leaves(pki)
    assert sorted(leaves_before) == ["admin", "apiserver", "etcd-peer-m1"]  # the CAs are not leaves

    out = pki_module(pki, rekey=True)
    assert sorted(out["created"]) == ["admin", "apiserver", "etcd-peer-m1"]
    after, leaves_after = files(pki), rotation.leaves(pki)
    for name, (serial, key) in leaves_before.items():
        assert leaves_after[name][0] != serial and leaves_after[name][1] != key, name
        assert after[f"{name}.key"] != before[f"{name}.key"]
    for kept in ("ca.crt", "ca.key", "etcd-ca.crt", "etcd-ca.key", "sa.key", "sa.pub", "encryption-key"):
        assert after[kept] == before[kept], kept
    assert pki_module(pki)["changed"] is False  # the new pairs are consistent: nothing to do next time


def test_a_leaf_renewed_near_expiry_gets_a_new_key(tmp_path):
    pki = tmp_path / "pki"
    pki_module(pki)
    before = rotation.leaves(pki)
    # Every leaf (825 days) now expires "within" 900 days: each is renewed, none keeps its key.
    assert sorted(pki_module(pki, renew_days=900)["created"]) == sorted(before)
    after = rotation.leaves(pki)
    assert all(after[n][1] != before[n][1] for n in before)


def test_a_key_that_no_longer_fits_its_certificate_is_replaced_with_the_certificate(tmp_path):
    pki = tmp_path / "pki"
    pki_module(pki)
    (pki / "admin.key").write_bytes((pki / "apiserver.key").read_bytes())  # as if a run died between the two
    assert pki_module(pki)["created"] == ["admin"]
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert = x509.load_pem_x509_certificate((pki / "admin.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "admin.key").read_bytes(), None)
    assert cert.public_key() == key.public_key()


MACHINES = [{"name": "m1", "roles": ["master", "etcd"], "address": "10.9.9.20"},
            {"name": "lb1", "roles": ["lb"], "address": "10.9.9.10"},
            {"name": "w1", "roles": ["worker"], "address": "10.9.9.40"}]


def test_the_dry_run_plan_names_the_leaves_and_the_order_machines_are_rolled_in(tmp_path):
    pki = tmp_path / "pki"
    pki_module(pki)
    lines = rotation.plan(pki, MACHINES)
    assert lines[0].startswith("re-issue 3 leaf certificates") and "admin, apiserver, etcd-peer-m1" in lines[0]
    assert [line.split(": ")[-1] for line in lines[1:5]] == ["m1", "lb1", "m1", "m1, w1"]
    assert lines[1].startswith("etcd members one at a time") and lines[3].startswith("masters one at a time")
    alone = rotation.plan(pki, [m for m in MACHINES if m["name"] != "lb1"])
    assert "no load balancer: the API does not answer while its only server restarts" in alone[3]


def test_rotate_refuses_an_unhealthy_cluster_before_renewing_anything(tmp_path, monkeypatch):
    pki = tmp_path / "pki"
    pki_module(pki)
    before = files(pki)
    monkeypatch.setattr(status, "collect", lambda *_: status.Report(machines=[], problems=["m1: etcd is failed"]))

    def refuse(*_args, **_kwargs):
        raise AssertionError("the rotation ran the playbook on an unhealthy cluster")

    monkeypatch.setattr(playbook, "run_playbook", refuse)
    cluster = etcd.ClusterAccess("phunit", (("m1", "10.9.9.20"),), {}, {"pilothouse_pki_dir": str(pki)}, "", "")
    with pytest.raises(rotation.RotationError, match=r"not healthy.*m1: etcd is failed\. Fix that first"):
        rotation.rotate(cluster, MACHINES)
    assert files(pki) == before


def test_an_expired_leaf_alone_does_not_stop_the_rotation_that_renews_it(tmp_path, monkeypatch):
    pki = tmp_path / "pki"
    pki_module(pki)
    monkeypatch.setattr(status, "collect", lambda *_: status.Report(
        machines=[], problems=["certificate admin.crt has expired"]))

    class Started(Exception):
        pass

    def started(*_args, **_kwargs):
        raise Started

    monkeypatch.setattr(playbook, "run_playbook", started)
    monkeypatch.setattr(rotation.drill, "ApiClient", lambda _kubeconfig: None)
    monkeypatch.setattr(rotation.drill.RequestLoop, "start", lambda self: None)
    monkeypatch.setattr(rotation.drill.RequestLoop, "stop", lambda self: self.stats)
    cluster = etcd.ClusterAccess("phunit", (("m1", "10.9.9.20"),), {}, {"pilothouse_pki_dir": str(pki)}, "", "")
    with pytest.raises(Started):
        rotation.rotate(cluster, MACHINES, log=lambda _: None)


class FakeClient:
    def __init__(self, items: list[dict]):
        self.items = items

    def request(self, method: str, path: str, body=None):
        assert (method, path) == ("GET", "/apis/certificates.k8s.io/v1/certificatesigningrequests")
        return 200, {"items": self.items}


def csr(name: str, user: str, created: str, approved: bool = True, issued: bool = True,
        signer: str = rotation.KUBELET_SIGNER) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"username": user, "signerName": signer},
            "status": {"conditions": [{"type": "Approved", "status": "True"}] if approved else [],
                       **({"certificate": "LS0t"} if issued else {})}}


def test_only_approved_issued_kubelet_client_csrs_made_after_the_start_count():
    since = 1_800_000_000  # 2027-01-15T08:00:00Z
    client = FakeClient([
        csr("old", "system:node:m1", "2027-01-15T07:59:00Z"),                   # before the rotation
        csr("pending", "system:node:w1", "2027-01-15T08:00:05Z", approved=False),
        csr("unsigned", "system:node:w1", "2027-01-15T08:00:06Z", issued=False),
        csr("serving", "system:node:w1", "2027-01-15T08:00:07Z", signer="kubernetes.io/kubelet-serving"),
        csr("new", "system:node:m1", "2027-01-15T08:00:10Z"),
        csr("stranger", "system:node:x9", "2027-01-15T08:00:10Z"),
    ])
    assert rotation.kubelet_csrs(client, ["m1", "w1"], since) == {"m1": "new"}


def test_prune_removes_the_leaves_of_dropped_machines_and_keeps_cas_keypairs_secrets_and_foreign_files(tmp_path):
    pki = tmp_path / "pki"
    m2 = {"name": "etcd-peer-m2", "ca": "etcd-ca", "cn": "m2", "usages": ["server", "client"], "ips": ["10.9.9.21"]}
    pki_module(pki, certs=[*CERTS, m2], prune=True)
    (pki / "registry.crt").write_bytes((pki / "ca.crt").read_bytes())  # a self-signed file not ours to drop
    assert pki_module(pki, certs=[*CERTS, m2], prune=True)["changed"] is False
    out = pki_module(pki, prune=True)
    assert out["changed"] is True and out["removed"] == ["etcd-peer-m2"] and out["created"] == []
    assert not (pki / "etcd-peer-m2.crt").exists() and not (pki / "etcd-peer-m2.key").exists()
    assert sorted(rotation.leaves(pki)) == ["admin", "apiserver", "etcd-peer-m1"]
    for kept in ("ca.crt", "ca.key", "etcd-ca.crt", "sa.key", "sa.pub", "encryption-key", "registry.crt"):
        assert (pki / kept).exists(), kept
    assert pki_module(pki, prune=True)["changed"] is False
