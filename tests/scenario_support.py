"""What the scenario tests (test_scenarios.py, test_scenarios_config.py) share: the catalog rows and which test
runs each, kubectl as the notes type it, and a namespace filled with the objects the commands act on."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from infra.kube import Kubectl, KubectlError

DATA = Path(__file__).with_name("scenarios")
CATALOG = Path(__file__).resolve().parents[2] / "shared" / "workload-catalog.md"
ROWS = [f"K{n:02d}" for n in range(1, 77)]

NOT_APPLICABLE = {
    "K08": "installs kubectl, kustomize and minikube with Homebrew on macOS and starts a minikube cluster; this "
           "cluster is pilothouse's, built from source on Linux",
    "K09": "node, docker build/run/exec and a push to Docker Hub's kubetm/ account: no docker CLI and no Docker Hub "
           "here (the kubetm/hello stand-in's answer is tests/test_images.py::test_hello_answers_on_8000)",
    "K11": "a docker build of the notes' node:7 Dockerfile: no docker CLI here (the luksa/kubia stand-in's "
           "behaviour is tests/test_images.py::test_kubia_answers_with_its_hostname)",
    "K17": "`k create -f` of the author's own file paths; the corrected manifests are workloads/, deployed by "
           "`pulumi up` and checked by `invoke workloads.verify`",
    "K37": "`gcloud compute firewall-rules create`: GCP's firewall; the NodePort answering on every node is the "
           "W23 sample check",
    "K47": "`gcloud container clusters list` and `gcloud compute disks create/delete`: GKE and GCE only (W32 uses "
           "a claim instead, checked by `invoke workloads.verify`)",
    "K48": "docker run/build/push of luksa/fortune: no docker CLI or registry account here (the fortune:args "
           "stand-in's `15` argument is tests/test_images.py::test_fortune_writes_index_html)",
    "K66": "`gcloud compute disks create` of three persistent disks: Google Compute Engine only (the StatefulSet's "
           "claims come from the local-path StorageClass, K67)",
}

RUN: dict[str, str] = {}   # row -> the test that runs it


def live(fn: Callable) -> Callable:
    """Marks a test that needs the live shared cluster (the built artifacts and real machines)."""
    return pytest.mark.artifacts(pytest.mark.machines(fn))


def rows(*ids: str) -> Callable:
    """Marks a live test as the one that runs these catalog rows."""
    def register(fn: Callable) -> Callable:
        for row in ids:
            assert row not in RUN, f"{row} is run by both {RUN[row]} and {fn.__name__}"
            RUN[row] = fn.__name__
        return live(fn)
    return register


DEFAULT = object()


class Cli:
    """kubectl as the notes type it, in namespace `ns` unless a call names another (ns=None: none)."""

    def __init__(self, live, ns: str):
        self.live, self.ns = live, ns
        self.kube = Kubectl(live.kubeconfig, timeout=120)
        self.work = live.workdir / ns
        self.work.mkdir(exist_ok=True)

    def _ns(self, ns) -> list[str]:
        ns = self.ns if ns is DEFAULT else ns
        return ["-n", ns] if ns else []

    def __call__(self, *args: str, ns=DEFAULT, **kw) -> str:
        return self.kube.run(*self._ns(ns), *args, **kw)

    def json(self, *args: str, ns=DEFAULT) -> dict:
        return json.loads(self(*args, "-o", "json", ns=ns))

    def typo(self, *args: str) -> subprocess.CompletedProcess:
        """A mistyped command, as typed: the kubeconfig comes from the environment, because kubectl reads any
        flag before an unknown command as meant for a plugin of that name."""
        binary, flag = self.kube.command
        return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, KUBECONFIG=flag.split("=", 1)[1]))

    def proc(self, *args: str, ns=DEFAULT, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.kube.command + self._ns(ns) + list(args), capture_output=True, text=True,
                              timeout=120, **kw)

    def pod(self, selector: str) -> str:
        return self("get", "pods", "-l", selector, "--field-selector=status.phase=Running",
                    "-o", "jsonpath={.items[0].metadata.name}")

    @contextlib.contextmanager
    def background(self, *args: str, ns=DEFAULT, ready: str | None = None) -> Iterator[subprocess.Popen]:
        """A long-running kubectl (port-forward, proxy, --watch); waits for `ready` in its output first."""
        proc = subprocess.Popen(self.kube.command + self._ns(ns) + list(args), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            if ready:
                line = proc.stdout.readline()
                assert ready in line, f"kubectl {' '.join(args)}: {line}{proc.stdout.read() if proc.poll() else ''}"
            yield proc
        finally:
            proc.kill()
            proc.wait()

    def edit(self, target: str, sed: str) -> str:
        """`kubectl edit` with the editor replaced by a sed script (what a user does by hand)."""
        editor = self.work / "editor.sh"
        editor.write_text(f"#!/bin/sh\nsed -i '{sed}' \"$1\"\n")
        editor.chmod(0o755)
        done = subprocess.run(self.kube.command + self._ns(DEFAULT) + ["edit", target], capture_output=True, text=True,
                              env=dict(os.environ, KUBE_EDITOR=str(editor)), timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout


def eventually(fn: Callable, timeout: float = 90, interval: float = 1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (AssertionError, KubectlError, OSError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"still failing after {timeout:.0f}s: {e}") from e
            time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, context: ssl.SSLContext | None = None, headers: dict | None = None) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10,
                                context=context) as r:
        return r.read().decode()


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def fill_namespace(cli: Cli, objects: str, prepare: Callable[[], None] = lambda: None) -> None:
    """cli.ns made anew (a killed run's leftovers first removed) with the Services of DATA/objects, then
    `prepare()` (the notes' own create commands), then the rest; returns once every `scn: up` pod is Ready."""
    cli("delete", "namespace", cli.ns, "--ignore-not-found", "--wait=true", ns=None, timeout=300)
    cli("create", "namespace", cli.ns, ns=None)
    # A pod is refused until the controller-manager has made the namespace's default ServiceAccount.
    cli("wait", "--for=create", "serviceaccount/default", "--timeout=60s")
    docs = [d for d in yaml.safe_load_all((DATA / objects).read_text()) if d]
    services = [d for d in docs if d["kind"] == "Service"]
    if services:
        cli("apply", "-f", "-", input=yaml.safe_dump_all(services))
    prepare()
    cli("apply", "-f", "-", input=yaml.safe_dump_all([d for d in docs if d["kind"] != "Service"]))
    cli("wait", "--for=condition=Ready", "pod", "-l", "scn=up", "--timeout=300s", timeout=320)
