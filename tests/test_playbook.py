"""The playbook's inputs and helpers that need no machines: the inventory built from the spec, the scale-out
decision, the failure summary and the live progress echo."""

from __future__ import annotations

import threading
import time

import pytest

from infra import playbook
from infra.spec import from_config

# --- inventory -----------------------------------------------------------------------------------------


def test_inventory_groups_put_masters_in_etcd_control_plane_and_kube_node():
    groups = playbook.inventory(from_config({}))["all"]["children"]
    masters = ["pilothouse-master-1", "pilothouse-master-2", "pilothouse-master-3"]
    assert list(groups["etcd"]["hosts"]) == masters
    assert list(groups["kube_control_plane"]["hosts"]) == masters
    assert list(groups["kube_node"]["hosts"]) == masters + ["pilothouse-worker-1", "pilothouse-worker-2"]
    assert list(groups["lb"]["hosts"]) == ["pilothouse-lb-1"]


def test_inventory_hosts_carry_their_addresses_and_connect_address_overrides():
    spec = from_config({})
    inv = playbook.inventory(spec, {"pilothouse-worker-1": "203.0.113.9"}, ssh_user="admin")["all"]
    assert inv["hosts"]["pilothouse-master-1"] == {
        "ansible_host": "10.77.0.20",
        "pilothouse_pod_subnet": "10.244.0.0/24",
    }
    assert inv["hosts"]["pilothouse-lb-1"] == {"ansible_host": "10.77.0.10"}  # no kubelet, no pod subnet
    assert inv["hosts"]["pilothouse-worker-1"]["ansible_host"] == "203.0.113.9"
    assert inv["vars"]["ansible_user"] == "admin"
    assert inv["vars"]["pilothouse_cluster_dns"] == "10.96.0.10"
    assert inv["vars"]["pilothouse_api_endpoint"] == "10.77.0.10"
    assert inv["vars"]["pilothouse_api_port"] == 6443
    assert inv["vars"]["pilothouse_api_vip"] == ""


def test_inventory_carries_only_what_the_roles_read():
    inv = playbook.inventory(from_config({}))["all"]
    assert sorted(inv["vars"]) == [
        "pilothouse_api_endpoint",
        "pilothouse_api_port",
        "pilothouse_api_vip",
        "pilothouse_cluster_dns",
        "pilothouse_cluster_name",
        "pilothouse_kubernetes_version",
        "pilothouse_pod_cidr",
        "pilothouse_pod_network",
        "pilothouse_service_cidr",
    ]
    assert "ansible_user" not in inv["vars"]  # only when asked for


def test_inventory_with_external_etcd_lists_etcd_machines_only():
    groups = playbook.inventory(from_config({"etcdNodes": 3}))["all"]["children"]
    assert list(groups["etcd"]["hosts"]) == ["pilothouse-etcd-1", "pilothouse-etcd-2", "pilothouse-etcd-3"]
    assert "pilothouse-etcd-1" not in groups["kube_node"]["hosts"]


def test_inventory_with_two_lbs_names_the_vip_as_the_api_endpoint():
    inv = playbook.inventory(from_config({"lbs": 2, "vip": "10.77.0.5"}))["all"]
    assert inv["vars"]["pilothouse_api_endpoint"] == inv["vars"]["pilothouse_api_vip"] == "10.77.0.5"


# --- adding workers: the playbook's scale-out path ---------------------------------------------------


def test_one_more_worker_is_recognised_as_a_plain_worker_addition():
    before = playbook.inventory(from_config({}))
    after = playbook.inventory(from_config({"workers": 3}))
    assert playbook.added_workers(before, after) == ["pilothouse-worker-3"]


@pytest.mark.parametrize(
    "change",
    [
        {"masters": 5},  # new masters join etcd and the control plane
        {"workers": 3, "serviceCidr": "10.100.0.0/16"},  # a worker and a cluster-wide change
        {"workers": 1},  # removing is not adding
        {},  # nothing added
    ],
)
def test_anything_but_added_workers_needs_the_whole_playbook(change):
    before = playbook.inventory(from_config({}))
    assert playbook.added_workers(before, playbook.inventory(from_config(change))) == []


