"""A run killed in the middle (SIGKILL to the whole process group, as a closed terminal or the OOM killer does)
leaves a stack the next run finishes without manual steps: `recovery.recover` (what `invoke up` and `invoke down`
call first) clears the dead run's lock and pending operations, and the cut-off work is done again."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cluster_network
from infra import recovery, stack
from infra.machines import local
from test_pulumi_machines import host_leftovers, ssh_hostname, wait_until

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

NETWORK = cluster_network("phkill", offset=3)
CONFIG = {"pilothouse:clusterName": NETWORK["clusterName"], "pilothouse:machineCidr": NETWORK["machineCidr"],
          "pilothouse:ha": "false", "pilothouse:masters": "1", "pilothouse:workers": "2", "pilothouse:lbs": "0"}
NAMES = [f"{NETWORK['clusterName']}-{role}" for role in ("master-1", "worker-1", "worker-2")]
STACK = "interrupted-test"

# The run to kill: the same machines-only program, in a process group of its own.
RUNNER = """
import sys
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from infra import stack
from test_pulumi_machines import machines_only
getattr(stack.select_stack({stack!r}, machines_only, Path({state!r})), {verb!r})()
"""


def start_and_kill(verb: str, state: Path, log: Path, when) -> None:
    """Run `pulumi <verb>` in its own process group and SIGKILL the whole group as soon as `when()` holds."""
    script = RUNNER.format(repo=str(stack.REPO), tests=str(Path(__file__).parent), stack=STACK, state=str(state),
                           verb=verb)
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
        st.destroy()
        assert host_leftovers(NAMES, local.bridge_name(NETWORK["clusterName"])) == []
    finally:
        recovery.recover(st, state, say=lambda _: None)
        st.destroy()
        for name in NAMES:
            local.destroy(name)
        st.workspace.remove_stack(STACK)  # and its Pulumi.<stack>.yaml in the checkout
