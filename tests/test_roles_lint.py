"""The roles are ansible-lint clean at its strictest profile, and every role declares its variables."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_roles_pass_ansible_lint_production_profile():
    lint = Path(sys.executable).with_name("ansible-lint")
    out = subprocess.run([str(lint), "--profile", "production", "roles/"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failure(s)" in out.stderr + out.stdout


def test_every_role_declares_its_variables_in_argument_specs():
    roles = [p for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir()]
    assert len(roles) >= 12
    assert [r.name for r in roles if not (r / "meta" / "argument_specs.yml").is_file()] == []
