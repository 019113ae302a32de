"""roles' pilothouse_files module, run by real Ansible against this host over a local connection: the unit states it
reads in the same run (which the roles' "ensure it is enabled and running" tasks are skipped on), parsed from
`systemctl show`. This host runs no systemd, so a stand-in systemctl on PATH prints what systemd prints for an
active enabled unit, an active disabled one and an unknown one; the live suite stops and disables real units
(tests/test_e2e.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infra import playbook

# `systemctl show --property=LoadState,ActiveState,UnitFileState -- a b c`: one block per unit, in argument order.
SYSTEMCTL = """#!/bin/sh
[ "$1" = show ] || exit 3
shift 2
[ "$1" = -- ] && shift
for unit in "$@"; do
  [ -n "$sep" ] && echo
  sep=1
  case $unit in
    running-enabled) printf 'LoadState=loaded\\nActiveState=active\\nUnitFileState=enabled\\n' ;;
    running-disabled) printf 'LoadState=loaded\\nActiveState=active\\nUnitFileState=disabled\\n' ;;
    stopped-enabled) printf 'LoadState=loaded\\nActiveState=inactive\\nUnitFileState=enabled\\n' ;;
    *) printf 'LoadState=not-found\\nActiveState=inactive\\nUnitFileState=\\n' ;;
  esac
done
"""


def run(tmp: Path, args: dict) -> dict:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, **playbook.ansible_env(), "ANSIBLE_CALLBACKS_ENABLED": "", "ANSIBLE_LOCALHOST_WARNING": "False",
           "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["ansible", "localhost", "-c", "local", "-o", "-m", "pilothouse_files", "-a",
                           json.dumps(args)], cwd=playbook.ROLES, env=env, capture_output=True, text=True, timeout=120)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("localhost | "))
    status, result = line.removeprefix("localhost | ").split(" => ", 1)
    return {**json.loads(result), "failed": status.startswith("FAILED")}


def test_units_are_read_in_the_same_run_and_up_means_active_and_enabled(tmp_path):
    result = run(tmp_path, {"files": [{"path": str(tmp_path / "a.conf"), "content": "a"}],
                            "units": ["running-enabled", "running-disabled", "stopped-enabled", "gone"]})
    assert not result["failed"], result
    assert result["changed_paths"] == [str(tmp_path / "a.conf")]
    assert result["units"] == {
        "running-enabled": {"loaded": True, "active": True, "up": True},
        "running-disabled": {"loaded": True, "active": True, "up": False},
        "stopped-enabled": {"loaded": True, "active": False, "up": False},
        "gone": {"loaded": False, "active": False, "up": False},
    }


def test_no_units_asked_reads_none(tmp_path):
    result = run(tmp_path, {"files": []})
    assert not result["failed"], result
    assert result["units"] == {} and not result["changed"]
