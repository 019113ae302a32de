"""The local backend boots real systemd-nspawn machines; these tests log into them over the bridge.

Needs root. Machines live on test-only networks (10.251.7.0/24 on phtest0, 10.251.8.0/24 on phtest1), and
every fixture destroys what it made even when a test fails.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from infra.artifacts import load_lock
from infra.machines import host, keys, local
from infra.machines.errors import MachineConflictError, MachineNotReadyError, MachineSpecError
from infra.machines.local import MachineSpec

REPO = Path(__file__).resolve().parents[1]
BRIDGE = "phtest0"
CLEAN_BRIDGE = "phtest1"  # used by one machine only, so its removal can be asserted


@pytest.fixture(scope="module")
def key() -> keys.KeyPair:
    return keys.generate_ed25519("pilothouse-test")


@pytest.fixture(scope="module")
def pair(key):
    """Two machines on one bridge, destroyed afterwards whatever happens."""
    specs = [MachineSpec("pht-a", "10.251.7.11", 24, BRIDGE, key.public_key),
             MachineSpec("pht-b", "10.251.7.12", 24, BRIDGE, key.public_key)]
    try:
        yield [local.create(spec, key.private_key) for spec in specs]
    finally:
        for spec in specs:
            local.destroy(spec.name)
        assert_no_trace("pht-a")
        assert_no_trace("pht-b", bridge=BRIDGE)


def connect(state: local.MachineState, key: keys.KeyPair) -> paramiko.SSHClient:
    """Log in as root with the machine's host key pinned (no trust on first use)."""
    client = paramiko.SSHClient()
    client.get_host_keys().add(state.address, "ssh-ed25519", keys.host_key_from_line(state.ssh_host_key))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(state.address, username="root", pkey=keys.load_private_key(key.private_key), timeout=10,
                   allow_agent=False, look_for_keys=False)
    return client


def ssh(state: local.MachineState, key: keys.KeyPair, command: str) -> tuple[int, str]:
    client = connect(state, key)
    try:
        _, stdout, stderr = client.exec_command(command, timeout=30)
        out = stdout.read().decode() + stderr.read().decode()
        return stdout.channel.recv_exit_status(), out.strip()
    finally:
        client.close()


def live_processes_of(name: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()  # empty for zombies, which hold nothing
        except OSError:
            continue
        if f"--machine={name}".encode() in cmdline.split(b"\0"):
            found.append(int(proc.name))
    return found


def assert_no_trace(name: str, bridge: str | None = None) -> None:
    assert local.status(name) == "absent"
    assert not local.machine_dir(name).exists(), f"state dir of {name} left behind"
    mounts = Path("/proc/self/mounts").read_text()
    assert str(local.machine_dir(name)) not in mounts, f"mount of {name} left behind"
    assert not list(Path("/sys/fs/cgroup").glob(f"*/pm-{name}")), f"cgroup pm-{name} left behind"
    assert not live_processes_of(name), f"systemd-nspawn of {name} still running"
    assert not any(n.startswith(f"vb-{name}"[:15]) for n in os.listdir("/sys/class/net")), f"veth of {name}"
    if bridge:
        assert not Path("/sys/class/net", bridge).exists(), \
            f"bridge {bridge} left behind, attached: {host.bridge_members(bridge)}"


# --- specs (no machines needed) ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"name": "Bad_Name"}, "not a valid hostname"),
    ({"address": "10.251.7.1"}, "reserved"),
    ({"address": "10.251.7.255"}, "reserved"),
    ({"address": "10.251.7.300"}, "not an IPv4 address"),
    ({"cidr_prefix": 30}, "too small"),
    ({"bridge": "a-very-long-bridge-name"}, "bridge name"),
    ({"ssh_public_key": "not a key"}, "authorized_keys line"),
])
def test_invalid_specs_are_refused_with_the_fix(kwargs, message):
    base = {"name": "m1", "address": "10.251.7.20", "cidr_prefix": 24, "bridge": BRIDGE,
            "ssh_public_key": "ssh-ed25519 AAAAC3Nza test"}
    with pytest.raises(MachineSpecError, match=message):
        MachineSpec(**{**base, **kwargs})


