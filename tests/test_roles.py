"""The Ansible roles build a real HA cluster on local machines, and it behaves like one.

Boots 2 LBs (keepalived VIP) + 3 masters (stacked etcd) + 2 workers with infra.machines.local on a private bridge, serves the
images from the local registry on the bridge address, runs roles/site.yml through ansible-runner, then checks
the cluster the way a user would: kubectl through the LB, etcdctl on the members, failure drills, pods.
The machines are always destroyed afterwards. Timings are printed (run pytest with -s) and written to
<tmp>/timings.json.
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

machines = pytest.mark.machines

ROOT = Path(__file__).resolve().parents[1]
ROLES = ROOT / "roles"
ARTIFACTS = Path(os.environ.get("PILOTHOUSE_CACHE", Path.home() / ".cache" / "pilothouse")) / "artifacts"

BRIDGE = "ph4t"
NET = "10.252.1"
LB = {"t4t-lb1": f"{NET}.10", "t4t-lb2": f"{NET}.9"}
VIP = f"{NET}.5"  # held by one LB at a time (keepalived); the API endpoint every client uses
MASTERS = {"t4t-m1": f"{NET}.11", "t4t-m2": f"{NET}.12", "t4t-m3": f"{NET}.13"}
WORKERS = {"t4t-w1": f"{NET}.21", "t4t-w2": f"{NET}.22"}
NODES = {**MASTERS, **WORKERS}
REGISTRY = f"{NET}.1:5000"
BUSYBOX = "docker.io/library/busybox:1.36"
TIMINGS: dict[str, float] = {}


def _artifact(name: str, binary: str) -> Path:
    """The newest complete build of an artifact (a directory with MANIFEST.json)."""
    done = sorted((p.parent for p in (ARTIFACTS / name).glob("*/MANIFEST.json")), key=lambda p: p.stat().st_mtime)
    if not done:
        pytest.skip(f"artifact {name} is not built: run `invoke artifacts` first")
    return done[-1] / binary


def _binaries() -> dict[str, str]:
    out = {b: str(_artifact("etcd", b)) for b in ("etcd", "etcdctl")}
    for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"):
        out[b] = str(_artifact("kubernetes", b))
    return out


def _inventory(key_file: Path, workdir: Path, binaries: dict[str, str]) -> dict:
    return {"all": {
        "vars": {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key_file),
            "pilothouse_cluster_name": "t4t",
            "pilothouse_api_endpoint": VIP,
            "pilothouse_api_vip": VIP,
            "pilothouse_pod_cidr": "10.244.0.0/16",
            "pilothouse_service_cidr": "10.96.0.0/12",
            "pilothouse_cluster_dns": "10.96.0.10",
            "pilothouse_kubernetes_version": "v1.34.4",
            "pilothouse_registry_mirror": f"http://{REGISTRY}",
            "pilothouse_pki_dir": str(workdir / "pki"),
            "pilothouse_admin_kubeconfig": str(workdir / "admin.kubeconfig"),
            "pilothouse_binaries": binaries,
        },
        "children": {
            "etcd": {"hosts": {n: {"ansible_host": a} for n, a in MASTERS.items()}},
            "kube_control_plane": {"hosts": {n: {} for n in MASTERS}},
            "kube_node": {"hosts": {n: {"ansible_host": a, "pilothouse_pod_subnet": f"10.244.{i}.0/24"}
                                    for i, (n, a) in enumerate(NODES.items(), start=1)}},
            "lb": {"hosts": {n: {"ansible_host": a} for n, a in LB.items()}},
        },
    }}


# --- the live cluster -------------------------------------------------------------------------------

def run_playbook(cluster: dict, label: str):
    import ansible_runner

    started = time.monotonic()
    private = cluster["workdir"] / f"runner-{label}"
    private.mkdir(exist_ok=True)
    result = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(ROLES), playbook="site.yml", inventory=str(cluster["inventory"]),
        envvars={"ANSIBLE_CONFIG": str(ROLES / "ansible.cfg")}, quiet=True)
    TIMINGS[f"playbook_{label}_s"] = round(time.monotonic() - started, 1)
    stdout = result.stdout.read() if result.stdout else ""
    assert result.rc == 0 and result.status == "successful", (
        f"playbook ({label}) failed: rc={result.rc} status={result.status}\n{stdout[-6000:]}")
    return result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("local machines need root")
    from infra.artifacts import registry
    from infra.machines import keys, local

    binaries = _binaries()
    workdir = tmp_path_factory.mktemp("roles")
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # ansible-runner finds ansible-playbook
    pair = keys.generate_ed25519("pilothouse-test-roles")
    key_file = workdir / "id_ed25519"
    key_file.write_text(pair.private_key)
    key_file.chmod(0o600)
    names = [*LB, *NODES]
    addresses = {**LB, **NODES}
    handle = None
    try:
        started = time.monotonic()
        for name in names:
            local.create(local.MachineSpec(name, addresses[name], 24, BRIDGE, pair.public_key), pair.private_key)
        TIMINGS["machines_ready_s"] = round(time.monotonic() - started, 1)
        handle = registry.start([REGISTRY])
        registry.push_all(REGISTRY, log=lambda *_: None)
        inventory = workdir / "inventory.yml"
        inventory.write_text(yaml.safe_dump(_inventory(key_file, workdir, binaries), sort_keys=False))
        info = {"workdir": workdir, "inventory": inventory, "key": key_file, "kubectl": binaries["kubectl"],
                "kubeconfig": workdir / "admin.kubeconfig"}
        info["first_run"] = run_playbook(info, "fresh")
        yield info
    finally:
        if handle is not None:
            handle.stop()
        for name in names:
            local.destroy(name)
        (workdir / "timings.json").write_text(json.dumps(TIMINGS, indent=2))
        print(f"\nroles test timings: {json.dumps(TIMINGS)}")


def kubectl(cluster, *args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run([cluster["kubectl"], "--kubeconfig", str(cluster["kubeconfig"]), *args], input=input,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def ssh(cluster, address: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ssh", "-i", str(cluster["key"]), "-o", "StrictHostKeyChecking=no", "-o",
                           "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                           f"root@{address}", command], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{address}: `{command}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def lease_holder(cluster, name: str) -> str:
    out = kubectl(cluster, "-n", "kube-system", "get", "lease", name, "-o", "jsonpath={.spec.holderIdentity}")
    return out.split("_")[0]


@machines
def test_every_node_is_ready_through_the_load_balancer(cluster):
    config = yaml.safe_load(cluster["kubeconfig"].read_text())
    assert config["clusters"][0]["cluster"]["server"] == f"https://{VIP}:6443"
    nodes = json.loads(kubectl(cluster, "get", "nodes", "-o", "json"))["items"]
    ready = {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in n["status"]["conditions"]) for n in nodes}
    assert ready == {name: True for name in NODES}, f"node readiness: {ready}"
    masters_tainted = {n["metadata"]["name"]: any(t["key"] == "node-role.kubernetes.io/control-plane"
                                                  for t in n["spec"].get("taints", [])) for n in nodes}
    assert masters_tainted == {name: name in MASTERS for name in NODES}, masters_tainted


@machines
def test_etcd_is_healthy_on_every_member_with_three_members(cluster):
    for name, address in MASTERS.items():
        health = ssh(cluster, address, "etcdctl-pilothouse endpoint health")
        assert "is healthy" in health.stdout + health.stderr, f"{name}: {health.stdout}{health.stderr}"
    members = json.loads(ssh(cluster, MASTERS["t4t-m1"], "etcdctl-pilothouse member list -w json").stdout)
    assert sorted(m["name"] for m in members["members"]) == sorted(MASTERS)


@machines
def test_an_unauthenticated_request_is_refused_by_every_api_server(cluster):
    ctx = ssl.create_default_context(cafile=str(cluster["workdir"] / "pki" / "ca.crt"))
    for address in [*MASTERS.values(), *LB.values(), VIP]:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"https://{address}:6443/api/v1/namespaces", context=ctx, timeout=10)
        assert err.value.code == 401, f"{address}: anonymous request got HTTP {err.value.code}, expected 401"


@machines
def test_a_secret_is_encrypted_in_etcd(cluster):
    kubectl(cluster, "create", "secret", "generic", "roles-test-secret", "--from-literal=password=hunter2")
    get = "etcdctl-pilothouse get /registry/secrets/default/roles-test-secret --print-value-only"
    prefix = ssh(cluster, MASTERS["t4t-m2"], f"{get} | head -c 26").stdout
    assert prefix == "k8s:enc:secretbox:v1:key1:", f"raw etcd value starts with {prefix!r}"
    plaintext = ssh(cluster, MASTERS["t4t-m2"], f"{get} | grep -c hunter2 || true").stdout.strip()
    assert plaintext == "0", "the Secret's value is readable in etcd"


@machines
@pytest.mark.parametrize("component", ["kube-controller-manager", "kube-scheduler"])
def test_stopping_the_lease_holder_moves_the_lease(cluster, component):
    holder = lease_holder(cluster, component)
    assert holder in MASTERS, f"{component} lease holder {holder!r} is not a master"
    ssh(cluster, MASTERS[holder], f"systemctl stop {component}")
    started = time.monotonic()
    try:
        new = holder
        while time.monotonic() - started < 90:
            new = lease_holder(cluster, component)
            if new not in (holder, ""):  # "" = released on shutdown, not yet taken over
                break
            time.sleep(0.5)
        TIMINGS[f"{component}_failover_s"] = round(time.monotonic() - started, 1)
        assert new != holder and new in MASTERS, f"{component} lease stayed with {holder} for 90 s"
    finally:
        ssh(cluster, MASTERS[holder], f"systemctl start {component}")


@machines
def test_requests_through_the_lb_keep_working_with_one_api_server_stopped(cluster):
    victim = MASTERS["t4t-m1"]
    ssh(cluster, victim, "systemctl stop kube-apiserver")
    try:
        failures = []
        for i in range(20):
            proc = subprocess.run([cluster["kubectl"], "--kubeconfig", str(cluster["kubeconfig"]), "get", "ns",
                                   "default", "-o", "name"], capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                failures.append(proc.stderr.strip())
            time.sleep(0.3)
        assert not failures, f"{len(failures)}/20 requests failed with one API server down: {failures[:3]}"
    finally:
        ssh(cluster, victim, "systemctl start kube-apiserver")
    deadline = time.monotonic() + 60
    while ssh(cluster, victim, "curl -fsS --cacert /etc/kubernetes/pki/ca.crt --cert "
              "/etc/kubernetes/pki/healthcheck-client.crt --key /etc/kubernetes/pki/healthcheck-client.key "
              "https://127.0.0.1:6443/readyz", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the restarted API server did not become ready again"
        time.sleep(1)


def vip_holders(cluster) -> list[str]:
    return [name for name, address in LB.items()
            if VIP in ssh(cluster, address, f"ip -4 -o addr show to {VIP}/32", check=False).stdout]


@machines
def test_the_vip_moves_to_the_other_lb_when_its_holder_stops(cluster):
    holders = vip_holders(cluster)
    assert len(holders) == 1, f"VIP {VIP} is held by {holders}, expected exactly one LB"
    holder = holders[0]
    ssh(cluster, LB[holder], "systemctl stop keepalived")
    started = time.monotonic()
    try:
        while vip_holders(cluster) != [n for n in LB if n != holder]:
            assert time.monotonic() - started < 30, f"the VIP did not move off {holder} within 30 s"
            time.sleep(0.2)
        TIMINGS["vip_failover_s"] = round(time.monotonic() - started, 1)
        # Clients keep using the same address: the API answers through the other LB.
        assert kubectl(cluster, "get", "ns", "default", "-o", "name").strip() == "namespace/default"
    finally:
        ssh(cluster, LB[holder], "systemctl start keepalived")


PODS = """
apiVersion: v1
kind: Pod
metadata: {name: roles-server, labels: {app: roles-server}}
spec:
  nodeName: t4t-w1
  containers:
    - name: httpd
      image: %(image)s
      command: [sh, -c, "mkdir -p /www && echo hello-from-roles-server > /www/index.html && exec httpd -f -p 8080 -h /www"]
      ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: roles-client}
