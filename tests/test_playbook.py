"""The playbook's inputs and helpers that need no machines: the inventory built from the spec, the scale-out
decision, the failure summary and the live progress echo."""

from __future__ import annotations

import configparser
import shlex
import stat
import subprocess
import threading
import time

import pytest
import yaml

from infra import known_hosts, playbook
from infra.machines import keys
from infra.spec import from_config

# --- inventory -----------------------------------------------------------------------------------------


def test_inventory_groups_put_masters_in_etcd_control_plane_and_kube_node():
    groups = playbook.inventory(from_config({}))["all"]["children"]
    masters = ["pilothouse-master-1", "pilothouse-master-2", "pilothouse-master-3"]
    assert list(groups["etcd"]["hosts"]) == masters
    assert list(groups["kube_control_plane"]["hosts"]) == masters
    assert list(groups["kube_node"]["hosts"]) == masters + ["pilothouse-worker-1", "pilothouse-worker-2"]
    assert list(groups["lb"]["hosts"]) == ["pilothouse-lb-1"]


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGv2p1iGpQk2pAdbl7N1jZt8H5wq3nF0Wf1D7w1t0K6e root@m"


def test_inventory_hosts_carry_their_addresses_and_local_machines_only_their_pinned_host_key_check():
    spec = from_config({})
    local_records = [{"name": m.name, "roles": list(m.roles), "address": m.address, "ssh_address": m.address,
                      "ssh_user": "root", "ssh_key_file": "", "jump_host": "", "ssh_host_key": HOST_KEY}
                     for m in spec.machines]
    inv = playbook.inventory(spec, local_records)["all"]
    known = str(playbook.cluster_dir("pilothouse") / "known_hosts")
    assert inv["hosts"]["pilothouse-master-1"] == {
        "ansible_host": "10.77.0.20",
        "pilothouse_pod_subnet": "10.244.0.0/24",
        "pilothouse_ssh_known_host": "10.77.0.20 " + " ".join(HOST_KEY.split()[:2]) + " pilothouse-pinned",
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes -o HashKnownHosts=no",
    }
    assert inv["hosts"]["pilothouse-lb-1"]["ansible_host"] == "10.77.0.10"  # no kubelet, no pod subnet
    assert "pilothouse_pod_subnet" not in inv["hosts"]["pilothouse-lb-1"]
    # Without the backend's records (tests that never connect) there is nothing to say about connections.
    assert playbook.inventory(spec)["all"]["hosts"]["pilothouse-lb-1"] == {"ansible_host": "10.77.0.10"}
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


def test_a_backup_schedule_turns_the_etcd_roles_timer_on_with_its_retention():
    scheduled = playbook.inventory(from_config({"etcdBackupSchedule": "daily", "etcdBackupRetention": 2}))["all"]
    assert {k: v for k, v in scheduled["vars"].items() if k.startswith("etcd_backup")} == {
        "etcd_backup_timer": True, "etcd_backup_schedule": "daily", "etcd_backup_retention": 2}
    role = yaml.safe_load((playbook.ROLES / "etcd" / "defaults" / "main.yml").read_text())
    assert role["etcd_backup_timer"] is False  # what a cluster without a schedule gets


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


def test_a_separate_ssh_address_user_key_and_jump_host_become_connection_vars_not_node_addresses():
    spec = from_config({})
    worker = {"name": "pilothouse-worker-1", "roles": ["worker"], "address": "10.77.0.40",
              "ssh_address": "203.0.113.9", "ssh_user": "admin", "ssh_key_file": "/keys/id",
              "jump_host": "ops@bastion.example:2222"}
    host = playbook.inventory(spec, [worker])["all"]["hosts"]["pilothouse-worker-1"]
    assert host["ansible_host"] == "10.77.0.40"  # the roles' node IP stays the machine-network address
    assert (host["ansible_user"], host["ansible_become"]) == ("admin", True)
    assert host["ansible_ssh_private_key_file"] == "/keys/id"
    args = shlex.split(host["ansible_ssh_common_args"])
    known = f"UserKnownHostsFile={playbook.cluster_dir('pilothouse') / 'known_hosts'}"
    # Its key is not known beforehand: the first one seen is recorded in the cluster's file, for the jump host too.
    assert args[:8] == ["-o", known, "-o", "StrictHostKeyChecking=accept-new", "-o", "HashKnownHosts=no",
                        "-o", "HostName=203.0.113.9"]
    assert "pilothouse_ssh_known_host" not in host
    proxy = shlex.split(args[9].removeprefix("ProxyCommand="))
    assert proxy[:3] == ["ssh", "-i", "/keys/id"] and proxy[-4:] == ["2222", "-W", "%h:%p", "ops@bastion.example"]
    assert known in proxy and "StrictHostKeyChecking=accept-new" in proxy


