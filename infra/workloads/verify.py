"""Check on a live cluster that each sample workload behaves as the notes say: the harness and verify().

The checks themselves are in checks_pods.py (namespaces, pods, controllers, jobs, statefulsets) and
checks_services.py (services, ingress, volumes, config); each registers itself with @check when the package
(infra/workloads/__init__.py) imports them.

Verifying CHANGES the cluster; run it on a cluster whose samples may be disturbed:
- it starts a busybox client pod `pilothouse-verify-<time>` (label pilothouse=verify) in `default` and in
  `kubia` for in-cluster DNS and HTTP, and deletes them when it ends (without waiting);
- W02/W11 delete one pod of ReplicaSet nginx (default) and of ReplicaSet kubia (kubia);
- W57 rolls deployment kubia (kubia-deploy) to luksa/kubia:v2, undoes that, pauses it, sets v4, resumes,
  then sets v1 again: four rollouts, each a new revision in its history;
- W58 writes web-0's host name into its page on claim www-web-0 and deletes pod web-0 (web);
- W61 POSTs a note to kubia-0, which keeps it on its volume, and deletes pod kubia-0 (kubia-sts);
- F07 removes /var/ready in one kubia-readiness pod, taking it out of the endpoints, then restores it;
- W29 writes /cache/verify in test-pd's emptyDir; W30 writes /test-pd/verify on the node's hostPath /data (host-volumes).
Everything else only reads, execs read-only commands, requests pages or port-forwards.
"""
from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from infra.kube import Kubectl, KubectlError


@dataclass(frozen=True)
class CheckResult:
    workload: str
    ok: bool
    reason: str


class CheckFailed(Exception):
    pass


# Checks that take 15-40 s on a fresh cluster (bench_cluster prints the slowest).
SLOW_LANES = ("W13", "W14", "W15", "W57", "W58", "W60")
BUSYBOX = "busybox:1.36"        # nslookup and wget
WGET = "wget -T 10 -q -O-"        # each in-cluster request bounded to 10 s
HELLO_KUBIA = "You've hit "


