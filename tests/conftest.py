"""Live clusters for the tests that need one, built by the program `pulumi up` runs (infra.program.build).

`shared_cluster` is one HA cluster for the whole session: 2 haproxy LBs sharing a keepalived VIP, 3 masters
with stacked etcd, 2 workers, the add-ons and every sample of the notes. The e2e, add-on, role and workload
tests all use it, so the suite boots one cluster instead of four. Tests that need another topology build
their own, small, with `live_cluster`. Every cluster is destroyed at the end, and the teardown checks that
nothing of it is left on this host.

Tests on the shared cluster may change it (a worker is added, a manifest removed, components stopped and
started again); each leaves it healthy. They run after every other test (pytest_collection_modifyitems), in file
order: test_addons, test_cis, test_e2e, test_roles,
test_scenarios, test_scenarios_config, test_second_day (etcd restore, certificate rotation, the master drill),
test_security, test_tasks (a dry run of `invoke down`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from pulumi import automation as auto

from infra import known_hosts, kube, playbook, program, spec as spec_mod, stack
from infra.machines import local, vm

REPO = Path(__file__).resolve().parents[1]

BUSYBOX = "docker.io/library/busybox:1.36"
SERVER_AND_CLIENT = """
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: %(ns)s, labels: {app: server}}
spec:
  nodeName: %(server_node)s
  containers:
    - name: httpd
      image: %(image)s
      command: [sh, -c, "mkdir -p /www && echo %(greeting)s > /www/index.html && exec httpd -f -p 8080 -h /www"]
      ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: %(ns)s}
spec:
  nodeName: %(client_node)s
  containers:
    - name: sh
      image: %(image)s
      command: [sleep, "3600"]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: %(ns)s}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"""

# PILOTHOUSE_TEST_NET moves the test clusters to other names and networks (10.<n>.0.0/24 down to 10.<n-4>.0.0/24),
# so two checkouts can run the live tests side by side on one host.
TEST_NET = int(os.environ.get("PILOTHOUSE_TEST_NET", "76"))
TEST_SUFFIX = "" if TEST_NET == 76 else str(TEST_NET)


def cluster_network(name: str, offset: int = 0) -> dict:
    """clusterName and machineCidr of a test cluster: `name` on 10.<TEST_NET - offset>.0.0/24."""
    return {"clusterName": name + TEST_SUFFIX, "machineCidr": f"10.{TEST_NET - offset}.0.0/24"}


# Scheduled snapshots on (test_second_day turns them off): a stack setting a user would set, at no extra run.
SHARED_CONFIG = {**cluster_network("phtest"), "lbs": 2, "vip": f"10.{TEST_NET}.0.5", "masters": 3, "workers": 2,
                 "etcdBackupSchedule": "daily", "etcdBackupRetention": 1}


@dataclass
class LiveCluster:
    """A cluster brought up by `pulumi up` through the Automation API, and ways to talk to it."""

    stack: auto.Stack
    config: dict
    manifests: Path
    workdir: Path
    outputs: dict = field(default_factory=dict)

    @property
    def spec(self) -> spec_mod.ClusterSpec:
        return spec_mod.from_config(self.config)

    @property
    def kubeconfig(self) -> str:
        return self.outputs["admin_kubeconfig"]

    @property
    def kubectl(self) -> kube.Kubectl:
        return kube.Kubectl(self.kubeconfig)

    @property
    def pki(self) -> Path:
        return playbook.cluster_dir(self.spec.name) / "pki"

    @property
    def key_file(self) -> Path:
        path = self.workdir / "id_ed25519"
        if not path.exists():
            path.write_text(self.outputs["ssh_private_key"])
            path.chmod(0o600)
        return path

    def address(self, machine: str) -> str:
        return next(m.address for m in self.spec.machines if m.name == machine)

    @property
    def known_hosts(self) -> Path:
        """The cluster's known_hosts file, which every playbook run fills with the machines' pinned host keys."""
        return playbook.cluster_dir(self.spec.name) / known_hosts.FILE_NAME

    def ssh(self, machine: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        # As an operator would: the machine's host key checked strictly against the cluster's file.
        proc = subprocess.run(["ssh", "-i", str(self.key_file), *known_hosts.options(self.known_hosts, pinned=True),
                               "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{self.address(machine)}", command],
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{machine}: `{command}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def lb_and_etcd_log(self, since: float) -> str:
        """What the load balancers and etcd logged from `since` (epoch seconds) on: haproxy's server state changes
        and etcd's leader changes, for the failures of a request loop started then to be read against."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        lines = [f"loop started at {time.ctime(since)}; what the LBs and etcd logged:"]
        for m in self.spec.machines:
            unit = "-t haproxy" if m in self.spec.lbs else "-u etcd" if m in self.spec.etcd else ""
            if unit:
                out = self.ssh(m.name, f"journalctl {unit} -o short-precise --no-pager --since '{stamp}' | "
                                       "grep -Ei 'is (down|up)|no server|drain|maint|elected leader|lost leader|"
                                       "leadership transfer|overloaded'", check=False)
                lines += [f"{m.name}: {line}" for line in out.stdout.splitlines()]
        return "\n".join(lines)

    def up(self, **config_changes) -> auto.UpResult:
        """`pulumi up` with some stack config changed (and kept)."""
        for key, value in config_changes.items():
            self.stack.set_config(f"pilothouse:{key}", auto.ConfigValue(str(value).lower()
                                                                        if isinstance(value, bool) else str(value)))
        self.config.update(config_changes)
        result = stack.up(self.stack, on_output=print)
        self.outputs = {k: v.value for k, v in result.outputs.items()}
        return result


