"""A run killed in the middle (SIGKILL to the whole process group, as a closed terminal or the OOM killer does)
leaves a stack the next run finishes without manual steps: `recovery.recover` (what `invoke up` and `invoke down`
call first) clears the dead run's lock and pending operations, and the cut-off work is done again. Killed while
machines are created or deleted (the machines-only program), and in the middle of the playbook (the whole
program on a 1-master, 1-worker cluster without samples), which then goes through a host reboot."""
from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import cluster_network
from infra import kube, playbook, program, recovery, spec as spec_mod, stack
from infra.artifacts import registry
from infra.machines import local
from test_pulumi_machines import host_leftovers, ssh_hostname

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

NETWORK = cluster_network("phkill", offset=3)
CONFIG = {"pilothouse:clusterName": NETWORK["clusterName"], "pilothouse:machineCidr": NETWORK["machineCidr"],
          "pilothouse:ha": "false", "pilothouse:masters": "1", "pilothouse:workers": "2", "pilothouse:lbs": "0"}
NAMES = [f"{NETWORK['clusterName']}-{role}" for role in ("master-1", "worker-1", "worker-2")]
STACK = "interrupted-test"

# The runs to kill, each in a process group of its own: the machines-only program, and the whole one.
RUNNER = """
import sys
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from infra import stack
from test_pulumi_machines import machines_only
st = stack.select_stack({stack!r}, machines_only, Path({state!r}))
if {verb!r} == "destroy":
    stack.destroy(st)  # as `invoke down` runs it
else:
    st.up()
"""
FULL_RUNNER = """
import sys
from pathlib import Path
sys.path[:0] = [{repo!r}]
from infra import program, spec, stack

def run():
    program.build(spec.from_pulumi_config(), manifests_dir=Path({manifests!r}))

stack.select_stack({stack!r}, run, Path({state!r})).up()
"""
FULL_CONFIG = {**CONFIG, "pilothouse:workers": "1"}
FULL_NAMES = NAMES[:2]
FULL_STACK = "interrupted-playbook-test"


def start_and_kill(verb: str, state: Path, log: Path, when, script: str | None = None) -> None:
    """Run `pulumi <verb>` (the machines-only program, or `script`) in its own process group and SIGKILL the
    whole group as soon as `when()` holds."""
    script = script or RUNNER.format(repo=str(stack.REPO), tests=str(Path(__file__).parent), stack=STACK,
                                     state=str(state), verb=verb)
    with open(log, "w") as out:
        run = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not when():
            assert run.poll() is None, f"`{verb}` ended before it could be interrupted:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"`{verb}` never reached the point to interrupt:\n{log.read_text()}"
            time.sleep(0.05)
    finally:
        # Pulumi starts its plugins in process groups of their own, so the group's kill would orphan them:
        # freeze the group, note every descendant, then kill the group and each of them.
        os.killpg(run.pid, signal.SIGSTOP)
        plugins = descendants(run.pid)
        os.killpg(run.pid, signal.SIGKILL)
        for pid in plugins:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait()
        # A SIGKILL is delivered at once but the process may take a moment to exit; until it has, its lock
        # rightly counts as a live run's. The next run starts after the kill, so wait for every one to be gone.
        deadline = time.monotonic() + 30
        while [pid for pid in plugins if running(pid)]:
            assert time.monotonic() < deadline, f"killed processes still running: {plugins}"
            time.sleep(0.05)


def running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name (field 2) may hold spaces; the parent pid is the 2nd field after its ")".
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_killed_up_and_a_killed_destroy_are_finished_by_the_next_run(tmp_path):
    state = tmp_path / "state"
    from test_pulumi_machines import machines_only

    st = stack.select_stack(STACK, machines_only, state, config=CONFIG)
    try:
        # Killed as soon as the first machine is booting: every create is cut off in the middle.
        start_and_kill("up", state, tmp_path / "up.log",
                       lambda: any((local.machine_dir(n) / "pid").exists() for n in NAMES))
        assert recovery.stale_locks(state, STACK), "the killed run left no lock: the test did not interrupt it"
        recovered = recovery.recover(st, state)
        assert len(recovered.locks) == 1 and not recovery.stale_locks(state, STACK)
        assert any("interrupted while creating" in p for p in recovered.pending), recovered.pending
        assert recovered.cut_off_machines, recovered.pending
        assert set(recovered.cut_off_machines) <= set(NAMES)
        assert recovery.recover(st, state).pending == [], "a second recovery found work left"

        result = st.up()
        addresses, key = result.outputs["addresses"].value, result.outputs["ssh_private_key"].value
        assert sorted(addresses) == sorted(NAMES)
        for name, address in addresses.items():
            assert ssh_hostname(address, key) == name
        assert set(st.preview().change_summary) == {"same"}

        # Killed once the first machine is gone: the other deletes are cut off.
        start_and_kill("destroy", state, tmp_path / "destroy.log",
                       lambda: any(local.status(n) == "absent" for n in NAMES))
        recovered = recovery.recover(st, state)
        assert len(recovered.locks) == 1, recovered
        stack.destroy(st)
        assert host_leftovers(NAMES, local.bridge_name(NETWORK["clusterName"])) == []
    finally:
        recovery.recover(st, state, say=lambda _: None)
        stack.destroy(st)
        for name in NAMES:
            local.destroy(name)
        st.workspace.remove_stack(STACK)  # and its Pulumi.<stack>.yaml in the checkout


