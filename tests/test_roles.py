"""What the Ansible roles built, checked the way a user would, on the session's shared HA cluster
(tests/conftest.py: 2 LBs with a keepalived VIP, 3 masters with stacked etcd, the workers): kubectl through
the VIP, etcdctl on the members, failure drills that stop one component and start it again, pods talking
across nodes. Timings of the drills are printed (run pytest with -s).
"""
from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request

import pytest
import yaml
from conftest import server_and_client

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

NS = "roles-test"


def lease_holder(live, name: str) -> str:
    out = live.kubectl.run("-n", "kube-system", "get", "lease", name, "-o", "jsonpath={.spec.holderIdentity}")
    return out.split("_")[0]


def test_every_node_is_ready_and_only_masters_are_tainted(shared_cluster):
    spec = shared_cluster.spec
    config = yaml.safe_load(open(shared_cluster.kubeconfig))
    assert config["clusters"][0]["cluster"]["server"] == f"https://{spec.vip}:6443"
    nodes = shared_cluster.kubectl.json("get", "nodes")["items"]
    ready = {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                        for c in n["status"]["conditions"]) for n in nodes}
    assert ready == {m.name: True for m in spec.nodes}, f"node readiness: {ready}"
    tainted = {n["metadata"]["name"]: any(t["key"] == "node-role.kubernetes.io/control-plane"
                                          for t in n["spec"].get("taints", [])) for n in nodes}
    assert tainted == {m.name: "master" in m.roles for m in spec.nodes}, tainted


def test_every_kubelet_runs_with_the_configuration_the_role_wrote(shared_cluster):
    """Read back from each kubelet's own /configz (through the API server): what it runs with, not the file."""
    for node in shared_cluster.spec.nodes:
        config = json.loads(shared_cluster.kubectl.run("get", "--raw", f"/api/v1/nodes/{node.name}/proxy/configz"))
        running = config["kubeletconfig"]
        assert (running["serializeImagePulls"], running["maxParallelImagePulls"]) == (False, 4), node.name
        assert running["authentication"]["anonymous"]["enabled"] is False, node.name
        assert running["maxPods"] == 110, node.name


def test_etcd_is_healthy_on_every_member_and_lists_them_all(shared_cluster):
    members = shared_cluster.spec.etcd
    for m in members:
        health = shared_cluster.ssh(m.name, "etcdctl-pilothouse endpoint health")
        assert "is healthy" in health.stdout + health.stderr, f"{m.name}: {health.stdout}{health.stderr}"
    listed = json.loads(shared_cluster.ssh(members[0].name, "etcdctl-pilothouse member list -w json").stdout)
    assert sorted(x["name"] for x in listed["members"]) == sorted(m.name for m in members)


def test_an_unauthenticated_request_is_refused_by_every_api_server(shared_cluster):
    spec = shared_cluster.spec
    ctx = ssl.create_default_context(cafile=str(shared_cluster.pki / "ca.crt"))
    for address in [*(m.address for m in spec.masters), *(m.address for m in spec.lbs), spec.vip]:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"https://{address}:6443/api/v1/namespaces", context=ctx, timeout=10)
        assert err.value.code == 401, f"{address}: anonymous request got HTTP {err.value.code}, expected 401"


def test_a_secret_is_encrypted_in_etcd(shared_cluster):
    kubectl = shared_cluster.kubectl
    kubectl.run("create", "secret", "generic", "roles-test-secret", "--from-literal=password=hunter2")
    try:
        member = shared_cluster.spec.etcd[1].name
        get = "etcdctl-pilothouse get /registry/secrets/default/roles-test-secret --print-value-only"
        prefix = shared_cluster.ssh(member, f"{get} | head -c 26").stdout
        assert prefix == "k8s:enc:secretbox:v1:key1:", f"raw etcd value starts with {prefix!r}"
        plaintext = shared_cluster.ssh(member, f"{get} | grep -c hunter2 || true").stdout.strip()
        assert plaintext == "0", "the Secret's value is readable in etcd"
    finally:
        kubectl.run("delete", "secret", "roles-test-secret", check=False)


