"""Security settings, checked on the session's shared HA cluster (tests/conftest.py) the way an attacker or an
auditor would meet them: Pod Security admission refusing and warning, the kubelets' default seccomp filter,
the audit log on the masters, TLS versions and cipher suites on every port that serves TLS, the admin
identity's binding, the modes of the files on the machines and on this host, and the image registry refusing
pushes from machines and pods while serving their pulls. Each test leaves the cluster as it found it. The audit log's idle growth is printed (run pytest with -s).
"""
from __future__ import annotations

import base64
import json
import secrets
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import BUSYBOX, create_namespace, wait_for_default_account

from infra import known_hosts, playbook, program, stack
from infra.artifacts import images, registry
from infra.machines import keys, local

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

NS = "security-test"                # no Pod Security labels: the cluster's defaults apply
PRIVILEGED_NS = "security-test-privileged"
AUDIT_LOG = "/var/log/kubernetes/audit/audit.log"
# TLS 1.2 suites Go serves by default but the roles leave out (CBC with SHA-1 MACs), and ones they keep.
CBC_SUITES = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"
AEAD_SUITES = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"


def pod(name: str, namespace: str, security_context: dict | None = None, pod_security_context: dict | None = None):
    container = {"name": "sh", "image": BUSYBOX, "command": ["sleep", "3600"]}
    if security_context:
        container["securityContext"] = security_context
    spec = {"containers": [container], "terminationGracePeriodSeconds": 0}
    if pod_security_context:
        spec["securityContext"] = pod_security_context
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def kubectl(live, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """kubectl with the admin kubeconfig, keeping stderr (admission warnings and refusals go there)."""
    return subprocess.run(live.kubectl.command + list(args), input=input, capture_output=True, text=True,
                          timeout=120)


def super_admin(live, server: str) -> list[str]:
    """kubectl as the break-glass super-admin (system:masters), from the certificate in the PKI directory."""
    pki = live.pki
    return [live.kubectl.command[0], "--kubeconfig", "/dev/null", "--server", f"https://{server}:6443",
            "--certificate-authority", str(pki / "ca.crt"), "--client-certificate", str(pki / "super-admin.crt"),
            "--client-key", str(pki / "super-admin.key")]


def eventually(check, timeout: float = 30, interval: float = 1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)


@pytest.fixture(scope="module")
def namespaces(shared_cluster):
    kube = shared_cluster.kubectl
    create_namespace(kube, NS)
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": PRIVILEGED_NS, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
    wait_for_default_account(kube, PRIVILEGED_NS)
    yield
    kube.run("delete", "namespace", NS, PRIVILEGED_NS, "--wait=false", check=False)


def test_a_privileged_pod_is_refused_in_a_namespace_without_labels(shared_cluster, namespaces):
    done = kubectl(shared_cluster, "apply", "-f", "-",
                   input=yaml.safe_dump(pod("privileged", NS, {"privileged": True})))
    assert done.returncode != 0, f"a privileged pod was admitted: {done.stdout}"
    assert 'violates PodSecurity "baseline:latest": privileged' in done.stderr, done.stderr
    assert kubectl(shared_cluster, "-n", NS, "get", "pod", "privileged").returncode != 0


def test_a_baseline_pod_is_admitted_with_the_restricted_warning_and_an_audit_annotation(shared_cluster, namespaces):
    done = kubectl(shared_cluster, "apply", "-f", "-", input=yaml.safe_dump(pod("baseline", NS)))
    assert done.returncode == 0, done.stderr
    assert 'Warning: would violate PodSecurity "restricted:latest"' in done.stderr, done.stderr
    assert "runAsNonRoot != true" in done.stderr, done.stderr

    def annotated() -> None:
        events = audit_events(shared_cluster, '"name":"baseline"')
        # The scheduler's binding is a create on the pod too, on its `binding` subresource: only the pod's own
        # creation carries the admission annotation.
        created = [e for e in events if e["verb"] == "create" and e["objectRef"].get("namespace") == NS
                   and e["objectRef"]["resource"] == "pods" and not e["objectRef"].get("subresource")]
        assert created, "no audit event for the pod's creation"
        assert "restricted:latest" in created[-1].get("annotations", {}).get(
            "pod-security.kubernetes.io/audit-violations", ""), created[-1]
    eventually(annotated)


def test_pods_get_the_runtime_default_seccomp_filter_unless_they_opt_out(shared_cluster, namespaces):
    """The machines already run under systemd-nspawn's own filter, so a pod's process always shows Seccomp: 2;
    the kubelet's seccompDefault shows as one more filter than a pod that asks for Unconfined has."""
    kube = shared_cluster.kubectl
    kube.apply(pod("seccomp-default", PRIVILEGED_NS),
               pod("seccomp-unconfined", PRIVILEGED_NS, pod_security_context={"seccompProfile": {"type": "Unconfined"}}))
    kube.run("-n", PRIVILEGED_NS, "wait", "--for=condition=Ready", "pod/seccomp-default", "pod/seccomp-unconfined",
             "--timeout=120s", timeout=150)

    def filters(name: str) -> int:
        status = kube.run("-n", PRIVILEGED_NS, "exec", name, "--", "cat", "/proc/1/status")
        return int(next(line for line in status.splitlines() if line.startswith("Seccomp_filters:")).split()[1])

    assert filters("seccomp-default") == filters("seccomp-unconfined") + 1


# Bit numbers (linux/capability.h) of the capabilities the local backend drops, and of two the cluster needs.
DROPPED_CAPS = {"CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_PACCT": 20, "CAP_SYS_BOOT": 22,
                "CAP_SYS_TIME": 25, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36}
KEPT_CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}


