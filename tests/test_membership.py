"""Membership changes through `pulumi up` on the session's shared HA cluster: masters 3 -> 5 -> 3 with etcd
stacked on them, so two etcd members join (learner, then promoted) and leave again, and the worker test_e2e
added is drained and removed in the shrinking run. A request loop runs through the load balancer the whole
time; its figures are printed (pytest -s), not asserted. The cluster ends with the masters it started with, and
a playbook run after the change has nothing left to do.
"""
from __future__ import annotations

import json
import time

import pytest

from infra import drill, playbook, status
from infra.machines import local
from conftest import create_namespace

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

NS = "membership-test"


def etcd_members(live, via: str) -> list[dict]:
    return json.loads(live.ssh(via, "etcdctl-pilothouse member list -w json").stdout)["members"]


def ready_nodes(live) -> dict[str, str]:
    items = live.kubectl.json("get", "nodes")["items"]
    return {n["metadata"]["name"]: next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
            for n in items}


def routes(live, machine: str) -> str:
    return live.ssh(machine, "ip -4 route show").stdout


def test_masters_grow_to_5_and_shrink_to_3_one_etcd_member_at_a_time_and_a_dropped_worker_is_drained(shared_cluster):
    live = shared_cluster
    masters, workers = len(live.spec.masters), len(live.spec.workers)
    assert masters == 3 and workers >= 3, "test_e2e adds the worker this test removes"
    first = live.spec.masters[0].name
    create_namespace(live.kubectl, NS)
    live.kubectl.run("-n", NS, "create", "configmap", "kept", "--from-literal=k=v")
    uid = live.kubectl.json("-n", NS, "get", "configmap", "kept")["metadata"]["uid"]
    loop = drill.RequestLoop(drill.ApiClient(live.kubeconfig))
    loop.start()
    try:
        started = time.monotonic()
        live.up(masters=5)
        grew = time.monotonic() - started
        grown = live.spec
        members = etcd_members(live, first)
        assert sorted(m.get("name") for m in members) == sorted(m.name for m in grown.etcd)
        assert len(members) == 5 and not [m for m in members if m.get("isLearner")], members
        assert ready_nodes(live) == {m.name: "True" for m in grown.nodes}
        # Every node routes to the new masters' pod subnets.
        for new in grown.masters[3:]:
            assert f"{new.pod_subnet} via {new.address}" in routes(live, grown.workers[0].name), new.name

        dropped = [*grown.masters[3:], grown.workers[-1]]
        started = time.monotonic()
        live.up(masters=3, workers=workers - 1)
        shrank = time.monotonic() - started
    finally:
        stats = loop.stop()
    print(f"\nmasters 3 -> 5: {grew:.0f}s; 5 -> 3 with a worker removed: {shrank:.0f}s; requests through the LB "
          f"meanwhile: {stats.sent} sent, {stats.failed} failed, longest gap {stats.longest_gap:.1f}s")
    for failure in stats.failures:
        print(f"  failed: {failure}")

    spec = live.spec
    members = etcd_members(live, first)
    assert sorted(m.get("name") for m in members) == sorted(m.name for m in spec.etcd) and len(members) == 3
    assert ready_nodes(live) == {m.name: "True" for m in spec.nodes}
    for gone in dropped:
        assert local.status(gone.name) == "absent", gone.name
        for machine in (spec.workers[0].name, spec.lbs[0].name):
            assert gone.pod_subnet not in routes(live, machine), f"{machine} still routes to {gone.name}'s pods"
    assert live.kubectl.json("-n", NS, "get", "configmap", "kept")["metadata"]["uid"] == uid
    report = status.collect(live.outputs["machines"], live.outputs["ssh_private_key"], live.kubeconfig)
    assert report.healthy, report.problems
    assert len(report.etcd_members) == 3 and sum(m["leader"] for m in report.etcd_members) == 1
    live.kubectl.run("delete", "namespace", NS, "--wait=false")
    # Nothing of the change is left half-done: the next run has nothing to do.
    outputs = live.outputs
    again = playbook.run_playbook(json.loads(outputs["inventory"]), json.loads(outputs["playbook_vars"]),
                                  outputs["ssh_private_key"], playbook.cluster_dir(spec.name) / "logs")
    assert again.changed == 0, f"changed={again.changed}; see {again.log}"
