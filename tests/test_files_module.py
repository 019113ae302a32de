"""roles' pilothouse_files module, run by real Ansible against this host over a local connection: the unit states it
reads in the same run (which the roles' "ensure it is enabled and running" tasks are skipped on), parsed from
`systemctl show`, and the oneshot units it applies after writing their files. This host runs no systemd, so a
stand-in systemctl on PATH prints what systemd prints for an active enabled unit, an active disabled one, a
stopped one and an unknown one, and logs every other call; the live suite stops and disables real units
(tests/test_e2e.py) and every cluster's pod routes go through the real thing."""
from __future__ import annotations

from pathlib import Path

from module_support import run_module

# `systemctl show --property=LoadState,ActiveState,UnitFileState -- a b c`: one block per unit, in argument order.
# Any other call is logged; restarting a unit named "broken" fails as systemd does.
SYSTEMCTL = """#!/bin/sh
if [ "$1" != show ]; then
  echo "$*" >> "$SYSTEMCTL_LOG"
  if [ "$1 $2" = "restart broken" ]; then echo "Job for broken.service failed." >&2; exit 1; fi
  exit 0
fi
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


def run(tmp: Path, args: dict, check: bool = False) -> dict:
    """One pilothouse_files run with the stand-in systemctl first on PATH, logging to tmp/systemctl.log."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    return run_module("pilothouse_files", args, check=check, path=(bin_dir,),
                      env={"SYSTEMCTL_LOG": str(tmp / "systemctl.log")})


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


def calls(tmp: Path) -> list[str]:
    log = tmp / "systemctl.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_unit_whose_file_changed_is_restarted_and_one_not_up_is_started_and_one_up_is_left(tmp_path):
    unit = tmp_path / "running-enabled.service"
    args = {"files": [{"path": str(unit), "content": "[Service]"}],
            "apply": [{"unit": "running-enabled", "paths": [str(unit)]},
                      {"unit": "stopped-enabled", "paths": [str(tmp_path / "other.service")]},
                      {"unit": "running-disabled", "paths": []}]}
    first = run(tmp_path, args)
    assert not first["failed"] and first["changed"], first
    assert first["applied"] == ["running-enabled", "stopped-enabled", "running-disabled"]
    assert calls(tmp_path) == ["daemon-reload", "restart running-enabled", "enable running-enabled",
                               "enable --now stopped-enabled", "enable --now running-disabled"]
    # Nothing changed this time: only the units not up (this stand-in never brings them up) are started again.
    (tmp_path / "systemctl.log").unlink()
    again = run(tmp_path, args)
    assert again["changed_paths"] == [] and again["applied"] == ["stopped-enabled", "running-disabled"]
    assert calls(tmp_path) == ["enable --now stopped-enabled", "enable --now running-disabled"]


def test_check_mode_reports_the_units_it_would_apply_and_touches_none(tmp_path):
    unit = tmp_path / "running-enabled.service"
    result = run(tmp_path, {"files": [{"path": str(unit), "content": "x"}],
                            "apply": [{"unit": "running-enabled", "paths": [str(unit)]}]}, check=True)
    assert result["changed"] and result["applied"] == ["running-enabled"], result
    assert calls(tmp_path) == [] and not unit.exists()


def test_a_failed_restart_fails_the_task_with_systemds_message(tmp_path):
    unit = tmp_path / "broken.service"
    result = run(tmp_path, {"files": [{"path": str(unit), "content": "x"}],
                            "apply": [{"unit": "broken", "paths": [str(unit)]}]})
    assert result["failed"], result
    assert "systemctl restart broken failed: Job for broken.service failed." in result["msg"]
