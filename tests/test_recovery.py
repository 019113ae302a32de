"""Which lock files a killed run leaves and `recovery.stale_locks` may remove (no Pulumi, no machines)."""
from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from infra import recovery


def lock(state: Path, stack_name: str, name: str, pid: int, hostname: str) -> Path:
    path = state / ".pulumi" / "locks" / "organization" / "pilothouse" / stack_name / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "username": "root", "hostname": hostname,
                                "timestamp": "2026-12-03T07:00:00Z"}))
    return path


def test_only_locks_of_dead_runs_on_this_host_are_stale(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    # A live process whose argv[0] is pulumi, as the CLI's is.
    live = subprocess.Popen(["pulumi", "30"], executable="/bin/sleep")
    # Alive, but not Pulumi: the dead run's pid was reused by another program.
    reused = subprocess.Popen(["sleep", "30"])
    try:
        here = socket.gethostname()
        stale = lock(tmp_path, "dev", "a", dead.pid, here)
        kept_live = lock(tmp_path, "dev", "b", live.pid, here)
        kept_elsewhere = lock(tmp_path, "dev", "c", dead.pid, "another-host")
        stale_reused = lock(tmp_path, "dev", "d", reused.pid, here)
        lock(tmp_path, "other", "e", dead.pid, here)  # another stack's
        found = [path for path, _ in recovery.stale_locks(tmp_path, "dev")]
        assert found == [stale, stale_reused]
        assert kept_live.exists() and kept_elsewhere.exists()
    finally:
        live.kill()
        reused.kill()


def test_a_backend_without_locks_has_none_stale(tmp_path):
    assert recovery.stale_locks(tmp_path, "dev") == []
