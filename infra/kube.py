"""kubectl against one cluster: the single client that status, the add-ons, verify and the tests share.

The pinned kubectl the artifacts layer builds is used, so every caller talks to the API with the version the
cluster runs, and a failure names the command and what kubectl said instead of a bare exit status.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from typing import Any, Optional

import yaml

from infra import artifacts


def kubectl_binary() -> str:
    """The path of the pinned kubectl (`invoke artifacts` builds it; this only looks it up)."""
    return str(artifacts.lookup_go("kubernetes").file("kubectl"))


class KubectlError(subprocess.CalledProcessError):
    """A kubectl command that exited non-zero; `cmd` is its arguments (no binary, no kubeconfig)."""

    def __str__(self) -> str:
        said = (self.stderr or self.stdout or "").strip()
        return f"kubectl {' '.join(self.cmd)} failed (exit {self.returncode}): {said[-600:] or 'no output'}"


class Kubectl:
    """kubectl with one kubeconfig, given as a path or as its text (a kubeconfig's YAML spans lines, a path
    does not); text goes to a private temp file that close() removes, so use it as a context manager then.
    `timeout` is the default seconds one command may take before subprocess.TimeoutExpired."""

    def __init__(self, kubeconfig: str, binary: Optional[str] = None, timeout: float = 60):
        self._temp: Optional[str] = None
        if "\n" in kubeconfig:
            fd, self._temp = tempfile.mkstemp(prefix="pilothouse-kubeconfig-")
            with os.fdopen(fd, "w") as f:
                f.write(kubeconfig)
        self.command = [binary or kubectl_binary(), f"--kubeconfig={self._temp or kubeconfig}"]
        self.timeout = timeout

    def run(self, *args: str, input: Optional[str] = None, timeout: Optional[float] = None,
            check: bool = True) -> str:
        """kubectl's stdout; KubectlError on a non-zero exit unless check is False."""
        done = subprocess.run(self.command + list(args), input=input, capture_output=True, text=True,
                              timeout=timeout or self.timeout)
        if check and done.returncode != 0:
            raise KubectlError(done.returncode, list(args), done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json"))

    def apply(self, *objs: dict, dry_run: bool = False) -> str:
        """Apply objs; with dry_run, only ask the API server (and its admission webhooks) whether it would."""
        flags = ["--dry-run=server"] if dry_run else []
        return self.run("apply", *flags, "-f", "-", input=yaml.safe_dump_all(objs))

    def close(self) -> None:
        if self._temp:
            os.unlink(self._temp)
            self._temp = None

    def __enter__(self) -> "Kubectl":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


class ApiNotReady(RuntimeError):
    """The API did not answer /readyz in time; the message says what it answered last."""


def wait_readyz(kubeconfig: str, timeout: float) -> None:
    """Until the API answers /readyz through the kubeconfig's server (the load balancer); ApiNotReady after
    `timeout` seconds."""
    kubectl = Kubectl(kubeconfig, timeout=20)
    deadline, said = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            said = kubectl.run("--request-timeout=10s", "get", "--raw=/readyz").strip()[-200:]
        except KubectlError as e:
            said = str(e)[-200:]
        except subprocess.TimeoutExpired:
            said = "timed out"
        if said == "ok":
            return
        time.sleep(2)
    raise ApiNotReady(f"the API did not answer /readyz through the load balancer within {timeout:.0f}s "
                      f"({said or 'no answer'}); `invoke status` shows what is down")
