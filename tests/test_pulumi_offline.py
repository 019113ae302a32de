"""The built Pulumi CLI runs a Python program with a dynamic provider, offline, on a file backend."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pulumi
import pytest
from pulumi import dynamic

from infra import stack

pytestmark = pytest.mark.artifacts


class _FileProvider(dynamic.ResourceProvider):
    def create(self, props):
        Path(props["path"]).write_text(props["text"])
        return dynamic.CreateResult(id_=props["path"], outs=props)

    def delete(self, id_, props):
        Path(id_).unlink(missing_ok=True)


class _File(dynamic.Resource):
    def __init__(self, name, path, text):
        super().__init__(_FileProvider(), name, {"path": path, "text": text})


def test_up_again_and_destroy_with_a_dynamic_provider(tmp_path, monkeypatch):
    # The provider process unpickles _FileProvider by module name: let it import this file.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    target = tmp_path / "made-by-pulumi.txt"

    def program():
        _File("note", str(target), "ahoy")
        pulumi.export("path", str(target))

    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: pilothouse\nruntime: python\n")
    st = stack.select_stack("offline-test", program, tmp_path / "state", work_dir=project)
    try:
        first = st.up()
        assert first.summary.result == "succeeded"
        assert target.read_text() == "ahoy"
        assert first.outputs["path"].value == str(target)
        again = st.preview()
        assert set(again.change_summary) == {"same"}, again.change_summary
    finally:
        st.destroy()
        st.workspace.remove_stack("offline-test")
    assert not target.exists()


def test_the_kubernetes_provider_plugin_is_installed_offline(tmp_path):
    env = stack.pulumi_env(tmp_path / "state")
    listed = subprocess.run(["pulumi", "plugin", "ls"], env=dict(os.environ, **env),
                            capture_output=True, text=True, check=True).stdout
    row = next(line for line in listed.splitlines() if line.startswith("kubernetes"))
    assert "resource" in row and "4.25.0-alpha.1768448096" in row


# The same resource as above, imported from this file (the provider process unpickles it by module name).
PLAIN_PROGRAM = """
import pulumi
from test_pulumi_offline import _File

target = pulumi.Config().require("target")
_File("note", target, "ahoy")
pulumi.export("path", target)
"""


def test_plain_pulumi_up_runs_a_program_through_the_built_language_host(tmp_path):
    """`pulumi up` itself (no Automation API): the CLI starts the language host built from sdk/v3, which runs
    the program with the venv's Python, as `eval "$(invoke env)"; pulumi up` does in the checkout."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: plain\nruntime: python\n")
    (project / "__main__.py").write_text(PLAIN_PROGRAM)
    target = tmp_path / "made-by-plain-pulumi.txt"
    env = dict(os.environ, **stack.pulumi_env(tmp_path / "state"))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env["PYTHONPATH"]])

    def pulumi_cli(*args: str) -> str:
        proc = subprocess.run(["pulumi", "--non-interactive", *args], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "from $PATH" not in proc.stdout + proc.stderr  # the host is found beside the CLI
        return proc.stdout

    pulumi_cli("stack", "init", "plain")
    try:
        pulumi_cli("config", "set", "target", str(target))
        pulumi_cli("up", "--yes")
        assert target.read_text() == "ahoy"
        assert pulumi_cli("stack", "output", "path").strip() == str(target)
        pulumi_cli("preview", "--expect-no-changes")
    finally:
        pulumi_cli("destroy", "--yes")
        pulumi_cli("stack", "rm", "--yes", "plain")
    assert not target.exists()