def test_the_host_takes_the_first_address_of_the_machine_network():
    spec = MachineSpec("m1", "10.251.7.20", 24, BRIDGE, "ssh-ed25519 AAAA x")
    assert str(host.bridge_address(spec.network)) == "10.251.7.1/24"


def test_cgroup_hierarchies_ignore_a_parallel_nspawns_transient_mount():
    # systemd-nspawn mounts a cgroup2 under /tmp while it starts; a machine created at that moment
    # once tried to make its cgroup there and failed when the mount vanished.
    mounts = ("cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
              "cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n"
              "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
              "cgroup2 /tmp/unifieddNk8vn cgroup2 rw 0 0\n")
    assert host.cgroup_hierarchies(mounts) == [Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/systemd"),
                                               Path("/sys/fs/cgroup/unified")]


# --- real machines ----------------------------------------------------------------------------------

@pytest.mark.machines
def test_each_machine_answers_ssh_on_its_own_address_with_its_own_hostname(pair, key):
    for state in pair:
        assert state.status == "running"
        code, out = ssh(state, key, "hostname; systemctl is-system-running; ip -4 -o addr show host0")
        assert code == 0, out
        hostname, system, addr = out.splitlines()
        assert hostname == state.name
        assert system in ("running", "degraded")
        assert f"{state.address}/24" in addr


@pytest.mark.machines
def test_machines_reach_each_other_by_ping_and_ssh(pair, key):
    a, b = pair
    code, out = ssh(a, key, f"ping -c 2 -W 2 {b.address}")
    assert code == 0, out
    # Give A the key and B's host key, then log into B from A the way Ansible's ssh would.
    client = connect(a, key)
    with client.open_sftp() as sftp:
        with sftp.open("/root/.ssh/id_ed25519", "w") as f:
            f.write(key.private_key)
        sftp.chmod("/root/.ssh/id_ed25519", 0o600)
        with sftp.open("/root/.ssh/known_hosts", "w") as f:
            f.write(f"{b.address} {b.ssh_host_key}\n")
    client.close()
    code, out = ssh(a, key, f"ssh -o BatchMode=yes root@{b.address} hostname")
    assert (code, out) == (0, b.name)


@pytest.mark.machines
def test_machines_have_no_route_beyond_their_network(pair, key):
    code, out = ssh(pair[0], key, "ip -4 route; ip route get 192.0.2.1 || true")
    assert "default" not in out
    assert "Network is unreachable" in out


@pytest.mark.machines
def test_node_binaries_are_installed_but_containerd_is_not_started(pair, key):
    code, out = ssh(pair[0], key, "command -v containerd runc python3 haproxy keepalived conntrack socat "
                                  "&& test -x /usr/lib/cni/bridge && test -x /usr/lib/cni/host-local "
                                  "&& systemctl is-enabled containerd; systemctl is-active containerd")
    assert out.splitlines()[-2:] == ["disabled", "inactive"], out
    assert "/usr/bin/containerd" in out and "/usr/sbin/runc" in out


@pytest.mark.machines
def test_the_cluster_packages_are_the_versions_lock_yaml_pins(pair, key):
    pins = load_lock()["machine_packages"]
    code, out = ssh(pair[0], key, "dpkg-query -W -f='${Package} ${Version}\\n' " + " ".join(pins))
    assert code == 0, out
    assert dict(line.split(" ", 1) for line in out.splitlines()) == pins


@pytest.mark.machines
def test_each_machine_has_writable_cgroups_of_its_own(pair, key):
    for state in pair:
        code, out = ssh(state, key, "for c in cpu memory pids systemd; do mkdir /sys/fs/cgroup/$c/ph-probe; "
                                    "done && findmnt -no FSTYPE /var/lib/containerd")
        assert (code, out) == (0, "ext4"), out
        # The machine's cgroup root lies inside pm-<name> on the host (name=systemd adds nspawn's
        # payload/ level): kubelets on two machines never collide.
        for c in ("cpu", "memory", "pids", "systemd"):
            probes = list(Path(f"/sys/fs/cgroup/{c}/pm-{state.name}").rglob("ph-probe"))
            assert len(probes) == 1, f"{c}: {probes}"
            probes[0].rmdir()