def create_namespace(kubectl: kube.Kubectl, ns: str) -> None:
    """Create `ns` and wait for its default ServiceAccount: until the controller-manager has made it, a pod
    there is refused ("serviceaccount default not found"), which a loaded host shows."""
    kubectl.run("create", "namespace", ns)
    wait_for_default_account(kubectl, ns)


def wait_for_default_account(kubectl: kube.Kubectl, ns: str) -> None:
    kubectl.run("-n", ns, "wait", "--for=create", "serviceaccount/default", "--timeout=60s", timeout=70)


def server_and_client(live: LiveCluster, ns: str, server_node: str, client_node: str, greeting: str) -> str:
    """In a new namespace `ns`: pod `server` (busybox httpd on :8080 answering `greeting`) on one node, pod
    `client` (sleeping, for `kubectl exec`) on another, and Service `server` (:80) in front of the first;
    returns the server pod's IP once both pods are Ready."""
    kubectl = live.kubectl
    create_namespace(kubectl, ns)
    kubectl.run("apply", "-f", "-", input=SERVER_AND_CLIENT % {
        "ns": ns, "server_node": server_node, "client_node": client_node, "image": BUSYBOX, "greeting": greeting})
    kubectl.run("-n", ns, "wait", "--for=condition=Ready", "pod/server", "pod/client", "--timeout=180s", timeout=200)
    return kubectl.run("-n", ns, "get", "pod", "server", "-o", "jsonpath={.status.podIP}")


def _leftovers(spec: spec_mod.ClusterSpec) -> list[str]:
    left = []
    # Machines of backend existing are not the stack's: they outlive it (their reset is checked by their test).
    if spec.backend in ("local", "libvirt"):
        vms = [m for m in spec.machines if spec.backend == "libvirt" and spec.libvirt.is_vm(m)]
        left += [f"machine {m.name}" for m in spec.machines if m not in vms and local.status(m.name) != "absent"]
        left += [f"VM {m.name}" for m in vms if vm.domain_state(spec.libvirt.uri, m.name) != "absent"]
        left += [f"VM disk {path}" for m in vms for path in vm.DEFAULT_POOL_DIR.glob(f"{m.name}.*")]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        if f" {local.bridge_name(spec.name)}:" in links:
            left.append(f"bridge {local.bridge_name(spec.name)}")
    if playbook.cluster_dir(spec.name).exists():
        left.append(f"cluster directory {playbook.cluster_dir(spec.name)}")
    return left


@contextlib.contextmanager
def live_cluster(name: str, config: dict, workdir: Path, manifests: Path | None = None) -> Iterator[LiveCluster]:
    """Bring up the stack `name` with `config` (pilothouse:* keys without the namespace) and the samples
    from `manifests` (none when None), yield it, then destroy it and check the host is clean."""
    if os.geteuid() != 0:
        pytest.skip("local machines need root")
    samples = workdir / "workloads"
    samples.mkdir()
    if manifests is not None:
        shutil.copytree(manifests, samples, dirs_exist_ok=True)
    spec = spec_mod.from_config(config)

    def run() -> None:
        program.build(spec_mod.load(), manifests_dir=samples)

    st = stack.select_stack(name, run, workdir / "state",
                            config={f"pilothouse:{k}": str(v).lower() if isinstance(v, bool) else str(v)
                                    for k, v in config.items() if not isinstance(v, list)})
    for key, values in config.items():
        if isinstance(values, list):  # a typed array: one element per path, as `pulumi config set --path` does
            for i, value in enumerate(values):
                st.set_config(f"pilothouse:{key}[{i}]", auto.ConfigValue(value=value), path=True)
    live = LiveCluster(st, dict(config), samples, workdir)
    try:
        live.up()
        yield live
    finally:
        try:
            stack.destroy(st, on_output=print)
        finally:
            st.workspace.remove_stack(name)
            (REPO / f"Pulumi.{name}.yaml").unlink(missing_ok=True)
    left = _leftovers(live.spec) + _leftovers(spec)
    assert not left, f"`pulumi destroy` left {sorted(set(left))} behind"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the shared cluster run last (in file order), the other live tests first: those boot clusters of
    their own, and with the shared cluster idle beside them (8 machines, the add-ons and every sample) they took
    about twice as long (measured: the small topology's module 287 s alone, 483 s beside it)."""
    items.sort(key=lambda item: "shared_cluster" in item.fixturenames)  # a stable sort keeps file order


@pytest.fixture(scope="session")
def libvirt_daemons(tmp_path_factory) -> Iterator[None]:
    """libvirt's daemons, started here when the host runs none (PID 1 here is not systemd) and stopped after."""
    if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0:
        yield
        return
    run = tmp_path_factory.mktemp("libvirt")
    pidfiles = [run / "virtlogd.pid", run / "libvirtd.pid"]
    for daemon, pidfile in zip(("virtlogd", "libvirtd"), pidfiles):
        subprocess.run([daemon, "--daemon", "--pid-file", str(pidfile)], check=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode:
            assert time.monotonic() < deadline, "libvirtd did not answer within 30 s"
            time.sleep(0.5)
        yield
    finally:
        for pidfile in reversed(pidfiles):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 15
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.2)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory) -> Iterator[LiveCluster]:
    with live_cluster("shared", dict(SHARED_CONFIG), tmp_path_factory.mktemp("shared"), REPO / "workloads") as live:
        yield live
