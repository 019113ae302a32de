"""The CIS Kubernetes Benchmark (kube-bench, built from its Go module) finds no failing check on a live cluster."""
from __future__ import annotations

from collections import Counter

import pytest

from infra import cis

INVENTORY = {"all": {"children": {
    "kube_control_plane": {"hosts": {"m1": {}, "m2": {}}},
    "etcd": {"hosts": {"m1": {}, "m2": {}}},
    "kube_node": {"hosts": {"m1": {}, "m2": {}, "w1": {}, "w2": {}}},
}}}


def test_the_first_master_gets_the_control_plane_checks_and_the_first_worker_the_node_checks():
    assert cis.targets(INVENTORY) == {"m1": "master,controlplane,etcd,policies,node", "w1": "node"}


def test_an_external_etcd_member_gets_the_etcd_checks_and_a_cluster_without_workers_none_of_its_own():
    inventory = {"all": {"children": {"kube_control_plane": {"hosts": {"m1": {}}}, "etcd": {"hosts": {"e1": {}}},
                                      "kube_node": {"hosts": {"m1": {}}}}}}
    assert cis.targets(inventory) == {"m1": "master,controlplane,policies,node", "e1": "etcd"}


def test_findings_are_read_from_every_control_group_of_a_report():
    report = {"Controls": [
        {"id": "4", "tests": [{"section": "4.1", "results": [
            {"test_number": "4.1.1", "status": "PASS", "test_desc": "unit file mode (Automated)", "remediation": ""},
            {"test_number": "4.1.2", "status": "FAIL", "test_desc": "unit owner (Automated)",
             "remediation": "Run this.\nchown root:root /etc/x\n"}]}]},
        {"id": "5", "tests": [{"section": "5.1", "results": None}]},
    ], "Totals": {}}
    found = cis.findings("w1", report)
    assert [(f.number, f.status) for f in found] == [("4.1.1", "PASS"), ("4.1.2", "FAIL")]
    text = cis.render(found)
    assert "w1: 1 PASS, 1 FAIL, 0 WARN, 0 INFO" in text
    assert "[FAIL] w1 4.1.2 unit owner (Automated)" in text and "chown root:root /etc/x" in text


def test_a_stack_without_a_cluster_is_refused_before_anything_is_built():
    with pytest.raises(cis.CisError, match="bring it up first"):
        cis.run({"ssh_private_key": "k"})


@pytest.mark.artifacts
@pytest.mark.machines
def test_kube_bench_finds_no_failing_check_on_a_master_and_a_worker(shared_cluster):
    found = cis.run(shared_cluster.outputs)
    print(cis.render(found))
    spec = shared_cluster.spec
    master, worker = spec.masters[0].name, spec.workers[0].name
    counts = {host: Counter(f.status for f in found if f.host == host) for host in (master, worker)}
    # The checks really ran against this cluster's files and flags (a wrong path makes kube-bench skip or FAIL).
    assert counts[master]["PASS"] >= 60 and counts[worker]["PASS"] >= 15, counts
    assert [f"{f.host} {f.number} {f.description}" for f in found if f.status == "FAIL"] == []