# The controller-manager's lease is moved by a harder failure in tests/test_second_day.py: the master drill
# pulls the plug on its holder's machine.
@pytest.mark.parametrize("component", ["kube-scheduler"])
def test_stopping_the_lease_holder_moves_the_lease(shared_cluster, component):
    masters = [m.name for m in shared_cluster.spec.masters]
    holder = lease_holder(shared_cluster, component)
    assert holder in masters, f"{component} lease holder {holder!r} is not a master"
    shared_cluster.ssh(holder, f"systemctl stop {component}")
    started = time.monotonic()
    try:
        new = holder
        while time.monotonic() - started < 90:
            new = lease_holder(shared_cluster, component)
            if new not in (holder, ""):  # "" = released on shutdown, not yet taken over
                break
            time.sleep(0.5)
        print(f"\n{component} lease moved in {time.monotonic() - started:.1f}s")
        assert new != holder and new in masters, f"{component} lease stayed with {holder} for 90 s"
    finally:
        shared_cluster.ssh(holder, f"systemctl start {component}")


def test_requests_through_the_lb_keep_working_with_one_api_server_stopped(shared_cluster):
    victim = shared_cluster.spec.masters[0].name
    shared_cluster.ssh(victim, "systemctl stop kube-apiserver")
    try:
        failures = []
        for _ in range(20):
            try:
                shared_cluster.kubectl.run("get", "ns", "default", "-o", "name", timeout=30)
            except Exception as e:  # noqa: BLE001 - every kind of failed request counts
                failures.append(str(e))
            time.sleep(0.3)
        assert not failures, f"{len(failures)}/20 requests failed with one API server down: {failures[:3]}"
    finally:
        shared_cluster.ssh(victim, "systemctl start kube-apiserver")
    deadline = time.monotonic() + 60
    while shared_cluster.ssh(victim, "curl -fsS --cacert /etc/kubernetes/pki/ca.crt --cert "
                             "/etc/kubernetes/pki/healthcheck-client.crt --key "
                             "/etc/kubernetes/pki/healthcheck-client.key https://127.0.0.1:6443/readyz",
                             check=False).returncode != 0:
        assert time.monotonic() < deadline, "the restarted API server did not become ready again"
        time.sleep(1)


def test_the_lb_health_check_leaves_out_only_the_etcd_checks(shared_cluster):
    # The path haproxy really uses, asked of an API server with the check's own client certificate: both etcd
    # checks exist under these names in this release and are skipped, and the rest of /readyz still runs.
    lb, master = shared_cluster.spec.lbs[0].name, shared_cluster.spec.masters[0].name
    config = shared_cluster.ssh(lb, "cat /etc/haproxy/haproxy.cfg").stdout
    path = re.search(r"http-check send meth GET uri (\S+)", config).group(1)
    assert path.startswith("/readyz?"), path
    pki = "/etc/kubernetes/pki"
    answer = shared_cluster.ssh(master, f"curl -sS -w '\\n%{{http_code}}' --cacert {pki}/ca.crt --cert "
                                f"{pki}/healthcheck-client.crt --key {pki}/healthcheck-client.key "
                                f"'https://127.0.0.1:6443{path}&verbose'").stdout
    assert answer.endswith("\n200"), answer
    assert "[+]etcd excluded: ok" in answer and "[+]etcd-readiness excluded: ok" in answer, answer
    assert "cannot be excluded" not in answer, answer
    assert "[+]informer-sync ok" in answer and "[+]shutdown ok" in answer, answer


def vip_holders(live) -> list[str]:
    vip = live.spec.vip
    return [m.name for m in live.spec.lbs
            if vip in live.ssh(m.name, f"ip -4 -o addr show to {vip}/32", check=False).stdout]