@pytest.mark.machines
def test_host_sysctls_are_set_for_kubelet():
    for key_name, value in host.HOST_SYSCTLS.items():
        assert host._read_sysctl(key_name) == str(value)
    assert int(host._read_sysctl("fs.inotify.max_user_instances")) >= 8192


@pytest.mark.machines
def test_a_second_create_with_the_same_spec_is_a_no_op(pair, key):
    before = pair[0]
    started = time.monotonic()
    again = local.create(before.spec, key.private_key)
    assert again.pid == before.pid
    assert again.ssh_host_key == before.ssh_host_key
    assert time.monotonic() - started < 5


@pytest.mark.machines
def test_create_with_another_spec_under_the_same_name_is_refused(pair, key):
    spec = MachineSpec("pht-a", "10.251.7.99", 24, BRIDGE, key.public_key)
    with pytest.raises(MachineConflictError, match="destroy it first"):
        local.create(spec, key.private_key)


@pytest.mark.machines
def test_a_machine_outlives_its_creator_and_a_killed_one_is_stopped_then_rebooted(key):
    # The CLI runs in its own process and exits; the machine must keep running without it.
    name = "pht-c"
    try:
        proc = subprocess.run([sys.executable, "-m", "infra.machines.local", "up", f"{name}=10.251.7.13/24",
                               "--bridge", BRIDGE], cwd=REPO, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert local.status(name) == "running"
        state = local.get(name)
        os.kill(state.pid, 9)
        deadline = time.monotonic() + 5
        while local.status(name) != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert local.status(name) == "stopped"
        cli_key = local._cli_key()
        again = local.create(state.spec, cli_key.private_key)
        assert again.status == "running" and again.pid != state.pid
        assert ssh(again, cli_key, "hostname") == (0, name)
    finally:
        local.destroy(name)
    assert_no_trace(name)


@pytest.mark.machines
def test_destroy_leaves_the_host_clean_and_is_idempotent(key):
    name = "pht-clean"
    state = local.create(MachineSpec(name, "10.251.8.11", 24, CLEAN_BRIDGE, key.public_key), key.private_key)
    assert Path("/sys/class/net", CLEAN_BRIDGE).exists()
    assert list(Path("/sys/fs/cgroup").glob(f"*/pm-{name}"))
    root = (local.machine_dir(name) / "rootfs").stat()
    nspawn_lock = Path(f"/run/systemd/nspawn/locks/inode-{root.st_dev}:{root.st_ino}")
    assert nspawn_lock.exists()
    local.destroy(name)
    assert_no_trace(name, bridge=CLEAN_BRIDGE)
    assert not nspawn_lock.exists()
    local.destroy(name)
    assert local.status(name) == "absent" and state.name not in [m.name for m in local.list_machines()]


@pytest.mark.machines
def test_a_failed_create_leaves_nothing_half_made(key):
    name = "pht-fail"
    spec = MachineSpec(name, "10.251.8.12", 24, CLEAN_BRIDGE, key.public_key)
    with pytest.raises(MachineNotReadyError, match="console.log"):
        local.create(spec, key.private_key, timeout=0.01)
    assert_no_trace(name, bridge=CLEAN_BRIDGE)
    failed_log = local.STATE_ROOT / ".failed" / f"{name}-console.log"
    assert failed_log.exists()  # kept for the user to read; the machine itself is gone
    failed_log.unlink()
    with contextlib.suppress(OSError):
        failed_log.parent.rmdir()  # only if no other failure is kept there


@pytest.mark.machines
def test_a_private_key_that_does_not_match_the_spec_is_refused(key):
    other = keys.generate_ed25519()
    spec = MachineSpec("pht-key", "10.251.8.13", 24, CLEAN_BRIDGE, key.public_key)
    with pytest.raises(MachineSpecError, match="does not match"):
        local.create(spec, other.private_key)
    assert local.status("pht-key") == "absent"