def capabilities(status: str, field: str = "CapBnd") -> set[str]:
    """The named capabilities of DROPPED_CAPS and KEPT_CAPS present in a /proc/<pid>/status capability mask."""
    mask = int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1], 16)
    return {name for name, bit in {**DROPPED_CAPS, **KEPT_CAPS}.items() if mask >> bit & 1}


def test_machines_and_privileged_pods_lack_the_capabilities_the_local_backend_drops(shared_cluster, namespaces):
    assert set(DROPPED_CAPS) == set(local.DROPPED_CAPABILITIES)
    spec = shared_cluster.spec
    for machine in (spec.masters[0], spec.workers[0], spec.lbs[0]):
        init = shared_cluster.ssh(machine.name, "cat /proc/1/status").stdout
        assert capabilities(init) == set(KEPT_CAPS), f"{machine.name}: PID 1 bounding set"
    # A privileged container gets every capability of its machine's bounding set, and no more.
    kube = shared_cluster.kubectl
    kube.apply(pod("privileged-caps", PRIVILEGED_NS, {"privileged": True}))
    kube.run("-n", PRIVILEGED_NS, "wait", "--for=condition=Ready", "pod/privileged-caps", "--timeout=120s",
             timeout=150)
    status = kube.run("-n", PRIVILEGED_NS, "exec", "privileged-caps", "--", "cat", "/proc/1/status")
    assert capabilities(status, "CapEff") == capabilities(status) == set(KEPT_CAPS), status


def audit_events(live, needle: str) -> list[dict]:
    """Every audit event, on every master, whose JSON line contains `needle`."""
    events = []
    for master in live.spec.masters:
        out = live.ssh(master.name, f"grep -hF '{needle}' {AUDIT_LOG}* || true").stdout
        events += [json.loads(line) for line in out.splitlines() if line.strip()]
    return events


def test_a_secret_is_audited_with_its_metadata_and_never_its_value(shared_cluster, namespaces):
    value = secrets.token_hex(16)
    kube = shared_cluster.kubectl
    kube.run("-n", NS, "create", "secret", "generic", "audit-probe", f"--from-literal=token={value}")
    kube.run("-n", NS, "get", "secret", "audit-probe", "-o", "name")

    def logged() -> dict[str, dict]:
        events = [e for e in audit_events(shared_cluster, '"name":"audit-probe"')
                  if e["objectRef"].get("resource") == "secrets" and e["objectRef"].get("namespace") == NS]
        by_verb = {e["verb"]: e for e in events}
        assert {"create", "get"} <= set(by_verb), f"audit events for the Secret: {sorted(by_verb)}"
        return by_verb

    by_verb = eventually(logged)
    for verb in ("create", "get"):
        event = by_verb[verb]
        assert event["level"] == "Metadata" and event["stage"] == "ResponseComplete", event
        assert "requestObject" not in event and "responseObject" not in event, event
        assert event["user"]["username"] == "kubernetes-admin", event["user"]
        assert event["responseStatus"]["code"] in (200, 201), event
    for master in shared_cluster.spec.masters:
        for text in (value, base64.b64encode(value.encode()).decode()):
            found = shared_cluster.ssh(master.name, f"grep -cF {text} {AUDIT_LOG} || true").stdout.strip()
            assert found == "0", f"{master.name}: the Secret's value is in the audit log"


