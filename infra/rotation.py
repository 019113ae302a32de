"""`invoke certs.rotate`: every leaf certificate re-issued with a new key, the components rolled one at a time.

It is one run of roles/site.yml with two variables: `pki_rekey` (the pki role re-issues every leaf certificate in
the cluster directory with a new key; the CAs, the service-account key pair and the encryption key stay) and
`pilothouse_rolling` (the plays take one machine at a time: etcd members, which read their new certificates at
each new connection and do not restart, then load balancers, then masters, each API server drained on every load
balancer before its restart and UP there again before the next; then nodes).
The roles already copy changed certificates and restart what uses them; this only makes it happen everywhere, in
that order. Meanwhile the drill's request loop runs through the load balancer, so the command reports what a
client saw, and afterwards every kubelet has requested its own client certificate through a CSR.
"""
from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from infra import drill, etcd, playbook, status

KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
# Ansible lines worth showing while the rotation runs: the plays, the restarts and on which machine each changed
# something (which one is being rolled), failures.
PROGRESS = ("PLAY [", "RUNNING HANDLER [", "changed:", "fatal:", "failed:")


class RotationError(RuntimeError):
    """The rotation cannot start, or did not renew everything; the message says which and what to do."""


def leaves(pki: Path) -> dict[str, tuple[int, bytes]]:
    """Every leaf certificate (not a CA) in the cluster's PKI directory: name -> (serial, public key DER)."""
    found = {}
    for path in sorted(pki.glob("*.crt")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        try:
            if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                continue
        except x509.ExtensionNotFound:
            pass
        found[path.stem] = (cert.serial_number, cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return found


def plan(pki: Path, machines: list[dict]) -> list[str]:
    """What a rotation would do, in order (for --dry-run)."""
    def named(role: str) -> str:
        return ", ".join(m["name"] for m in machines if role in m["roles"]) or "none"

    names = sorted(leaves(pki))
    return [f"re-issue {len(names)} leaf certificates in {pki} with new keys (the 3 CAs stay): {', '.join(names)}",
            f"etcd members one at a time (new certificates, read at each new connection: no restart): {named('etcd')}",
            f"load balancers one at a time (haproxy reloaded with the new health-check certificate): {named('lb')}",
            (f"masters one at a time (API server drained on every load balancer, restarted, UP again; then the "
             f"controller-manager and scheduler): {named('master')}" if named("lb") != "none" else
             f"the master's API server, controller-manager and scheduler (no load balancer: the API does not answer "
             f"while its only server restarts): {named('master')}"),
            f"nodes one at a time (kubelet, which then renews its client certificate through a CSR; kube-proxy): "
            f"{', '.join(m['name'] for m in machines if {'master', 'worker'} & set(m['roles']))}",
            "the admin kubeconfig is rewritten; the CA stays, so copies of the old one work until they expire"]


@dataclass
class RotationResult:
    renewed: list[str]
    seconds: float  # the playbook run
    loop: drill.LoopStats  # requests through the load balancer while it ran
    kubelet_csrs: dict[str, str] = field(default_factory=dict)  # node -> its approved, issued CSR

    def render(self) -> str:
        return "\n".join([
            f"renewed {len(self.renewed)} leaf certificates with new keys; components rolled in {self.seconds:.0f}s",
            f"requests through the load balancer meanwhile: {self.loop.sent} sent, {self.loop.failed} failed; "
            f"longest gap between answers {self.loop.longest_gap:.1f}s",
            "kubelet client certificates renewed through approved CSRs: "
            + ", ".join(f"{n} ({c})" for n, c in sorted(self.kubelet_csrs.items())),
            *(f"  failed: {f}" for f in self.loop.failures)])


def kubelet_csrs(client: drill.ApiClient, nodes: list[str], since: float) -> dict[str, str]:
    """node -> name of a kubelet client CSR it created after `since` (epoch seconds) that was approved and
    issued."""
    code, answer = client.request("GET", "/apis/certificates.k8s.io/v1/certificatesigningrequests")
    if code != 200:
        raise RotationError(f"listing CSRs answered HTTP {code}")
    found = {}
    for csr in answer["items"]:
        spec, state = csr["spec"], csr.get("status", {})
        created = datetime.datetime.strptime(csr["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        node = spec.get("username", "").removeprefix("system:node:")
        approved = any(c["type"] == "Approved" and c["status"] == "True" for c in state.get("conditions", []))
        if (spec.get("signerName") == KUBELET_SIGNER and node in nodes and created >= since - 1 and approved
                and state.get("certificate")):
            found[node] = csr["metadata"]["name"]
    return found


def rotate(cluster: etcd.ClusterAccess, machines: list[dict], log: Callable[[str], None] = print,
           csr_timeout: float = 120.0) -> RotationResult:
    """Rotate every leaf certificate of a running, healthy cluster; RotationError when it is not healthy first
    or when a certificate came out unchanged."""
    log("checking the cluster is healthy before the rotation")
    before = leaves(cluster.pki)
    # An expired leaf is what a rotation fixes; anything else wrong would be made worse by rolling restarts.
    renewable = {f"certificate {name}.crt has expired" for name in before}
    problems = [p for p in status.collect(machines, cluster.ssh_private_key, cluster.kubeconfig).problems
                if p not in renewable]
    if problems:
        raise RotationError("the cluster is not healthy, and rolling its components now could take down what still "
                            "works: " + "; ".join(problems) + ". Fix that first (`invoke status`).")
    client = drill.ApiClient(cluster.kubeconfig)
    loop = drill.RequestLoop(client)
    started_wall = time.time()
    stop = threading.Event()
    follower = threading.Thread(target=playbook.follow_runs, daemon=True,
                                args=(cluster.dir / "logs" / "runs", "*/stdout", started_wall, stop, log, PROGRESS))
    log(f"renewing {len(before)} leaf certificates with new keys and rolling the components one machine at a time; "
        "a request loop runs through the load balancer meanwhile")
    loop.start()
    follower.start()
    try:
        result = playbook.run_playbook(cluster.inventory, {**cluster.extravars, "pki_rekey": True,
                                                           "pilothouse_rolling": True},
                                       cluster.ssh_private_key, cluster.dir / "logs")
    finally:
        stop.set()
        follower.join()
        stats = loop.stop()
    after = leaves(cluster.pki)
    kept = [n for n in before if n in after and (after[n][0] == before[n][0] or after[n][1] == before[n][1])]
    if kept:
        raise RotationError(f"not renewed (same serial or key): {', '.join(kept)}; see {result.log}")
    nodes = list(cluster.inventory["all"]["children"]["kube_node"]["hosts"])
    log("waiting for every kubelet's CSR for its own client certificate to be approved and issued")
    deadline = time.monotonic() + csr_timeout
    while len(csrs := kubelet_csrs(client, nodes, started_wall)) < len(nodes):
        if time.monotonic() > deadline:
            raise RotationError(f"no approved CSR from {', '.join(sorted(set(nodes) - set(csrs)))} within "
                                f"{csr_timeout:.0f}s: `kubectl get csr` and the controller-manager's log say why")
        time.sleep(2)
    drill.wait_healthy(machines, cluster.ssh_private_key, cluster.kubeconfig, 300, log)
    return RotationResult(sorted(after), result.seconds, stats, csrs)
