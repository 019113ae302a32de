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