def test_the_audit_log_skips_probes_and_heartbeats_and_its_idle_growth_is_measured(shared_cluster):
    masters = [m.name for m in shared_cluster.spec.masters]

    def sizes() -> dict[str, int]:
        return {m: int(shared_cluster.ssh(m, f"stat -c %s {AUDIT_LOG}").stdout) for m in masters}

    # 15 s hold 7 of each LB's /readyz probes and several renewals of every lease.
    before, started = sizes(), time.monotonic()
    time.sleep(15)
    after, minutes = sizes(), (time.monotonic() - started) / 60
    for m in masters:
        print(f"audit log on {m}: {(after[m] - before[m]) / 1024 / minutes:.1f} KiB/min at rest "
              f"({after[m] / 1024:.0f} KiB in all)")
        mode = shared_cluster.ssh(m, f"stat -c %a {AUDIT_LOG} {Path(AUDIT_LOG).parent}").stdout.split()
        assert mode == ["600", "700"], f"{m}: audit log and its directory have modes {mode}"
    # haproxy polls /readyz every 2 s per LB and every component renews a lease every few seconds: none of it
    # may reach the log.
    assert not audit_events(shared_cluster, '"requestURI":"/readyz'), "the audit log has /readyz probes"
    renewals = [e for e in audit_events(shared_cluster, '"resource":"leases","namespace":"kube-system"')
                if e["verb"] in ("get", "update")]
    assert not renewals, f"the audit log has {len(renewals)} lease renewals, e.g. {renewals[0]}"


