"""Failure drills an operator runs against a live cluster: `invoke drill <name>`.

Each drill pulls the plug on one machine (a power loss: every process killed at once) while a bounded request
loop (create, get, delete a ConfigMap, 5 per second, a new TLS connection each, through the load balancer with
the admin credentials) runs, and measures what a client saw: requests sent and failed, the longest time
without a successful answer, and how long the cluster took to notice (the role the victim held moving to
another machine); then it brings the machine back (`pulumi up --refresh`) and waits until the cluster is
healthy again, timing that too. The drills differ in the victim:

    master       the master holding the kube-controller-manager lease (the lease moves)
    etcd-leader  the machine of the etcd leader (another member is elected)
    lb           the load balancer holding the API's virtual address (keepalived moves it)
    worker       the worker running the most pods (the node controller marks it NotReady)
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

import paramiko
import yaml

from infra import status

LEASE = "kube-controller-manager"
NAMESPACE = "default"
# What a command on a machine raises when the machine (or its sshd) is down.
SSH_ERRORS = (OSError, subprocess.SubprocessError, paramiko.SSHException)


class DrillError(RuntimeError):
    """The drill cannot start or the cluster did not recover; the message says which and what to look at."""


class ApiClient:
    """Plain HTTPS requests to the API with the admin kubeconfig's server and credentials, a new connection for
    each request (as a client that just started would make), and a timeout per request."""

    def __init__(self, kubeconfig: str, timeout: float = 10.0):
        config = yaml.safe_load(open(kubeconfig))
        cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
        url = urllib.parse.urlsplit(cluster["server"])
        self.host, self.port, self.timeout = url.hostname, url.port or 443, timeout
        self.context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        # ssl loads a client certificate from files only; they live just long enough to be read.
        with tempfile.TemporaryDirectory(prefix="pilothouse-drill-") as tmp:
            cert, key = os.path.join(tmp, "client.crt"), os.path.join(tmp, "client.key")
            for path, data in ((cert, user["client-certificate-data"]), (key, user["client-key-data"])):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                    f.write(base64.b64decode(data))
            self.context.load_cert_chain(cert, key)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json", "Accept": "application/json"})
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else {}
        finally:
            conn.close()

    def lease_holder(self, name: str = LEASE) -> str:
        code, lease = self.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}")
        if code != 200:
            raise DrillError(f"reading lease {name} answered HTTP {code}")
        return (lease["spec"].get("holderIdentity") or "").split("_")[0]


@dataclass
class LoopStats:
    sent: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # the first few, with when they happened
    longest_gap: float = 0.0  # seconds between two successful answers, the most it was
    gap_ended_at: float = 0.0  # seconds into the loop when that gap ended


class RequestLoop(threading.Thread):
    """create -> get -> delete of one ConfigMap after another, one request every 1/rate s, until stopped."""

    def __init__(self, client: ApiClient, rate: float = 5.0):
        super().__init__(daemon=True)
        self.client, self.interval = client, 1.0 / rate
        self.run_id = f"{int(time.time())}"
        self.prefix = f"pilothouse-drill-{self.run_id}"
        self.stats = LoopStats()
        self.stop_event = threading.Event()
        self.started_at = 0.0

    def _one(self, step: int) -> None:
        name = f"{self.prefix}-{step // 3}"
        base = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
        method, path, body, ok = [
            ("POST", base, {"apiVersion": "v1", "kind": "ConfigMap", "data": {"step": str(step)},
                            "metadata": {"name": name, "labels": {"pilothouse-drill": self.run_id}}}, 201),
            ("GET", f"{base}/{name}", None, 200),
            ("DELETE", f"{base}/{name}", None, 200),
        ][step % 3]
        code, answer = self.client.request(method, path, body)
        if code != ok:
            raise DrillError(f"{method} {name}: HTTP {code} {answer.get('message', '')}")

    def run(self) -> None:
        self.started_at = last_ok = time.monotonic()
        step = 0
        while not self.stop_event.is_set():
            began = time.monotonic()
            self.stats.sent += 1
            try:
                self._one(step)
                now = time.monotonic()
                if now - last_ok > self.stats.longest_gap:
                    self.stats.longest_gap, self.stats.gap_ended_at = now - last_ok, now - self.started_at
                last_ok = now
            except (OSError, http.client.HTTPException, DrillError, ValueError) as exc:
                self.stats.failed += 1
                if len(self.stats.failures) < 10:
                    self.stats.failures.append(f"+{began - self.started_at:.1f}s {exc.__class__.__name__}: {exc}")
            step += 1
            self.stop_event.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self) -> LoopStats:
        self.stop_event.set()
        self.join(timeout=30)
        # A create whose delete failed leaves its ConfigMap behind.
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            self.client.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/configmaps"
                                          f"?labelSelector=pilothouse-drill%3D{self.run_id}")
        return self.stats


@dataclass
class DrillResult:
    drill: str
    victim: str
    held: str  # what the victim held, for the report: "the kube-controller-manager lease"
    new_holder: str  # who holds it now; for the worker drill, the node's new condition
    loop: LoopStats
    failover_seconds: float  # from the kill until the cluster noticed (see the drill's `moved`)
    down_seconds: float  # from the kill until the bring-back started
    recovery_seconds: float  # from the bring-back until the cluster was healthy

    def render(self) -> str:
        noticed = (f"node marked {self.new_holder} after {self.failover_seconds:.1f}s" if self.drill == "worker"
                   else f"{self.held.removeprefix('the ')} moved to {self.new_holder} in {self.failover_seconds:.1f}s")
        lines = [f"killed {self.victim} ({'it held ' if self.drill != 'worker' else 'it ran '}{self.held})",
                 noticed,
                 f"requests through the load balancer: {self.loop.sent} sent, {self.loop.failed} failed; longest "
                 f"gap between answers {self.loop.longest_gap:.1f}s (ended {self.loop.gap_ended_at:.0f}s in)",
                 f"machine back and cluster healthy {self.recovery_seconds:.0f}s after `pulumi up --refresh` began"]
        lines += [f"  failed: {f}" for f in self.loop.failures]
        return "\n".join(lines)


@dataclass
class Context:
    machines: list[dict]
    ssh_key: str
    client: ApiClient  # short timeouts, for polling while the victim is down

    def named(self, role: str) -> list[dict]:
        return [m for m in self.machines if role in m["roles"]]

    def ssh(self, machine: dict, command: str) -> str:
        return status._ssh(machine, self.ssh_key, command, timeout=5)


def _etcd_statuses(ctx: Context, members: list[dict], cluster: bool) -> list[dict]:
    """`etcdctl endpoint status` as JSON, from each of `members` (its own endpoint), or the whole cluster as
    the first one that answers sees it; members that do not answer are left out."""
    found = []
    for machine in members:
        try:
            raw = ctx.ssh(machine, "etcdctl-pilothouse endpoint status -w json" + (" --cluster" if cluster else ""))
            found += [{**s, "machine": machine["name"]} for s in json.loads(raw)]
        except (*SSH_ERRORS, ValueError):
            continue
        if cluster:
            break
    return found


def _master_pick(ctx: Context) -> tuple[str, str]:
    victim = ctx.client.lease_holder()
    if victim not in {m["name"] for m in ctx.named("master")}:
        raise DrillError(f"the {LEASE} lease is held by {victim!r}, not a master")
    return victim, f"the {LEASE} lease"


def _master_moved(ctx: Context, victim: str) -> str:
    holder = ctx.client.lease_holder()
    return holder if holder != victim else ""


def _etcd_pick(ctx: Context) -> tuple[str, str]:
    members = ctx.named("etcd")
    by_address = {m["address"]: m["name"] for m in members}
    for s in _etcd_statuses(ctx, members, cluster=True):
        if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
            address = urllib.parse.urlsplit(s["Endpoint"]).hostname
            return by_address[address], "the etcd leadership"
    raise DrillError("no etcd member says it is the leader: check `invoke status`")


def _etcd_moved(ctx: Context, victim: str) -> str:
    survivors = [m for m in ctx.named("etcd") if m["name"] != victim]
    for s in _etcd_statuses(ctx, survivors, cluster=False):
        if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
            return s["machine"]
    return ""


def _vip_holder(ctx: Context, lbs: list[dict]) -> str:
    vip = ctx.client.host
    for machine in lbs:
        try:
            if f" {vip}/" in ctx.ssh(machine, "ip -o -4 addr show"):
                return machine["name"]
        except SSH_ERRORS:
            continue
    return ""


def _lb_pick(ctx: Context) -> tuple[str, str]:
    victim = _vip_holder(ctx, ctx.named("lb"))
    if not victim:
        raise DrillError(f"no load balancer holds the API address {ctx.client.host}: check keepalived there")
    return victim, f"the virtual address {ctx.client.host}"


def _lb_moved(ctx: Context, victim: str) -> str:
    return _vip_holder(ctx, [m for m in ctx.named("lb") if m["name"] != victim])


def _worker_pick(ctx: Context) -> tuple[str, str]:
    workers = [m["name"] for m in ctx.named("worker")]
    code, pods = ctx.client.request("GET", "/api/v1/pods?fieldSelector=status.phase%3DRunning")
    if code != 200:
        raise DrillError(f"listing pods answered HTTP {code}")
    running = {w: 0 for w in workers}
    for pod in pods["items"]:
        if pod["spec"].get("nodeName") in running:
            running[pod["spec"]["nodeName"]] += 1
    victim = max(workers, key=lambda w: running[w])
    return victim, f"{running[victim]} running pods"


def _worker_moved(ctx: Context, victim: str) -> str:
    code, node = ctx.client.request("GET", f"/api/v1/nodes/{victim}")
    ready = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"] if code == 200 else []
    return "NotReady" if ready and ready[0]["status"] != "True" else ""


# name -> (the role whose machines it needs, how many at least, why)
NEEDS = {
    "master": ("master", 2, "behind a load balancer, or killing one takes the API down by design"),
    "etcd-leader": ("etcd", 3, "(etcd members), or losing one loses quorum by design"),
    "lb": ("lb", 2, "sharing a virtual address, or killing one takes the API down by design"),
    "worker": ("worker", 2, "so the pods have somewhere to go"),
}
# name -> (pick the victim and say what it holds, who holds that now: "" until the cluster has noticed)
DRILLS: dict[str, tuple[Callable[[Context], tuple[str, str]], Callable[[Context, str], str]]] = {
    "master": (_master_pick, _master_moved),
    "etcd-leader": (_etcd_pick, _etcd_moved),
    "lb": (_lb_pick, _lb_moved),
    "worker": (_worker_pick, _worker_moved),
}


def wait_healthy(machines: list[dict], ssh_key: str, kubeconfig: str, timeout: float,
                 log: Callable[[str], None]) -> status.Report:
    """Until `invoke status` would say healthy (every service active, one etcd leader and every member answering,
    leases held, nodes Ready); DrillError with what is still wrong after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        report = status.collect(machines, ssh_key, kubeconfig)
        if report.healthy:
            return report
        if time.monotonic() > deadline:
            raise DrillError("the cluster did not recover: " + "; ".join(report.problems))
        log(f"  waiting: {report.problems[0]}" + (f" (+{len(report.problems) - 1} more)"
                                                     if len(report.problems) > 1 else ""))
        time.sleep(5)


