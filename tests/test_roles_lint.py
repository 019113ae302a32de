"""The roles are ansible-lint clean at its strictest profile, and every role declares and explains its variables."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def assert_lint_clean(target: str, env: dict | None = None) -> None:
    lint = Path(sys.executable).with_name("ansible-lint")
    out = subprocess.run([str(lint), "--profile", "production", target], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failure(s)" in out.stderr + out.stdout


def test_roles_pass_ansible_lint_production_profile():
    assert_lint_clean("roles/")


def test_the_kubeadm_peers_playbook_passes_ansible_lint_production_profile():
    """tests/peer/kubeadm.yml (tests/bench_kubeadm.py) uses the roles' modules and filters, found through their
    ansible.cfg."""
    assert_lint_clean("tests/peer/kubeadm.yml", {**os.environ, "ANSIBLE_CONFIG": str(REPO / "roles" / "ansible.cfg")})


def test_every_role_declares_its_variables_in_argument_specs():
    roles = [p for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir()]
    assert len(roles) >= 12
    assert [r.name for r in roles if not (r / "meta" / "argument_specs.yml").is_file()] == []


def _description(option: dict) -> str:
    text = option.get("description", "")
    return " ".join(text) if isinstance(text, list) else text


def test_argument_specs_agree_with_the_role_defaults_and_explain_each_variable():
    import yaml

    problems = []
    for role in sorted(p for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir()):
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
        defaults_file = role / "defaults" / "main.yml"
        defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.is_file() else {}
        main = specs["main"]["options"]
        for name, value in defaults.items():
            if name not in main:
                problems.append(f"{role.name}: default {name} is not in argument_specs")
            elif main[name].get("default") != value:
                problems.append(f"{role.name}: {name} defaults to {value!r} but argument_specs says "
                                f"{main[name].get('default')!r}")
        for entry, spec in specs.items():
            for name, option in (spec.get("options") or {}).items():
                text = _description(option)
                # A description that only repeats the name ("cni mtu") tells nobody what to set it to.
                if len(text.split()) < 5 or text.lower().rstrip(".") == name.replace("_", " "):
                    problems.append(f"{role.name} ({entry}): {name} needs a description saying what it does")
                if name.startswith(role.name + "_") and name not in defaults:
                    problems.append(f"{role.name} ({entry}): {name} is declared but has no default in defaults/main.yml")
    assert problems == []