# --- failures: what a failed run says ------------------------------------------------------------------


def _event(kind: str, host: str, task: str, res: dict, ignore_errors: bool | None = None) -> dict:
    """An ansible-runner event as `Runner.events` yields it (only the fields failures() reads matter)."""
    return {
        "event": kind,
        "uuid": f"{host}-{task}",
        "stdout": "",
        "event_data": {
            "host": host,
            "task": task,
            "play": "Control plane",
            "res": res,
            "ignore_errors": ignore_errors,
        },
    }


def test_failures_name_each_failed_host_its_task_and_ansibles_message():
    events = [
        {"event": "playbook_on_start", "event_data": {}},
        _event("runner_on_ok", "pilothouse-master-1", "Start etcd", {"changed": True}),
        _event(
            "runner_on_failed",
            "pilothouse-master-2",
            "Start etcd",
            {"msg": "non-zero return code", "stderr": "Job for etcd.service failed.\n  See the journal.", "rc": 1},
        ),
        # A failure the play tolerates is not a reason the run failed.
        _event("runner_on_failed", "pilothouse-master-3", "Probe etcd", {"msg": "rc 1"}, ignore_errors=True),
        _event(
            "runner_on_unreachable",
            "pilothouse-worker-1",
            "Gathering Facts",
            {"msg": "Failed to connect to the host via ssh: Connection refused", "unreachable": True},
        ),
        _event("runner_on_failed", "pilothouse-worker-2", "Pull pause", {"stderr": "image not found"}),
        _event("runner_on_failed", "pilothouse-lb-1", "Start haproxy", {}),
    ]
    assert playbook.failures(events) == [
        "pilothouse-master-2: task 'Start etcd': non-zero return code: Job for etcd.service failed. "
        "See the journal.",
        "pilothouse-worker-1: unreachable: Failed to connect to the host via ssh: Connection refused",
        "pilothouse-worker-2: task 'Pull pause': image not found",
        "pilothouse-lb-1: task 'Start haproxy': no message",
    ]


def test_failures_keep_a_message_that_already_holds_stderr_and_cut_long_ones():
    events = [
        _event("runner_on_failed", "m1", "Check", {"msg": "failed: disk full", "stderr": "disk full"}),
        _event("runner_on_failed", "m2", "Render", {"msg": "x" * 2000}),
    ]
    lines = playbook.failures(events)
    assert lines[0] == "m1: task 'Check': failed: disk full"
    assert lines[1] == "m2: task 'Render': " + "x" * 600


def test_a_run_without_failed_hosts_has_no_failure_lines():
    assert playbook.failures([_event("runner_on_ok", "m1", "Start etcd", {})]) == []


# --- playbook progress during `invoke up` ---------------------------------------------------------------


def test_a_running_playbooks_phases_are_echoed_as_they_are_written(tmp_path):
    since = time.time()
    stdout = tmp_path / "c1" / "logs" / "runs" / "run-1" / "stdout"
    stdout.parent.mkdir(parents=True)
    stdout.write_text("PLAY [Control plane] ****\nok: [m1]\nTASK [kube_apiserver : Write the unit] ***\nTASK [par")
    echoed: list[str] = []
    stop = threading.Event()
    follower = threading.Thread(
        target=playbook.follow_runs, args=(tmp_path, "*/logs/runs/*/stdout", since, stop, echoed.append)
    )
    follower.start()
    try:
        time.sleep(1.5)
        with stdout.open("a") as f:
            f.write("tial] ***\nfatal: [m2]: FAILED! => {}\n")
        time.sleep(1.5)
    finally:
        stop.set()
        follower.join()
    assert [line.split("s  ", 1)[1] for line in echoed] == [
        "PLAY [Control plane]",
        "TASK [kube_apiserver : Write the unit]",
        "TASK [partial]",
        "fatal: [m2]: FAILED! => {}",
    ]
