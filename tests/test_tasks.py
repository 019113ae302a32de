"""The invoke tasks as a user meets them: `invoke --list` loads tasks.py and the day-2 tasks beside it, every
command the README names exists, every task is in the README, and each one explains itself and every option it
takes in `invoke --help`. One test runs `invoke down --dry-run` against the shared cluster."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest

from infra.stack import REPO

sys.path.insert(0, str(REPO))
import tasks  # noqa: E402 - tasks.py sits at the top of the checkout, outside any package


def readme_commands() -> set[str]:
    return set(re.findall(r"invoke ([a-z][a-z0-9.-]*)", (REPO / "README.md").read_text()))


def test_invoke_lists_every_task_from_a_fresh_process():
    listed = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    shown = {line.split()[0] for line in listed.stdout.splitlines()[1:] if line.startswith("  ") and line.strip()
             and not line.startswith("    ")}
    assert shown == set(tasks.ns.task_names), shown ^ set(tasks.ns.task_names)


def test_every_command_the_readme_names_is_a_task_and_every_task_is_in_the_readme():
    named = readme_commands()
    unknown = []
    for name in sorted(named):
        try:
            tasks.ns[name]   # a collection's name runs its default task
        except KeyError:
            unknown.append(name)
    assert not unknown, f"the README names commands that are not tasks: {unknown}"
    defaults = {f"{name}.{sub.default}" for name, sub in tasks.ns.collections.items() if sub.default and name in named}
    undocumented = set(tasks.ns.task_names) - named - defaults
    assert not undocumented, f"tasks the README never mentions: {sorted(undocumented)}"


def test_every_task_has_a_description_and_a_help_line_for_each_option():
    for name in tasks.ns.task_names:
        task = tasks.ns[name]
        assert (task.body.__doc__ or "").strip(), f"`invoke {name}` has no description"
        options = [p for p in inspect.signature(task.body).parameters if p != "c"]
        unexplained = [o for o in options if not task.help.get(o)]
        assert not unexplained, f"`invoke --help {name}` leaves unexplained: {unexplained}"


@pytest.mark.artifacts
@pytest.mark.machines
def test_a_dry_run_of_down_names_every_machine_and_touches_nothing(shared_cluster, monkeypatch, capsys):
    from invoke import Context

    from infra import cli
    from infra.machines import local

    monkeypatch.setattr(cli, "select", lambda name: shared_cluster.stack)
    resources = len(shared_cluster.stack.export_stack().deployment["resources"])
    states = {m.name: local.status(m.name) for m in shared_cluster.spec.machines}
    tasks.down(Context(), stack="shared", dry_run=True)
    said = capsys.readouterr().out
    for machine in shared_cluster.spec.machines:
        assert re.search(rf"{re.escape(machine.name)} +{re.escape(machine.address)} .* delete machine", said), said
    assert f"{resources} resources in the state" in said
    assert {m.name: local.status(m.name) for m in shared_cluster.spec.machines} == states
    assert len(shared_cluster.stack.export_stack().deployment["resources"]) == resources