def handshake(address: str, port: int, suites: str, client_cert: tuple[Path, Path] | None = None) -> str:
    """A TLS 1.2 handshake offering only `suites`; returns the suite the server picked, or raises ssl.SSLError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE      # only the protocol is under test here
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(suites)              # outside the caller's pytest.raises: a client that lacks them fails here
    if client_cert:
        ctx.load_cert_chain(*map(str, client_cert))
    with socket.create_connection((address, port), timeout=10) as sock, ctx.wrap_socket(sock) as tls:
        tls.do_handshake()
        return tls.cipher()[0]


def test_every_tls_port_takes_only_tls12_aead_suites(shared_cluster):
    spec, pki = shared_cluster.spec, shared_cluster.pki
    etcd_client = (pki / "etcd-healthcheck-client.crt", pki / "etcd-healthcheck-client.key")
    ports = [(m.address, 6443, None) for m in spec.masters]                    # kube-apiserver
    ports += [(n.address, 10250, None) for n in (spec.masters[0], spec.workers[0])]  # kubelet
    ports += [(e.address, p, etcd_client) for e in spec.etcd[:1] for p in (2379, 2380)]  # etcd client, peer
    for address, port, cert in ports:
        assert "GCM" in handshake(address, port, AEAD_SUITES, cert), f"{address}:{port}"
        with pytest.raises(ssl.SSLError):
            handshake(address, port, CBC_SUITES, cert)
    # The controller-manager's and scheduler's secure ports listen on the master's loopback only.
    master = spec.masters[0].name
    for port in (10257, 10259):
        curl = f"curl -sk --tls-max 1.2 --max-time 10 https://127.0.0.1:{port}/healthz --ciphers"
        assert shared_cluster.ssh(master, f"{curl} {AEAD_SUITES}").stdout == "ok"
        refused = shared_cluster.ssh(master, f"{curl} {CBC_SUITES}", check=False)
        assert refused.returncode == 35, f"port {port}: CBC suites gave curl exit {refused.returncode}"


def test_the_admin_kubeconfig_is_cluster_admin_through_a_binding_not_system_masters(shared_cluster):
    review = shared_cluster.kubectl.json("auth", "whoami")["status"]["userInfo"]
    assert review["username"] == "kubernetes-admin"
    assert "pilothouse:cluster-admins" in review["groups"] and "system:masters" not in review["groups"], review
    # Taking the binding away takes the rights away on every API server; the super-admin puts it back.
    binding = subprocess.run(super_admin(shared_cluster, shared_cluster.spec.api_address) + [
        "get", "clusterrolebinding", "pilothouse:cluster-admins", "-o", "yaml"], capture_output=True, text=True,
        check=True).stdout
    masters = [m.address for m in shared_cluster.spec.masters]

    def can_list_secrets(expected: str) -> None:
        for address in masters:
            said = kubectl(shared_cluster, "--server", f"https://{address}:6443", "auth", "can-i", "list", "secrets",
                           "-A").stdout.strip()
            assert said == expected, f"{address}: can-i said {said!r}, expected {expected!r}"

    subprocess.run(super_admin(shared_cluster, masters[0]) + ["delete", "clusterrolebinding",
                                                              "pilothouse:cluster-admins"], check=True,
                   capture_output=True)
    try:
        eventually(lambda: can_list_secrets("no"))
    finally:
        restored = yaml.safe_load(binding)
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            restored["metadata"].pop(key, None)
        # `create`, not `apply`: the object keeps the role's last-applied annotation, so the playbook's next
        # `kubectl apply` finds nothing to change.
        subprocess.run(super_admin(shared_cluster, masters[0]) + ["create", "-f", "-"], input=yaml.safe_dump(restored),
                       text=True, check=True, capture_output=True)
        eventually(lambda: can_list_secrets("yes"))


# Every file under these (configs, kubeconfigs, certificates, keys, CNI config) and these units: 0600.
PRIVATE_TREES = ("/etc/kubernetes", "/etc/etcd", "/etc/cni/net.d")
PRIVATE_UNITS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kubelet", "kube-proxy",
                 "pilothouse-pod-routes", "pilothouse-pod-masquerade")
PRIVATE_DIRS = ("/etc/kubernetes", "/etc/kubernetes/pki", "/etc/etcd/pki", "/var/lib/etcd", "/var/lib/kubelet")


def test_no_cluster_file_on_the_machines_is_readable_by_others(shared_cluster):
    spec = shared_cluster.spec
    units = " ".join(f"/etc/systemd/system/{u}.service" for u in PRIVATE_UNITS)
    for machine in (spec.masters[0], spec.workers[0]):
        # A worker has no etcd or control-plane files: find names what is missing on stderr, and goes on.
        listing = shared_cluster.ssh(machine.name, f"find {' '.join(PRIVATE_TREES)} {units} -type f "
                                     "-printf '%m %p\\n' 2>/dev/null; true").stdout.splitlines()
        files = dict(reversed(line.split(" ", 1)) for line in listing)
        assert "/etc/systemd/system/kubelet.service" in files and "/etc/kubernetes/pki/ca.crt" in files, listing
        assert any(p.endswith(".conflist") for p in files), listing
        loose = {path: perm for path, perm in files.items() if perm != "600"}
        assert not loose, f"{machine.name}: files that are not 0600: {loose}"
        dirs = shared_cluster.ssh(machine.name, f"stat -c '%a %n' {' '.join(PRIVATE_DIRS)} 2>/dev/null; true").stdout
        loose = [line for line in dirs.splitlines() if not line.startswith("700 ")]
        assert "/etc/kubernetes/pki" in dirs and not loose, f"{machine.name}: directories that are not 0700: {loose}"
    assert shared_cluster.ssh(spec.etcd[0].name, "stat -c %a /var/lib/etcd").stdout.strip() == "700"


def test_etcd_runs_as_its_own_user_which_alone_reads_its_data_and_keys(shared_cluster):
    member = shared_cluster.spec.etcd[0].name
    user = shared_cluster.ssh(member, "ps -o user= -C etcd").stdout.split()
    assert user == ["etcd"], f"{member}: etcd runs as {user}"
    owned = shared_cluster.ssh(member, "stat -c '%U %G %a %n' /var/lib/etcd /var/lib/etcd/member /etc/etcd/pki "
                               "/etc/etcd/pki/*").stdout.splitlines()
    assert len(owned) == 10, owned   # the data dir and member/, pki/ and its 7 files
    wrong = [line for line in owned if not line.startswith(("etcd etcd 700 ", "etcd etcd 600 "))]
    assert not wrong, f"{member}: not etcd's and private: {wrong}"
    # No login for it, and root's files stay root's: the unit file and the binaries.
    assert shared_cluster.ssh(member, "getent passwd etcd").stdout.strip().endswith(":/var/lib/etcd:/usr/sbin/nologin")
    assert shared_cluster.ssh(member, "stat -c %U /etc/systemd/system/etcd.service /usr/local/bin/etcd"
                              ).stdout.split() == ["root", "root"]


PING = """
import json, pathlib, sys
import ansible_runner
from infra import playbook
job = json.load(sys.stdin)
env = {**job["env"], **playbook.key_envvars(pathlib.Path(job["dir"]), job["key"])}
run = ansible_runner.run(private_data_dir=job["dir"], host_pattern="all", module="ping", quiet=True,
                         inventory={"all": {"hosts": job["hosts"]}}, envvars=env)
