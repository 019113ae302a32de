"""Backend existing without machines: what the host check makes of a host's answers, the commands that reach a
host, and the remote scripts' syntax. The same checks run live against real machines in
tests/test_existing_backend.py; a host without systemd or on another distribution cannot be booted here, so
those answers are checked from the probe's output alone."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.machines import remote
from infra.spec_model import SshAccess

KEY = "/keys/id_ed25519"
GOOD = {"uid": ["0"], "os_id": ["debian"], "os_like": [""], "os_name": ["Debian GNU/Linux 12 (bookworm)"],
        "systemd": ["yes"], "mem_kib": [str(8 << 20)], "listening": ["22 "]}


def host(roles=("master", "etcd"), user="root", jump="") -> remote.Host:
    return remote.Host("m1", "10.77.0.20", roles, SshAccess(user, KEY, jump))


def problems(facts: dict, **kwargs) -> list[str]:
    return remote.problems_from_facts(host(**kwargs), "pilothouse", {**GOOD, **facts}, with_vip=False)


def test_a_debian_host_with_systemd_memory_and_free_ports_has_no_problem():
    assert problems({}) == []
    assert problems({"os_id": ["linuxmint"], "os_like": ["ubuntu debian"]}) == []


@pytest.mark.parametrize("facts, fragment", [
    ({"systemd": ["no"]}, "is not running systemd (no /run/systemd/system); every component runs as a systemd unit"),
    ({"os_id": ["fedora"], "os_name": ["Fedora Linux 41"]}, "runs Fedora Linux 41; the roles need Debian or Ubuntu"),
    ({"mem_kib": [str(1 << 20)]}, "has 1024 MiB of memory; a master/etcd host needs at least 1700 MiB"),
    ({"cgroup_limit": [str(512 << 20)]}, "has 512 MiB of memory"),
    ({"listening": ["22 2379 6443 "]}, "TCP port(s) 2379, 6443 already in use"),
    ({"foreign": ["/etc/kubernetes"]}, "/etc/kubernetes exists: the host is or was part of another Kubernetes"),
    ({"claimed": ["other"]}, "belongs to pilothouse cluster 'other'"),
    ({"missing": ["containerd", "runc"]}, "lacks the Debian packages containerd, runc; install them first "
                                          "(`apt-get install containerd runc`)"),
])
def test_each_unfit_answer_is_one_problem_naming_the_host_and_the_fix(facts, fragment):
    (found,) = problems(facts)
    assert found.startswith("host m1 (10.77.0.20): ") and fragment in found


def test_a_host_this_cluster_claimed_may_hold_its_own_ports_and_state():
    assert problems({"claimed": ["pilothouse"], "listening": ["2379 6443 "], "foreign": ["/etc/kubernetes"]}) == []


def test_a_user_without_passwordless_sudo_is_told_how_to_allow_it():
    (found,) = problems({"uid": ["1000"], "sudo": ["no"]}, user="debian")
    assert "debian cannot run sudo without a password" in found and "NOPASSWD" in found


def test_packages_and_ports_follow_the_roles():
    lb, worker = host(roles=("lb",)), host(roles=("worker",))
    assert remote.packages_for(lb, with_vip=True) == ("python3", "iproute2", "iptables", "haproxy", "keepalived")
    assert "containerd" in remote.packages_for(worker, with_vip=False)
    assert remote.ports_for(lb) == [6443]
    assert remote.ports_for(worker) == [10248, 10249, 10250, 10256]
    assert remote.ports_for(host()) == [2379, 2380, 2381, 6443, 10248, 10249, 10250, 10256, 10257, 10259]


@pytest.mark.parametrize("stderr, fragment", [
    ("root@10.77.0.20: Permission denied (publickey).", "SSH refused the key /keys/id_ed25519 (Permission denied)"),
    ("ssh: connect to host 10.77.0.20 port 22: No route to host", "unreachable over SSH (ssh: connect to host"),
    ("Load key \"/keys/id_ed25519\": invalid format", "ssh cannot use the key file"),
])
def test_ssh_failures_say_what_to_fix(stderr, fragment):
    assert fragment in remote._connection_problem(host(), stderr)


def test_a_jump_host_is_reached_with_the_same_key_and_the_hosts_user_unless_it_names_one():
    args = remote.ssh_args(host(jump="10.77.0.10"))
    proxy = shlex.split(next(a for a in args if a.startswith("ProxyCommand=")).removeprefix("ProxyCommand="))
    assert proxy[:3] == ["ssh", "-i", KEY] and proxy[-3:] == ["-W", "%h:%p", "root@10.77.0.10"]
    assert args[-1] == "root@10.77.0.20"
    proxy = shlex.split(remote.proxy_command(SshAccess("debian", KEY, "ops@bastion:2222")))
    assert proxy[-5:] == ["-p", "2222", "-W", "%h:%p", "ops@bastion"]
    assert remote.proxy_command(SshAccess("root", KEY, "")) == ""


@pytest.mark.parametrize("script", ["PROBE", "CLAIM", "RESET"])
def test_the_remote_scripts_are_valid_posix_shell(script):
    text = getattr(remote, script) % {"foreign": "/a", "state": remote.STATE_DIR, "packages": "p", "paths": "/x",
                                      "units": "u", "cluster": "c", "devices": "d", "dirs": "/e", "etcd_user": "etcd"}
    result = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_reset_covers_every_unit_and_binary_the_roles_install():
    repo = remote.__file__.rsplit("/infra/", 1)[0]
    roles = subprocess.run(["grep", "-rhoE", r"(/etc/systemd/system/[a-z-]+\.service|/usr/local/bin/[a-z-]+)",
                            "roles"], capture_output=True, text=True, cwd=repo)
    # The pilothouse_binaries tasks name their binaries, which go to /usr/local/bin, and keep a record.
    names = subprocess.run(["grep", "-rhoE", r"^    names: \[[a-z, -]+\]", "roles"], capture_output=True, text=True,
                           cwd=repo)
    sent = {b.strip() for line in names.stdout.splitlines() for b in line.split("[", 1)[1].rstrip("]").split(",")}
    assert {"etcd", "kube-apiserver", "kubelet", "kube-proxy"} <= sent, names.stdout
    shared = Path(repo, "roles", "module_utils", "pilothouse_binary_state.py").read_text()
    record = re.search(r'^RECORD = "(/[^"]+)"', shared, re.M).group(1)
    installed = set(roles.stdout.split()) | {f"/usr/local/bin/{b}" for b in sent} | {str(Path(record).parent)}
    missing = sorted(p for p in installed if p not in remote.RESET_PATHS)
    assert not missing, f"the roles install {missing}, which the reset would leave behind"


def test_the_reset_removes_the_etcd_user_only_when_the_claim_found_none():
    repo = Path(remote.__file__).resolve().parents[2]
    defaults = yaml.safe_load((repo / "roles/etcd/defaults/main.yml").read_text())
    assert defaults["etcd_user"] == remote.ETCD_USER, "the reset would remove another user than the role makes"
    claim = remote.CLAIM % {"state": "/s", "paths": "/x", "dirs": "/e", "units": "u", "cluster": "c",
                            "etcd_user": "etcd"}
    reset = remote.RESET % {"state": "/s", "paths": "/x", "devices": "d", "units": "u", "etcd_user": "etcd"}
    assert 'getent passwd etcd >/dev/null || touch "$new/etcd-user-new"' in claim
    assert 'if [ -e "$state/etcd-user-new" ]; then userdel etcd' in reset
    assert 'if [ -e "$state/etcd-group-new" ]; then groupdel etcd' in reset
    # The user goes after its units stopped (userdel refuses a user with processes) and before the claim is forgotten.
    assert reset.index("disable --now") < reset.index("userdel") < reset.index('rm -rf "$state"')
