"""Drive the real Pulumi CLI offline: a file backend, no update check, no plugin downloads.

`invoke up` runs the program through the Automation API as an *inline* program (the Python process serves
it to the CLI). Plain `pulumi up` runs the same program (infra/__main__.py) through the Python language host;
both keep their state in the same backend, so either sees what the other did. Python dynamic providers run
through the SDK's `pulumi-resource-pulumi-python` script.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from pulumi import automation as auto

from infra import artifacts
from infra.artifacts import store

REPO = Path(__file__).resolve().parent.parent


def pulumi_tools() -> Path:
    """One directory holding the CLI with its language host beside it, the layout of upstream's archive.

    The CLI runs its Python language host only from its own directory ("bundled") or, with a warning on
    every command, from PATH; the two are separate artifacts, so they are hard-linked together here.
    """
    entries = [artifacts.lookup_go(name) for name in ("pulumi", "pulumi-language-python")]
    tools = store.cache_root() / "pulumi-tools" / "-".join(e.path.name for e in entries)
    if not tools.is_dir():
        staging = tools.with_name(tools.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for entry in entries:
            for name in entry.files:
                os.link(entry.file(name), staging / name)
        staging.rename(tools)
        for stale in tools.parent.iterdir():  # an older pin's links would keep its files on disk
            if stale != tools and ".tmp" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
    return tools


def pulumi_env(state_dir: Path) -> dict[str, str]:
    """Environment for an offline CLI: file backend, no update check, no plugin downloads."""
    tools = pulumi_tools()
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.pathsep.join([str(tools), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PULUMI_HOME": str(state_dir / "home"),
        "PULUMI_BACKEND_URL": f"file://{state_dir}",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        # The state holds the machines' SSH keys as secrets; a local passphrase is what a file backend needs.
        "PULUMI_CONFIG_PASSPHRASE": os.environ.get("PULUMI_CONFIG_PASSPHRASE", "pilothouse-local"),
        # Dynamic providers run in this venv's Python, and unpickle classes from `infra` by module name.
        "PULUMI_PYTHON_CMD": sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    install_kubernetes_plugin(env)
    return env


def install_kubernetes_plugin(env: dict[str, str]) -> None:
    """Put the built pulumi-kubernetes provider where the CLI looks, since it may not download it."""
    lock = artifacts.load_lock()
    release = lock["go"]["pulumi-kubernetes"]["release"]
    if (Path(env["PULUMI_HOME"]) / "plugins" / f"resource-kubernetes-v{release}").is_dir():
        return
    provider = artifacts.lookup_go("pulumi-kubernetes", lock).file("pulumi-resource-kubernetes")
    subprocess.run(["pulumi", "plugin", "install", "resource", "kubernetes", release, "--file", str(provider)],
                   env=dict(os.environ, **env), check=True, capture_output=True)


def select_stack(stack: str, program: Callable[[], None], state_dir: Path,
                 work_dir: Path = REPO, config: dict[str, str] | None = None) -> auto.Stack:
    env = pulumi_env(state_dir)
    # The CLI is found on PATH (the artifact directory comes first), and the dynamic providers it spawns
    # inherit this environment.
    os.environ.update(env)
    command = auto.PulumiCommand()
    workspace = auto.LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=env, pulumi_command=command,
                                           pulumi_home=env["PULUMI_HOME"])
    stack_obj = auto.create_or_select_stack(stack_name=stack, project_name="pilothouse", program=program,
                                            opts=workspace)
    for key, value in (config or {}).items():
        stack_obj.set_config(key, auto.ConfigValue(value=value))
    return stack_obj
