"""Run one of roles/library's modules through real Ansible against this host (`ansible localhost -c local -m`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infra import playbook


def run_module(name: str, args: dict, check: bool = False, path: tuple[Path, ...] = (),
               env: dict[str, str] | None = None) -> dict:
    """The module's result for the host, with "failed" set when Ansible reported the host FAILED (its one-line
    output leaves that key out). `path` goes first on PATH (stand-in commands); `env` is added to the environment."""
    full_env = {**os.environ, **playbook.ansible_env(), "ANSIBLE_CALLBACKS_ENABLED": "",
                "ANSIBLE_LOCALHOST_WARNING": "False",
                "PATH": os.pathsep.join([*map(str, path), str(Path(sys.executable).parent), os.environ["PATH"]]),
                **(env or {})}
    proc = subprocess.run(["ansible", "localhost", "-c", "local", "-o", "-m", name, "-a", json.dumps(args),
                           *(["--check"] if check else [])],
                          cwd=playbook.ROLES, env=full_env, capture_output=True, text=True, timeout=120)
    # One line: "localhost | CHANGED => {...}" (SUCCESS, FAILED! likewise).
    line = next(line for line in proc.stdout.splitlines() if line.startswith("localhost | "))
    status, result = line.removeprefix("localhost | ").split(" => ", 1)
    return {**json.loads(result), "failed": status.startswith("FAILED")}