def eventually(fn: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    """fn() until it stops raising CheckFailed, at most timeout seconds; the last failure otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (CheckFailed, KubectlError) as e:
            if time.monotonic() > deadline:
                raise CheckFailed(str(e) if isinstance(e, CheckFailed) else _proc_error(e)) from e
        time.sleep(interval)


def _proc_error(e: KubectlError) -> str:
    """One line for a check's result: the command's last three words and kubectl's last line."""
    out = (e.stderr or e.stdout or "").strip().splitlines()
    return f"{' '.join(e.cmd[-3:])!s}: {out[-1] if out else 'exit ' + str(e.returncode)}"


def expect(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


class Probe(Kubectl):
    """kubectl for the checks, plus throwaway client pods for requests from inside the cluster."""

    def __init__(self, kubeconfig: str, ingress_address: Optional[str] = None, binary: Optional[str] = None):
        super().__init__(kubeconfig, binary)
        self.ingress_address = ingress_address
        self.clients: dict[str, tuple[str, str]] = {}
        self._client_lock = threading.Lock()     # checks run on several threads; one client pod per namespace

    def pod(self, ns: str, name: str) -> dict:
        return self.json("get", "pod", "-n", ns, name)

    def pods(self, ns: str, selector: str) -> list[dict]:
        return self.json("get", "pods", "-n", ns, "-l", selector)["items"]

    def wait_ready(self, ns: str, target: str, timeout: int = 120) -> None:
        self.run("wait", "-n", ns, "--for=condition=Ready", target, f"--timeout={timeout}s", timeout=timeout + 10)

    def exec(self, ns: str, pod: str, command: str, container: Optional[str] = None, timeout: float = 30) -> str:
        args = ["exec", "-n", ns, pod] + (["-c", container] if container else []) + ["--", "sh", "-c", command]
        return self.run(*args, timeout=timeout)

    def logs(self, ns: str, target: str, container: Optional[str] = None) -> str:
        return self.run("logs", "-n", ns, target, *(["-c", container] if container else []))

    def client(self, ns: str = "default") -> tuple[str, str]:
        """A busybox pod in ns (made on first use) for DNS lookups and HTTP from inside the cluster."""
        with self._client_lock:
            return self._client(ns)

    def _client(self, ns: str) -> tuple[str, str]:
        if ns not in self.clients:
            name = f"pilothouse-verify-{int(time.time())}"
            self.run("run", name, "-n", ns, f"--image={BUSYBOX}", "--restart=Never", "--labels=pilothouse=verify",
                     "--command", "--", "sleep", "1800")
            self.clients[ns] = (ns, name)
            self.wait_ready(ns, f"pod/{name}", 120)
        return self.clients[ns]

    def sh(self, command: str, ns: str = "default", timeout: float = 30) -> str:
        cns, name = self.client(ns)
        return self.exec(cns, name, command, timeout=timeout)

    def wget(self, url: str, ns: str = "default") -> str:
        return self.sh(f"{WGET} {url}", ns)

    @contextlib.contextmanager
    def port_forward(self, ns: str, target: str, port: int, timeout: float = 20) -> Iterator[int]:
        """A loopback port on this host forwarded to target's port (pod IPs are not routed to the host)."""
        proc = subprocess.Popen(self.command + ["port-forward", "--address=127.0.0.1", "-n", ns, target, f":{port}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + timeout
            line = ""
            while time.monotonic() < deadline and proc.poll() is None:
                line = proc.stdout.readline()      # "Forwarding from 127.0.0.1:41234 -> 443"
                found = re.search(r"127\.0\.0\.1:(\d+) ->", line)
                if found:
                    yield int(found.group(1))
                    return
            raise CheckFailed(f"port-forward {ns}/{target}:{port} did not start: {line or proc.stderr.read()[-200:]}")
        finally:
            proc.kill()
            proc.wait(timeout=10)

    def cleanup(self) -> None:
        for ns, name in self.clients.values():
            self.run("delete", "pod", "-n", ns, name, "--wait=false", check=False)
        self.clients.clear()

    def node_addresses(self) -> dict[str, str]:
        """node name -> INTERNAL-IP, read from `kubectl get nodes -o wide`."""
        lines = self.run("get", "nodes", "-o", "wide").splitlines()
        header = lines[0].split()
        col = header.index("INTERNAL-IP")
        return {row.split()[0]: row.split()[col] for row in lines[1:] if row.strip()}

    def lb_address(self, ns: str, name: str, timeout: float = 120) -> str:
        def get() -> str:
            ingress = self.json("get", "svc", "-n", ns, name).get("status", {}).get("loadBalancer", {}).get("ingress")
            expect(bool(ingress), f"service {ns}/{name} has no load-balancer address yet")
            return ingress[0].get("ip") or ingress[0]["hostname"]
        return eventually(get, timeout)


def http_get(address: str, port: int, path: str = "/", host: Optional[str] = None, tls: bool = False,
             timeout: float = 5) -> tuple[int, str, Optional[str]]:
    """(status, body, certificate CN) of one request from this host; SNI and Host are `host` when given."""
    sock = socket.create_connection((address, port), timeout=timeout)
    common_name = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE    # the samples' certs are self-signed
        sock = ctx.wrap_socket(sock, server_hostname=host or address)
        from cryptography import x509
        cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
        names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        common_name = names[0].value if names else None
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    conn.sock = sock
    conn.request("GET", path, headers={"Host": host or address})
    response = conn.getresponse()
    body = response.read().decode(errors="replace")
    conn.close()
    return response.status, body, common_name


def host_get(address: str, port: int, **kw: Any) -> tuple[int, str, Optional[str]]:
    try:
        return http_get(address, port, **kw)
    except OSError as e:
        raise CheckFailed(f"{address}:{port}{kw.get('path', '/')}: {e}") from e


# Each check: (workloads it covers, function). A function returns a short success reason or raises.
CHECKS: list[tuple[str, Callable[..., str]]] = []
# Checks that share a lane run one after another (they delete or count the same pods); lanes run
# concurrently. A check without a lane is its own.
LANES: dict[str, str] = {}

def check(workload: str, lane: Optional[str] = None) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def register(fn: Callable[..., str]) -> Callable[..., str]:
        CHECKS.append((workload, fn))
        LANES[workload] = lane or workload
        return fn
    return register


def ready_pod(c: Probe, ns: str, name: str, timeout: int = 120) -> dict:
    c.wait_ready(ns, f"pod/{name}", timeout)
    return c.pod(ns, name)


def resolve(c: Probe, name: str, ns: str = "default") -> set[str]:
    """A records for name as an application in a pod of ns gets them.

    busybox nslookup sends a relative name as-is first and stops at the SERVFAIL CoreDNS returns for
    `kubia.kubia.` (no upstream here), where the libc resolver would first try the pod's search list
    (ndots:5). So the search list from the pod's resolv.conf is walked here, in order, like libc does;
    `|| true` because nslookup also exits 1 over a missing AAAA record.
    """
    conf = c.sh("cat /etc/resolv.conf", ns)
    search = next((line.split()[1:] for line in conf.splitlines() if line.startswith("search")), [])
    ndots = int(next(iter(re.findall(r"ndots:(\d+)", conf)), 1))
    searched = [f"{name}.{domain}." for domain in search]
    if name.endswith("."):
        candidates = [name]
    elif name.count(".") < ndots:
        candidates = searched + [f"{name}."]
    else:
        candidates = [f"{name}."] + searched
    for candidate in candidates:
        found = _a_records(c.sh(f"nslookup {candidate} || true", ns))
        if found:
            return found
    return set()


def _a_records(nslookup_output: str) -> set[str]:
    """Addresses of the answer section (busybox prints the server's address first)."""
    answer = nslookup_output.split("Name:", 1)[-1] if "Name:" in nslookup_output else ""
    return set(re.findall(r"Address(?: \d+)?:\s*(\d+\.\d+\.\d+\.\d+)", answer))


def _run_check(probe: Probe, workload: str, fn: Callable[..., str]) -> tuple[CheckResult, float]:
    started = time.monotonic()
    try:
        result = CheckResult(workload, True, fn(probe))
    except CheckFailed as e:
        result = CheckResult(workload, False, str(e))
    except KubectlError as e:
        result = CheckResult(workload, False, _proc_error(e))
    except subprocess.TimeoutExpired as e:   # e.cmd is the whole command line: name what follows --kubeconfig
        args = e.cmd[len(probe.command):][:3]
        result = CheckResult(workload, False, f"timed out after {e.timeout:.0f}s: {' '.join(map(str, args))}")
    except (KeyError, IndexError, ValueError, TypeError, OSError) as e:
        result = CheckResult(workload, False, f"unexpected state: {type(e).__name__}: {e}")
    return result, time.monotonic() - started


def verify(kubeconfig_path: str, kubectl: Optional[str] = None, ingress_address: Optional[str] = None,
           only: Optional[set[str]] = None, echo: Callable[[str], None] = print,
           workers: int = 8) -> list[CheckResult]:
    """Run every behaviour check (or those whose workload starts with an id in `only`), one line each.
    `kubectl` is a kubectl binary to use instead of the pinned one. It changes the cluster: see the module
    docstring for what it deletes, rolls and writes.

    Lanes run concurrently on `workers` threads (most of a check is waiting on the cluster), so the whole
    run is bounded by the slowest lane, not the sum; results come back in CHECKS order.
    """
    probe = Probe(kubeconfig_path, ingress_address, kubectl)
    selected = [(w, fn) for w, fn in CHECKS if not only or any(w.startswith(i) for i in only)]
    lanes: dict[str, list[tuple[str, Callable[..., str]]]] = {}
    for workload, fn in selected:
        lanes.setdefault(LANES[workload], []).append((workload, fn))
    results: dict[str, CheckResult] = {}
    printing = threading.Lock()

    def run_lane(checks: list[tuple[str, Callable[..., str]]]) -> None:
        for workload, fn in checks:
            result, took = _run_check(probe, workload, fn)
            results[workload] = result
            with printing:
                echo(f"{'PASS' if result.ok else 'FAIL'}  {workload}  ({took:.0f}s)  {result.reason}")
    try:
        # The slowest lanes start first so they do not end up waiting behind short checks: the jobs (perl
        # computing pi), the StatefulSets (web's pods come up one by one, 10 s apart) and the rollouts.
        order = sorted(lanes.values(), key=lambda cs: not any(w.startswith(SLOW_LANES) for w, _ in cs))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(run_lane, checks) for checks in order]:
                future.result()
    finally:
        probe.cleanup()
        probe.close()
    return [results[w] for w, _ in selected]


def covered_samples() -> set[str]:
    """Sample ids that some check names (W13, F07, NS, ...)."""
    return set(re.findall(r"\b(W\d\d|F\d\d|NS)\b", " ".join(w for w, _ in CHECKS)))
