"""`pulumi up` creates real machines, a second `up` changes nothing, `pulumi destroy` leaves the host clean."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import paramiko
import pulumi
import pytest

from infra import spec as spec_mod, stack
from infra.machines import local, provider

from conftest import cluster_network

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

NETWORK = cluster_network("phpulumi", offset=4)
CLUSTER = NETWORK["clusterName"]
CONFIG = {"pilothouse:clusterName": CLUSTER, "pilothouse:ha": "false", "pilothouse:masters": "1",
          "pilothouse:workers": "1", "pilothouse:lbs": "0", "pilothouse:machineCidr": NETWORK["machineCidr"]}


def machines_only():
    spec = spec_mod.from_pulumi_config()
    hosts = provider.LocalMachines("t", spec)
    pulumi.export("addresses", {m.name: m.address for m in spec.machines})
    pulumi.export("ssh_private_key", pulumi.Output.secret(hosts.ssh_private_key))


def ssh_hostname(address: str, private_key: str) -> str:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(address, username="root", pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(private_key)),
                   timeout=10, allow_agent=False, look_for_keys=False)
    try:
        return client.exec_command("hostname")[1].read().decode().strip()
    finally:
        client.close()


def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def host_leftovers(names: list[str], bridge: str) -> list[str]:
    left = [f"machine {n}" for n in names if local.status(n) != "absent"]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += [f"link {bridge}" for line in links.splitlines() if f" {bridge}:" in line]
    mounts = Path("/proc/mounts").read_text()
    left += [f"mount of {n}" for n in names if f"/{n}/" in mounts]
    return left


def test_pulumi_up_creates_reachable_machines_and_destroy_removes_them(tmp_path):
    st = stack.select_stack("machines-test", machines_only, tmp_path / "state",
                            config={k: v for k, v in CONFIG.items()})
    names = [f"{CLUSTER}-master-1", f"{CLUSTER}-worker-1"]
    try:
        result = st.up()
        addresses = result.outputs["addresses"].value
        key = result.outputs["ssh_private_key"].value
        assert sorted(addresses) == names
        for name, address in addresses.items():
            assert ssh_hostname(address, key) == name
        again = st.preview()
        assert set(again.change_summary) == {"same"}, again.change_summary

        # A machine that dies behind Pulumi's back: refresh notices, and the next up boots it again.
        os.kill(local.get(f"{CLUSTER}-worker-1").pid, signal.SIGKILL)
        wait_until(lambda: local.status(f"{CLUSTER}-worker-1") != "running", 15)
        st.refresh()
        assert st.preview().change_summary.get("create") == 1
        st.up()
        assert ssh_hostname(addresses[f"{CLUSTER}-worker-1"], key) == f"{CLUSTER}-worker-1"
    finally:
        st.destroy()
        st.workspace.remove_stack("machines-test")
    assert host_leftovers(names, local.bridge_name(CLUSTER)) == []