def run(name: str, machines: list[dict], ssh_key: str, kubeconfig: str, kill: Callable[[str], None],
        bring_back: Callable[[], None], log: Callable[[str], None] = print, settle: float = 20.0,
        timeout: float = 600.0, notice_timeout: float = 180.0) -> DrillResult:
    """Drill `name` (a key of DRILLS). `machines` are the stack's (name, roles, address); `kill` pulls the plug
    on a machine; `bring_back` runs `pulumi up --refresh` on the stack. The request loop runs from before the
    kill until the cluster is healthy again, so the machine's return is measured too."""
    if name not in DRILLS:
        raise DrillError(f"unknown drill {name!r}; available: {', '.join(DRILLS)}")
    role, least, why = NEEDS[name]
    have = sum(role in m["roles"] for m in machines)
    if have < least:
        raise DrillError(f"the {name} drill needs {least} or more {role} machines {why}; this cluster has {have}")
    pick, moved = DRILLS[name]
    log("checking the cluster is healthy before the drill")
    before = status.collect(machines, ssh_key, kubeconfig)
    if not before.healthy:
        raise DrillError("the cluster is not healthy before the drill, so the drill would measure that instead: "
                         + "; ".join(before.problems))
    ctx = Context(machines, ssh_key, ApiClient(kubeconfig, timeout=5))
    victim, held = pick(ctx)
    loop = RequestLoop(ApiClient(kubeconfig))
    loop.start()
    time.sleep(settle / 4)  # a few rounds before the kill, so a broken loop shows up as a failure before it
    log(f"pulling the plug on {victim} ({held}); requests keep going through the load balancer")
    kill(victim)
    killed = time.monotonic()
    new_holder = ""
    while time.monotonic() - killed < notice_timeout:
        try:
            new_holder = moved(ctx, victim)
        except (OSError, http.client.HTTPException, DrillError, ValueError, KeyError):
            new_holder = ""
        if new_holder:
            break
        time.sleep(0.5)
    failover = time.monotonic() - killed
    if not new_holder:
        loop.stop()
        raise DrillError(f"{notice_timeout:.0f} s after {victim} died the cluster had not noticed ({held} did not "
                         "move); it stays down: bring it back with `invoke up --refresh`")
    log(f"{held} -> {new_holder} after {failover:.1f}s")
    time.sleep(max(0.0, settle - (time.monotonic() - killed)))
    log(f"bringing {victim} back (pulumi up --refresh)")
    back = time.monotonic()
    try:
        bring_back()
        wait_healthy(machines, ssh_key, kubeconfig, timeout, log)
    finally:
        stats = loop.stop()
    return DrillResult(name, victim, held, new_holder, stats, failover, back - killed, time.monotonic() - back)
