"""Day-2 commands without machines: certificate expiry listing and warnings, the refusals of `invoke etcd.restore`
(bad checksum, another cluster's snapshot) before anything is touched, a snapshot's own sha256 trailer, and the
drills' refusals of a cluster too small for them. The live halves are in tests/test_second_day.py."""
from __future__ import annotations

import datetime
import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from infra import certs, drill, etcd, playbook, status


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path) -> Path:
    """A CA valid 10 years and two leaves it signed: one for 400 days, one for 5."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
            "-out", "ca.crt", "-days", "3650", "-subj", "/CN=test-ca", cwd=d)
    for name, days in (("long", 400), ("short", 5)):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", "-subj", f"/O=system:nodes/CN={name}-leaf", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", str(days), cwd=d)
    return d


def test_certs_lists_every_certificate_soonest_first_with_subject_issuer_and_days_left(pki):
    found = certs.scan(pki)
    assert [c.path.name for c in found] == ["short.crt", "long.crt", "ca.crt"]
    short = found[0]
    assert short.subject == "CN=short-leaf,O=system:nodes" and short.issuer == "CN=test-ca"
    assert 4.9 < short.days_left() <= 5 and not short.is_ca and found[2].is_ca
    table = certs.render(found).splitlines()
    assert len(table) == 4 and table[1].split()[:2] == ["short.crt", "CN=short-leaf,O=system:nodes"]
    assert table[1].split()[-1] == "5"


def test_only_a_certificate_under_30_days_is_warned_about_and_an_expired_one_says_so(pki):
    found = certs.scan(pki)
    warned = certs.warnings(found)
    assert len(warned) == 1 and warned[0].startswith("certificate short.crt (CN=short-leaf,O=system:nodes) expires in")
    assert "invoke playbook" in warned[0]
    later_on = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=380)
    later = certs.warnings(found, now=later_on)
    assert [w.split()[1] for w in later] == ["short.crt", "long.crt"]
    assert "EXPIRED" in later[0] and "expires in" in later[1]


def test_status_renders_certificate_warnings_without_calling_the_cluster_unhealthy(pki):
    report = status.Report(machines=[], warnings=certs.warnings(certs.scan(pki)))
    text = status.render(report)
    assert "WARNING: certificate short.crt" in text and report.healthy


def snapshot_file(path: Path, content: bytes = b"\0" * 8192) -> Path:
    """A file shaped like an etcd snapshot: whole pages, then the sha256 of them."""
    path.write_bytes(content + hashlib.sha256(content).digest())
    return path


def test_a_snapshot_trailer_is_checked_against_its_content(tmp_path):
    good = snapshot_file(tmp_path / "good.db")
    assert etcd.trailer_matches(good)
    bad = tmp_path / "bad.db"
    bad.write_bytes(good.read_bytes()[:100] + b"x" + good.read_bytes()[101:])
    assert not etcd.trailer_matches(bad)
    cut = tmp_path / "cut.db"
    cut.write_bytes(good.read_bytes()[:-10])
    assert not etcd.trailer_matches(cut)


@pytest.fixture
def cluster(pki, tmp_path) -> etcd.ClusterAccess:
    (pki / "etcd-ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    return etcd.ClusterAccess("phunit", (("phunit-master-1", "10.9.9.20"),), {}, {"pilothouse_pki_dir": str(pki)},
                              "", str(tmp_path / "admin.kubeconfig"))


def backed_up(cluster: etcd.ClusterAccess, directory: Path, origin: str | None = None) -> Path:
    """A snapshot with the .sha256 and .json files `etcd.backup` writes; `origin` another cluster's name."""
    directory.mkdir(exist_ok=True)
    path = snapshot_file(directory / "etcd-phunit-20260101T000000000000Z.db")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    ca = hashlib.sha256(b"another CA").hexdigest() if origin else etcd.ca_fingerprint(cluster.pki)
    path.with_name(path.name + ".json").write_text(json.dumps({
        "cluster": origin or cluster.name, "etcd_ca_sha256": ca, "revision": 7, "total_keys": 3,
        "taken_at": "2026-01-01T00:00:00+00:00"}))
    return path


@pytest.fixture
def no_playbook(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the restore ran the playbook for a snapshot it should have refused")
    monkeypatch.setattr(playbook, "run_playbook", refuse)


def test_restore_refuses_a_snapshot_whose_checksum_does_not_match_before_touching_anything(cluster, tmp_path,
                                                                                            no_playbook):
    path = backed_up(cluster, tmp_path / "backups")
    with path.open("r+b") as f:
        f.seek(10)
        f.write(b"corrupt")
    with pytest.raises(etcd.BackupError, match="sha256 is .* records .*Nothing was touched; restore another backup"):
        etcd.restore(cluster, path)


def test_restore_refuses_another_clusters_snapshot_before_touching_anything(cluster, tmp_path, no_playbook):
    path = backed_up(cluster, tmp_path / "backups", origin="phother")
    with pytest.raises(etcd.BackupError, match="taken from cluster 'phother' with another etcd CA.*Nothing was "
                                               "touched; restore a snapshot of phunit"):
        etcd.restore(cluster, path)


def test_restore_refuses_a_snapshot_without_the_files_backup_writes_beside_it(cluster, tmp_path, no_playbook):
    path = snapshot_file(tmp_path / "etcd-hand-made.db")
    with pytest.raises(etcd.BackupError, match="is missing beside it"):
        etcd.restore(cluster, path)
    with pytest.raises(etcd.BackupError, match="no such snapshot"):
        etcd.restore(cluster, tmp_path / "absent.db")


@pytest.mark.parametrize("name, fragment", [
    ("master", "needs 2 or more master machines behind a load balancer, or killing one takes the API down by "
               "design; this cluster has 1"),
    ("etcd-leader", "needs 3 or more etcd machines (etcd members), or losing one loses quorum by design; this "
                    "cluster has 1"),
    ("lb", "needs 2 or more lb machines sharing a virtual address, or killing one takes the API down by design; "
           "this cluster has 0"),
    ("worker", "needs 2 or more worker machines so the pods have somewhere to go; this cluster has 1"),
])
def test_each_drill_refuses_a_cluster_too_small_for_it_before_touching_anything(name, fragment):
    machines = [{"name": "m1", "roles": ["master", "etcd"], "address": "10.9.9.20"},
                {"name": "w1", "roles": ["worker"], "address": "10.9.9.40"}]

    def never(*_):
        raise AssertionError("the drill touched the cluster")

    with pytest.raises(drill.DrillError, match=re.escape(fragment) + "$"):
        drill.run(name, machines, "", "", kill=never, bring_back=never)
    with pytest.raises(drill.DrillError, match="unknown drill 'disk'; available: master, etcd-leader, lb, worker"):
        drill.run("disk", machines, "", "", kill=never, bring_back=never)