def playing(runs: Path, play: str) -> bool:
    """Whether a playbook run under `runs` (ansible-runner's artifact directories) has reached `play`."""
    return any(play in out.read_text(errors="replace") for out in runs.glob("*/stdout"))


def test_an_up_killed_in_the_middle_of_the_playbook_is_finished_by_the_next_run_and_survives_a_reboot(tmp_path):
    state, manifests = tmp_path / "state", tmp_path / "workloads"
    manifests.mkdir()
    cluster = NETWORK["clusterName"]
    runs = playbook.cluster_dir(cluster) / "logs" / "runs"
    tmp = set(Path(tempfile.gettempdir()).iterdir())

    def whole_program():
        program.build(spec_mod.from_pulumi_config(), manifests_dir=manifests)

    st = stack.select_stack(FULL_STACK, whole_program, state, config=FULL_CONFIG)
    try:
        # etcd is up and the API server is being installed: the kill lands between two plays' work.
        script = FULL_RUNNER.format(repo=str(stack.REPO), manifests=str(manifests), stack=FULL_STACK,
                                    state=str(state))
        start_and_kill("up", state, tmp_path / "up.log", lambda: playing(runs, "PLAY [Control plane | API servers]"),
                       script=script)
        cut = [out.read_text(errors="replace") for out in runs.glob("*/stdout")]
        assert len(cut) == 1 and "PLAY RECAP" not in cut[0], "the playbook was not cut off in the middle"
        # Nothing of the killed run is left in /tmp: the playbook's private directory (inventory, SSH key) is in
        # the state's, swept by the next run, and no ssh-agent was started to leave its socket's directory here.
        assert set(Path(tempfile.gettempdir()).iterdir()) - tmp == set()

        recovered = recovery.recover(st, state)
        assert len(recovered.locks) == 1, recovered
        assert any(p.startswith(f"{cluster}-playbook: interrupted while creating") for p in recovered.pending), \
            recovered.pending
        result = st.up()
        kubectl = kube.Kubectl(result.outputs["admin_kubeconfig"].value)
        kubectl.run("wait", "--for=condition=Ready", "node", "--all", "--timeout=180s", timeout=200)
        nodes = kubectl.run("get", "nodes", "-o", "name").split()
        assert sorted(nodes) == sorted(f"node/{n}" for n in FULL_NAMES)
        assert len(list(runs.glob("*/stdout"))) == 2
        assert set(st.preview().change_summary) == {"same"}

        # A host reboot: every machine loses power and the registry's process is gone. `up --refresh` brings the
        # same cluster back, with its data.
        kubectl.run("create", "configmap", "before-reboot", "--from-literal=kept=yes")
        uid = kubectl.run("get", "configmap", "before-reboot", "-o", "jsonpath={.metadata.uid}")
        for name in FULL_NAMES:
            local.pull_plug(name)
        registry.stop(listen=f"{ipaddress.ip_network(NETWORK['machineCidr'])[1]}:{program.REGISTRY_PORT}")
        stack.refresh_machines(st)  # what `invoke up --refresh` runs
        st.up()
        kubectl.run("wait", "--for=condition=Ready", "node", "--all", "--timeout=180s", timeout=200)
        assert kubectl.run("get", "configmap", "before-reboot", "-o", "jsonpath={.metadata.uid}") == uid
        kubectl.run("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=180s", timeout=200)
        stack.destroy(st)
        assert host_leftovers(FULL_NAMES, local.bridge_name(cluster)) == []
        assert not playbook.cluster_dir(cluster).exists()
    finally:
        recovery.recover(st, state, say=lambda _: None)
        stack.destroy(st)
        for name in FULL_NAMES:
            local.destroy(name)
        st.workspace.remove_stack(FULL_STACK)
