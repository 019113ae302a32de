"""The passphrase that protects a stack's secrets on the operator's machine (infra/stack.py): none is built in,
each backend gets its own, kept private beside the state it unlocks; and the secrets runs leave in the state's
temporary directory. No CLI needed: seconds."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from infra import playbook, stack

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_operator_passphrase(monkeypatch):
    monkeypatch.setattr(stack, "OPERATOR_PASSPHRASE", {})


def test_a_backend_gets_its_own_random_passphrase_in_a_private_file(tmp_path, no_operator_passphrase):
    first, second = tmp_path / "one", tmp_path / "two"
    env = stack.passphrase_env(first)
    assert env == {"PULUMI_CONFIG_PASSPHRASE_FILE": str(first / "passphrase")}
    secret = (first / "passphrase").read_text()
    assert len(secret) >= 40 and secret != stack.OLD_DEFAULT_PASSPHRASE
    assert mode(first / "passphrase") == 0o600 and mode(first) == 0o700
    # The same backend keeps its passphrase (its stacks' salt was made with it); another gets a new one.
    assert stack.passphrase_env(first) == env and (first / "passphrase").read_text() == secret
    stack.passphrase_env(second)
    assert (second / "passphrase").read_text() != secret


def test_a_loosened_state_directory_and_passphrase_file_are_made_private_again(tmp_path, no_operator_passphrase):
    stack.passphrase_env(tmp_path / "state")
    (tmp_path / "state").chmod(0o755)
    (tmp_path / "state" / "passphrase").chmod(0o644)
    stack.private_dir(tmp_path / "state")
    stack.passphrase_env(tmp_path / "state")
    assert mode(tmp_path / "state") == 0o700 and mode(tmp_path / "state" / "passphrase") == 0o600


def test_the_operators_passphrase_variable_wins_and_no_file_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(stack, "OPERATOR_PASSPHRASE", {"PULUMI_CONFIG_PASSPHRASE": "from the vault"})
    assert stack.passphrase_env(tmp_path / "state") == {"PULUMI_CONFIG_PASSPHRASE": "from the vault"}
    assert not (tmp_path / "state" / "passphrase").exists()


def test_stacks_without_their_passphrase_stop_with_the_fix_named(tmp_path, no_operator_passphrase):
    """A backend made by an earlier version (fixed default passphrase) must not get a new random one: its
    secrets could no longer be read, not even to destroy the machines."""
    stacks = tmp_path / "state" / ".pulumi" / "stacks" / "pilothouse"
    stacks.mkdir(parents=True)
    (stacks / "dev.json").write_text("{}")
    with pytest.raises(stack.PassphraseError) as err:
        stack.passphrase_env(tmp_path / "state")
    message = str(err.value)
    assert "PULUMI_CONFIG_PASSPHRASE" in message and f"printf {stack.OLD_DEFAULT_PASSPHRASE} >" in message
    assert not (tmp_path / "state" / "passphrase").exists()


def test_no_salt_of_a_shared_passphrase_is_committed_and_the_state_is_not_in_git():
    # The committed file: the first `invoke up` in a checkout appends that checkout's salt to the working copy.
    committed = yaml.safe_load(subprocess.run(["git", "show", "HEAD:Pulumi.dev.yaml"], cwd=REPO, check=True,
                                              capture_output=True, text=True).stdout)
    assert "encryptionsalt" not in committed
    ignored = subprocess.run(["git", "check-ignore", "-q", ".pulumi/passphrase"], cwd=REPO)
    assert ignored.returncode == 0, ".pulumi/ must stay out of git"


def test_the_sweep_removes_kubeconfig_copies_and_dead_runs_private_data_but_not_a_live_runs(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    copy = tmp_path / "kubeconfig123"
    killed = tmp_path / f"{playbook.PRIVATE_PREFIX}{dead.pid}-abc"
    running = tmp_path / f"{playbook.PRIVATE_PREFIX}{os.getpid()}-def"
    other = tmp_path / "pulumi-plugin-cache"
    for directory in (killed / "env", running / "env", other):
        directory.mkdir(parents=True)
    copy.write_text("apiVersion: v1\n")
    (killed / "env" / "ssh_key").write_text("key\n")
    stack.sweep_temporary_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, other.name])


def test_a_destroy_dry_run_names_each_machine_and_what_happens_to_it():
    outputs = {"machines": [{"name": "c-master-1", "address": "10.77.0.20", "roles": ["master", "etcd"]},
                            {"name": "c-worker-1", "address": "10.77.0.40", "roles": ["worker"]}],
               "admin_kubeconfig": "/clusters/c/admin.kubeconfig"}
    local = stack.destroy_plan(outputs, "local", 120)
    assert [line.split()[0] for line in local[:2]] == ["c-master-1", "c-worker-1"]
    assert all(line.endswith("delete machine") for line in local[:2])
    assert local[2].startswith("remove /clusters/c ") and local[3].startswith("120 resources")
    existing = stack.destroy_plan(outputs, "existing", 120)
    assert all("reset host (the host stays)" in line for line in existing[:2])
    assert "delete" not in " ".join(existing)
    mixed = stack.destroy_plan(outputs, "libvirt", 120, vms=["c-worker-1"])
    assert mixed[0].endswith("delete machine") and mixed[1].endswith("delete VM and its disks")
    assert stack.destroy_plan({}, "local", 1) == ["the stack has no machines; destroying it removes its state (1 resources)"]


def test_a_refresh_after_a_reboot_reads_the_machines_and_the_registry_not_the_kubernetes_objects():
    def res(urn: str, type_: str, custom: bool = True) -> dict:
        return {"urn": urn, "type": type_, "custom": custom}

    resources = [res("stack", "pulumi:pulumi:Stack", custom=False), res("cluster", "pilothouse:cluster:Cluster", False),
                 res("py", "pulumi:providers:pulumi-python"), res("k8s", "pulumi:providers:kubernetes"),
                 res("m1", "pulumi-python:dynamic:Resource"), res("vpc", "aws:ec2/vpc:Vpc"),
                 res("ns", "kubernetes:core/v1:Namespace"), res("cg", "kubernetes:yaml/v2:ConfigGroup", False)]
    assert stack.outside_the_cluster(resources) == ["m1", "vpc"]