print(json.dumps({"rc": run.rc, "failures": playbook.failures(run.events)}))
"""


def ansible_ping(directory: Path, hosts: dict, env: dict, key: str) -> tuple[int | None, list[str]]:
    """`ansible -m ping` through ansible-runner, in a fresh interpreter: ansible-runner forks through pexpect, and
    this process has the Automation API's gRPC threads, which can kill the forked child before it runs ansible
    (seen once: no exit code, an epoll error); playbook.run_playbook does the same for every playbook run."""
    directory.mkdir()  # ansible-runner writes its artifacts there but does not make it
    proc = subprocess.run([sys.executable, "-c", PING], cwd=stack.REPO, capture_output=True, text=True, timeout=300,
                          input=json.dumps({"dir": str(directory), "hosts": hosts, "env": env, "key": key}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    return out["rc"], out["failures"]


def test_the_cluster_known_hosts_holds_every_pinned_host_key_and_a_wrong_key_stops_ansible(shared_cluster, tmp_path):
    live, spec = shared_cluster, shared_cluster.spec
    # Every LiveCluster.ssh of the suite already checks keys strictly against this file.
    assert stat.S_IMODE(live.known_hosts.stat().st_mode) == 0o600
    pinned = {known_hosts.entry(m.address, local.get(m.name).ssh_host_key) for m in spec.machines}
    assert set(live.known_hosts.read_text().splitlines()) == pinned
    # An inventory whose pinned key for a master is another key: Ansible refuses to talk to the machine.
    master = spec.masters[0]
    record = next(m for m in live.outputs["machines"] if m["name"] == master.name)
    forged = {**record, "ssh_host_key": keys.generate_ed25519("forged").public_key}
    forged_file = tmp_path / "known_hosts"
    host = {"ansible_host": master.address, **playbook.connection_vars(forged, forged_file)}
    known_hosts.write(forged_file, [host[playbook.KNOWN_HOST_VAR]])
    # A connection of its own: a persistent one that an earlier run left to the real machine skips the key check.
    control = tempfile.TemporaryDirectory(prefix="cp", dir="/tmp")  # short: a socket path has 107 bytes at most
    env = {**playbook.ansible_env(), "ANSIBLE_SSH_CONTROL_PATH_DIR": control.name}
    started = time.monotonic()
    rc, lines = ansible_ping(tmp_path / "runner", {master.name: host}, env, live.outputs["ssh_private_key"])
    print(f"\nansible ping with a forged host key: refused in {time.monotonic() - started:.1f}s")
    assert rc != 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"{master.name}: unreachable: its SSH host key is not the one recorded"), lines
    # The same ping with the record as the backend gives it (the real key) goes through.
    host = {"ansible_host": master.address, **playbook.connection_vars(record, live.known_hosts)}
    rc, lines = ansible_ping(tmp_path / "runner-ok", {master.name: host}, env, live.outputs["ssh_private_key"])
    control.cleanup()
    assert rc == 0, lines


def test_the_cluster_directory_and_the_pulumi_state_on_this_host_are_private(shared_cluster):
    state = shared_cluster.workdir / "state"
    paths = [playbook.cluster_dir(shared_cluster.spec.name), state]
    if not stack.OPERATOR_PASSPHRASE:      # else the passphrase comes from the operator's variable
        paths.append(state / "passphrase")
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in paths}
    assert modes == {p: 0o600 if p.name == "passphrase" else 0o700 for p in modes}, modes


# ---- the image registry ------------------------------------------------------------------------------------

MANIFEST_ACCEPT = "Accept: " + ", ".join(["application/vnd.oci.image.manifest.v1+json",
                                         "application/vnd.oci.image.index.v1+json"])
# Status code, then the digest header, of one request: what both probes below print.
CURL = "curl -s -o /dev/null -D - -w 'status=%{{http_code}}\\n' -X {method} -H '{accept}' http://{registry}{path}"
WRITES = (("POST", "/v2/library/nginx/blobs/uploads/"),      # starting a blob upload: the first step of any push
          ("PUT", "/v2/pause/manifests/3.10.1"),             # moving a tag onto another manifest
          ("DELETE", "/v2/pause/manifests/{digest}"))       # removing what the cluster runs


def registry_probes(endpoint: str, digest: str) -> list[tuple[str, str]]:
    """(what, shell command) pairs: a manifest pull, then each write a pusher would try."""
    probes = [("GET pause:3.10.1", CURL.format(method="GET", accept=MANIFEST_ACCEPT, registry=endpoint,
                                              path="/v2/pause/manifests/3.10.1"))]
    probes += [(f"{method} {path}", CURL.format(method=method, accept=MANIFEST_ACCEPT, registry=endpoint,
                                                path=path.format(digest=digest))) for method, path in WRITES]
    return probes


def check_registry_answers(outputs: dict[str, str], digest: str, where: str) -> None:
    pull = outputs.pop("GET pause:3.10.1")
    assert "status=200" in pull and f"docker-content-digest: {digest}" in pull.lower(), f"{where}: {pull}"
    for what, out in outputs.items():
        assert "status=405" in out, f"{where}: {what} was not refused: {out}"


def test_the_registry_refuses_pushes_from_a_machine_and_a_pod_and_serves_their_pulls(shared_cluster, namespaces):
    endpoint = program.registry_endpoint(shared_cluster.spec)
    digest = images.ensure_images(["pause"], build=False)[0].tags[0].digest
    probes = registry_probes(endpoint, digest)
    worker = shared_cluster.spec.workers[0].name
    # A machine: containerd's own path to the mirror.
    check_registry_answers({what: shared_cluster.ssh(worker, command).stdout for what, command in probes},
                           digest, worker)
    # A pod: from the pod network, masqueraded by its node like any pod traffic leaving the cluster.
    kube = shared_cluster.kubectl
    prober = pod("registry-probe", NS)
    prober["spec"]["containers"][0]["image"] = "docker.io/curlimages/curl:latest"
    kube.apply(prober)
    try:
        kube.run("-n", NS, "wait", "--for=condition=Ready", "pod/registry-probe", "--timeout=120s", timeout=150)
        check_registry_answers({what: kube.run("-n", NS, "exec", "registry-probe", "--", "sh", "-c", command)
                                for what, command in probes}, digest, "a pod")
    finally:
        kube.run("-n", NS, "delete", "pod", "registry-probe", "--wait=false", check=False)


def test_what_the_project_deploys_runs_by_the_digest_of_its_build(shared_cluster):
    pinned = registry.pinned_refs(images.ensure_images(build=False))
    kube = shared_cluster.kubectl
    for ns, kind, name, ref in (("kube-system", "deployment", "coredns", "registry.k8s.io/coredns/coredns:v1.14.1"),
                                ("traefik", "deployment", "traefik", "docker.io/library/traefik:v3.6.12"),
                                ("metallb-system", "daemonset", "speaker", "quay.io/metallb/speaker:v0.15.2")):
        image = kube.run("-n", ns, "get", kind, name, "-o", "jsonpath={.spec.template.spec.containers[0].image}")
        assert image == pinned[ref], f"{ns}/{name} runs {image}, not {pinned[ref]}"
    helper = kube.json("-n", "local-path-storage", "get", "configmap", "local-path-config")["data"]["helperPod.yaml"]
    assert pinned["docker.io/library/busybox:latest"] in helper, helper
    sandbox = shared_cluster.ssh(shared_cluster.spec.workers[0].name, "grep sandbox_image /etc/containerd/config.toml")
    assert pinned["registry.k8s.io/pause:3.10.1"] in sandbox.stdout, sandbox.stdout