def test_a_host_key_mismatch_is_reported_as_one_not_as_a_plain_unreachable_host():
    lines = playbook.failures([_event("runner_on_unreachable", "m1", "Gathering Facts", {
        "msg": "Failed to connect to the host via ssh: @@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n"
               "Host key verification failed.", "unreachable": True})])
    assert lines[0].startswith("m1: unreachable: its SSH host key is not the one recorded in the cluster's "
                               "known_hosts file"), lines
    assert "ssh-keygen -R" in lines[0] and lines[0].endswith("Host key verification failed.")


def test_the_known_hosts_file_gets_the_pinned_keys_and_keeps_keys_recorded_on_first_use(tmp_path):
    path = tmp_path / "cluster" / "known_hosts"
    first, gone = known_hosts.entry("10.77.0.20", HOST_KEY), known_hosts.entry("10.77.0.41", HOST_KEY)
    known_hosts.write(path, [first, gone])
    assert path.read_text() == f"{first}\n{gone}\n"
    assert (stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)) == (0o600, 0o700)
    # ssh adds a host it met first (accept-new); the machine at .20 is made anew with another key, .41 removed.
    with path.open("a") as f:
        f.write("198.51.100.7 ssh-ed25519 AAAAfirstuse\n10.77.0.20 ssh-rsa AAAAstale\n")
    renewed = known_hosts.entry("10.77.0.20", "ssh-ed25519 AAAAnewkey root@m")
    known_hosts.write(path, [renewed])
    assert path.read_text().splitlines() == ["198.51.100.7 ssh-ed25519 AAAAfirstuse",
                                             "10.77.0.20 ssh-ed25519 AAAAnewkey pilothouse-pinned"]


def test_the_known_hosts_file_is_what_ssh_reads_for_a_pinned_key(tmp_path):
    """ssh-keygen -F answers from the file the way ssh looks a host up in it."""
    path = tmp_path / "known_hosts"
    known_hosts.write(path, [known_hosts.entry("10.77.0.20", HOST_KEY)])
    found = subprocess.run(["ssh-keygen", "-F", "10.77.0.20", "-f", str(path)], capture_output=True, text=True)
    assert found.returncode == 0 and HOST_KEY.split()[1] in found.stdout, found
    assert subprocess.run(["ssh-keygen", "-F", "10.77.0.21", "-f", str(path)], capture_output=True).returncode == 1


def test_ansible_checks_host_keys_and_keeps_its_persistent_connections():
    env = playbook.ansible_env()
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    config = configparser.ConfigParser()
    config.read(env["ANSIBLE_CONFIG"])
    assert config.getboolean("defaults", "host_key_checking")
    ssh_args = config.get("ssh_connection", "ssh_args")
    # No host key option here: ansible.cfg's ssh_args come first on ssh's command line, and the first value wins.
    assert "ControlPersist=" in ssh_args and "StrictHostKeyChecking" not in ssh_args and "KnownHosts" not in ssh_args
    assert config.getboolean("ssh_connection", "pipelining")


def test_a_playbook_runs_in_a_new_interpreter_and_its_failure_comes_back_as_a_message(tmp_path, monkeypatch):
    """run_playbook hands the run to a new interpreter (ansible-runner's fork is unsafe beside gRPC threads).
    Here validation refuses the run (no extra vars) before any machine is contacted: the refusal must come back
    as a PlaybookError naming each host and Ansible's message, and the run's private data must be gone."""
    monkeypatch.setattr(playbook, "CLUSTERS_ROOT", tmp_path / "clusters")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    spec = from_config({})
    logs = tmp_path / "clusters" / spec.name / "logs"
    with pytest.raises(playbook.PlaybookError) as refused:
        playbook.run_playbook(playbook.inventory(spec), {}, keys.generate_ed25519("test").private_key, logs)
    lines = str(refused.value).splitlines()
    assert lines[0] == "the playbook (site.yml) failed:" and lines[-1] == f"full log: {logs / 'ansible.log'}"
    assert sorted(line.split(":")[0].strip() for line in lines[1:-1]) == sorted(m.name for m in spec.machines)
    assert all("missing required arguments: pilothouse_admin_kubeconfig" in line for line in lines[1:-1]), lines
    assert (logs / "ansible.log").is_file()
    # The cluster's directory was the one this process named, and the run left nothing in TMPDIR.
    assert (tmp_path / "clusters" / spec.name / "known_hosts").exists()
    assert not list(tmp_path.glob(f"{playbook.PRIVATE_PREFIX}*"))