spec:
  nodeName: t4t-w2
  containers:
    - name: sh
      image: %(image)s
      command: [sleep, "3600"]
---
apiVersion: v1
kind: Service
metadata: {name: roles-server}
spec:
  selector: {app: roles-server}
  ports: [{port: 80, targetPort: 8080}]
""" % {"image": BUSYBOX}


@pytest.fixture(scope="module")
def pods(cluster):
    kubectl(cluster, "apply", "-f", "-", input=PODS)
    kubectl(cluster, "wait", "--for=condition=Ready", "pod/roles-server", "pod/roles-client", "--timeout=180s",
            timeout=200)
    server_ip = kubectl(cluster, "get", "pod", "roles-server", "-o", "jsonpath={.status.podIP}")
    yield {"server_ip": server_ip}
    kubectl(cluster, "delete", "-f", "-", "--wait=false", input=PODS, check=False)


def exec_client(cluster, command: str) -> str:
    return kubectl(cluster, "exec", "roles-client", "--", "sh", "-c", command, timeout=60)


@machines
def test_a_pod_reaches_a_pod_on_another_worker_by_pod_ip(cluster, pods):
    assert pods["server_ip"].startswith("10.244.4."), f"server pod IP {pods['server_ip']} is not in t4t-w1's subnet"
    assert exec_client(cluster, f"timeout 10 wget -qO- http://{pods['server_ip']}:8080/").strip() == "hello-from-roles-server"


@machines
def test_a_clusterip_service_answers(cluster, pods):
    ip = kubectl(cluster, "get", "svc", "roles-server", "-o", "jsonpath={.spec.clusterIP}")
    started, last = time.monotonic(), ""
    while time.monotonic() - started < 30:  # kube-proxy programs a new Service within its sync period
        try:
            last = exec_client(cluster, f"timeout 10 wget -qO- http://{ip}/").strip()
        except AssertionError as e:
            last = str(e)
        if last == "hello-from-roles-server":
            break
        time.sleep(1)
    TIMINGS["clusterip_first_answer_s"] = round(time.monotonic() - started, 1)
    if last != "hello-from-roles-server":
        rules = ssh(cluster, WORKERS["t4t-w2"], f"iptables-save -t nat | grep -c {ip} || true").stdout.strip()
        log = ssh(cluster, WORKERS["t4t-w2"], "journalctl -u kube-proxy --no-pager | tail -25").stdout
        pytest.fail(f"ClusterIP {ip} did not answer from t4t-w2 within 30 s: {last}\n"
                    f"nat rules for it on t4t-w2: {rules}\nkube-proxy log:\n{log}")


@machines
def test_a_process_on_a_node_reaches_a_clusterip(cluster, pods):
    # Host-network pods (MetalLB's speaker) and node processes use the `kubernetes` Service too; the
    # machines have no default route, so the cni role routes the Service CIDR for them.
    ip = kubectl(cluster, "get", "svc", "roles-server", "-o", "jsonpath={.spec.clusterIP}")
    answer = ssh(cluster, WORKERS["t4t-w2"], f"curl -s --max-time 10 http://{ip}/", check=False)
    assert answer.stdout.strip() == "hello-from-roles-server", answer.stderr


@machines
def test_a_pod_resolves_cluster_names(cluster, pods):
    out = exec_client(cluster, "nslookup kubernetes.default.svc.cluster.local")
    assert "10.96.0.1" in out, out
    out = exec_client(cluster, "timeout 10 wget -qO- http://roles-server.default.svc.cluster.local/")
    assert out.strip() == "hello-from-roles-server"


@machines
def test_a_second_run_changes_nothing(cluster):
    result = run_playbook(cluster, "noop")
    changed = {host: n for host, n in result.stats.get("changed", {}).items() if n}
    assert not changed, f"second run changed something: {changed}"