def test_the_vip_moves_to_the_other_lb_when_its_holder_stops(shared_cluster):
    lbs = [m.name for m in shared_cluster.spec.lbs]
    holders = vip_holders(shared_cluster)
    assert len(holders) == 1, f"VIP {shared_cluster.spec.vip} is held by {holders}, expected exactly one LB"
    holder = holders[0]
    shared_cluster.ssh(holder, "systemctl stop keepalived")
    started = time.monotonic()
    try:
        while vip_holders(shared_cluster) != [n for n in lbs if n != holder]:
            assert time.monotonic() - started < 30, f"the VIP did not move off {holder} within 30 s"
            time.sleep(0.2)
        print(f"\nVIP moved in {time.monotonic() - started:.1f}s")
        # Clients keep using the same address: the API answers through the other LB.
        assert shared_cluster.kubectl.run("get", "ns", "default", "-o", "name").strip() == "namespace/default"
    finally:
        shared_cluster.ssh(holder, "systemctl start keepalived")


@pytest.fixture(scope="module")
def pods(shared_cluster):
    """A web server on the first worker and a client on the second, in a namespace of this module's own."""
    server, client = shared_cluster.spec.workers[0], shared_cluster.spec.workers[1]
    server_ip = server_and_client(shared_cluster, NS, server.name, client.name, "hello-from-roles-server")
    yield {"server": server, "client": client, "server_ip": server_ip}
    shared_cluster.kubectl.run("delete", "namespace", NS, "--wait=false", check=False)


def exec_client(live, command: str) -> str:
    return live.kubectl.run("-n", NS, "exec", "client", "--", "sh", "-c", command, timeout=60)


def test_a_pod_reaches_a_pod_on_another_worker_by_pod_ip(shared_cluster, pods):
    subnet_prefix = pods["server"].pod_subnet.rsplit(".", 1)[0] + "."
    assert pods["server_ip"].startswith(subnet_prefix), \
        f"server pod IP {pods['server_ip']} is not in {pods['server'].name}'s subnet {pods['server'].pod_subnet}"
    answer = exec_client(shared_cluster, f"timeout 10 wget -qO- http://{pods['server_ip']}:8080/")
    assert answer.strip() == "hello-from-roles-server"


def test_a_clusterip_service_answers(shared_cluster, pods):
    ip = shared_cluster.kubectl.run("-n", NS, "get", "svc", "server", "-o", "jsonpath={.spec.clusterIP}")
    started, last = time.monotonic(), ""
    while time.monotonic() - started < 30:  # kube-proxy programs a new Service within its sync period
        try:
            last = exec_client(shared_cluster, f"timeout 10 wget -qO- http://{ip}/").strip()
        except Exception as e:  # noqa: BLE001 - keep trying until the deadline, then report the last error
            last = str(e)
        if last == "hello-from-roles-server":
            break
        time.sleep(1)
    print(f"\nClusterIP answered {time.monotonic() - started:.1f}s after the pods were ready")
    if last != "hello-from-roles-server":
        client = pods["client"].name
        rules = shared_cluster.ssh(client, f"iptables-save -t nat | grep -c {ip} || true").stdout.strip()
        log = shared_cluster.ssh(client, "journalctl -u kube-proxy --no-pager | tail -25").stdout
        pytest.fail(f"ClusterIP {ip} did not answer from {client} within 30 s: {last}\n"
                    f"nat rules for it on {client}: {rules}\nkube-proxy log:\n{log}")


def test_a_process_on_a_node_reaches_a_clusterip(shared_cluster, pods):
    # Host-network pods (MetalLB's speaker) and node processes use the `kubernetes` Service too; the
    # machines have no default route, so the cni role routes the Service CIDR for them.
    ip = shared_cluster.kubectl.run("-n", NS, "get", "svc", "server", "-o", "jsonpath={.spec.clusterIP}")
    answer = shared_cluster.ssh(pods["client"].name, f"curl -s --max-time 10 http://{ip}/", check=False)
    assert answer.stdout.strip() == "hello-from-roles-server", answer.stderr


def test_a_pod_resolves_cluster_names(shared_cluster, pods):
    out = exec_client(shared_cluster, "nslookup kubernetes.default.svc.cluster.local")
    assert shared_cluster.spec.first_service_ip in out, out
    out = exec_client(shared_cluster, f"timeout 10 wget -qO- http://server.{NS}.svc.cluster.local/")
    assert out.strip() == "hello-from-roles-server"
