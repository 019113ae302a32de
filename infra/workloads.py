"""The sample workloads from the notes: load and validate the manifests in workloads/, deploy them with
pulumi-kubernetes (Samples), and check on the live cluster that they behave as the notes say (verify).

Apply order is deterministic: by kind stage (namespaces and cluster storage, config and claims, services,
bare pods, controllers, ingresses), then by group directory, file name and position in the file. Services
come before the pods so pods get the <SVC>_SERVICE_HOST variables the notes show; bare pods come before
the controllers so a ReplicaSet adopts the pod made "by hand", as in the notes. Each object is its own
child resource, so removing one manifest and running `pulumi up` removes exactly that object.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import pulumi
import pulumi_kubernetes as k8s
import yaml

# The notes' own grouping; namespaces first because everything else may live in one.
GROUPS = ("namespaces", "pods", "controllers", "jobs", "services", "ingress", "volumes", "config", "statefulsets")

# kind -> (apiVersion served by Kubernetes 1.34, apply stage, namespaced)
KINDS: dict[str, tuple[str, int, bool]] = {
    "Namespace": ("v1", 0, False),
    # Cluster-scoped storage shares the first stage with namespaces: on delete, a PersistentVolume bound to
    # a StatefulSet's claim (which Pulumi does not own) is only released when its namespace goes, so the two
    # must not wait on each other.
    "StorageClass": ("storage.k8s.io/v1", 0, False),
    "PersistentVolume": ("v1", 0, False),
    "ConfigMap": ("v1", 2, True),
    "Secret": ("v1", 2, True),
    "ServiceAccount": ("v1", 2, True),
    "Role": ("rbac.authorization.k8s.io/v1", 2, True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", 2, True),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", 2, False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", 2, False),
    "PersistentVolumeClaim": ("v1", 2, True),
    "Service": ("v1", 3, True),
    "Endpoints": ("v1", 3, True),
    "Pod": ("v1", 4, True),            # before controllers: W63's ReplicaSet adopts W62's pod
    "ReplicationController": ("v1", 5, True),
    "ReplicaSet": ("apps/v1", 5, True),
    "Deployment": ("apps/v1", 5, True),
    "DaemonSet": ("apps/v1", 5, True),
    "StatefulSet": ("apps/v1", 5, True),
    "Job": ("batch/v1", 5, True),
    "CronJob": ("batch/v1", 5, True),
    "Ingress": ("networking.k8s.io/v1", 6, True),
}

# Group versions no longer served by 1.34 that the notes (or their era) use.
REMOVED_API_VERSIONS = {
    "extensions/v1beta1": "1.22 (Ingress) / 1.16 (workloads)",
    "apps/v1beta1": "1.16",
    "apps/v1beta2": "1.16",
    "batch/v1beta1": "1.25",
    "batch/v2alpha1": "1.21",
    "networking.k8s.io/v1beta1": "1.22",
    "rbac.authorization.k8s.io/v1beta1": "1.22",
    "storage.k8s.io/v1beta1": "1.22",
    "policy/v1beta1": "1.25",
}

WORKLOAD_TEMPLATE_KINDS = {"ReplicaSet", "Deployment", "DaemonSet", "StatefulSet", "ReplicationController", "Job"}
SELECTOR_REQUIRED = {"ReplicaSet", "Deployment", "DaemonSet", "StatefulSet"}
SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SAMPLE_ID = re.compile(r"^(W\d\d|F\d\d|NS)-")

# Annotation asking Samples to fill a Secret with key material made at deploy time (never committed).
GENERATE_ANNOTATION = "pilothouse/generate"


class ManifestError(Exception):
    """A manifest file that cannot be deployed; the message names the file and the problem."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int          # position of the document in its file
    obj: dict

    @property
    def sample(self) -> str:
        """The notes' sample id from the file name (W13, F07, NS for our own namespaces)."""
        return SAMPLE_ID.match(self.path.name).group(1)

    @property
    def key(self) -> tuple[str, str, str]:
        return object_key(self.obj)


def object_key(obj: dict) -> tuple[str, str, str]:
    kind = obj["kind"]
    namespaced = KINDS[kind][2]
    namespace = obj["metadata"].get("namespace", "default") if namespaced else ""
    return kind, namespace, obj["metadata"]["name"]


def pod_specs(obj: dict) -> list[dict]:
    """The pod specs an object runs (none for non-workloads)."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind in WORKLOAD_TEMPLATE_KINDS:
        return [((spec.get("template") or {}).get("spec")) or {}]
    if kind == "CronJob":
        job = ((spec.get("jobTemplate") or {}).get("spec")) or {}
        return [((job.get("template") or {}).get("spec")) or {}]
    return []


def images(obj: dict) -> set[str]:
    return {c.get("image") for s in pod_specs(obj)
            for c in (s.get("containers") or []) + (s.get("initContainers") or []) if c.get("image")}


def _label_selector_matches(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op!r}")
    return True


def _check_selector(obj: dict) -> Optional[str]:
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind not in WORKLOAD_TEMPLATE_KINDS:
        return None
    labels = (((spec.get("template") or {}).get("metadata")) or {}).get("labels") or {}
    selector = spec.get("selector")
    if selector is None:
        return f"{kind} needs spec.selector in its apiVersion" if kind in SELECTOR_REQUIRED else None
    if kind == "ReplicationController":   # an RC selector is a plain map
        selector = {"matchLabels": selector}
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return f"{kind} spec.selector is empty or malformed"
    try:
        if not _label_selector_matches(selector, labels):
            return f"{kind} spec.selector {selector} does not match the template labels {labels}"
    except ValueError as e:
        return f"{kind} spec.selector: {e}"
    return None


def _check_pod_spec(spec: dict, obj: dict) -> Optional[str]:
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return "pod spec has no containers list"
    volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    if obj["kind"] == "StatefulSet":
        volumes |= {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates") or []}
    for c in containers:
        if not isinstance(c, dict) or not c.get("name") or not DNS_LABEL.match(str(c["name"])):
            return f"container {c!r:.60} needs a lower-case name"
        if not c.get("image"):
            return f"container {c['name']} has no image"
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                return f"container {c['name']} mounts volume {mount.get('name')!r}, which the pod does not declare"
    if obj["kind"] in ("Job", "CronJob") and spec.get("restartPolicy") not in ("Never", "OnFailure"):
        return "a Job's pods need restartPolicy Never or OnFailure"
    return None


def validate(obj: Any) -> Optional[str]:
    """The first problem with one object, or None."""
    if not isinstance(obj, dict):
        return "document is not a mapping"
    for key in ("apiVersion", "kind", "metadata"):
        if key not in obj:
            return f"missing {key}"
    api, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
    if api in REMOVED_API_VERSIONS:
        served = KINDS.get(kind, ("?",))[0]
        return f"apiVersion {api} was removed in Kubernetes {REMOVED_API_VERSIONS[api]}; {kind} is served at {served}"
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    if api != KINDS[kind][0]:
        return f"{kind} is not served at apiVersion {api!r}; use {KINDS[kind][0]}"
    if not isinstance(meta, dict) or not meta.get("name"):
        return "metadata.name is required"
    if not DNS_SUBDOMAIN.match(str(meta["name"])):
        return f"metadata.name {meta['name']!r} must be a lower-case DNS name"
    for server_field in SERVER_FIELDS:
        if server_field in meta:
            return f"metadata.{server_field} is set by the server; remove it"
    if "status" in obj:
        return "status is set by the server; remove it"
    problem = _check_selector(obj)
    if problem:
        return problem
    for spec in pod_specs(obj):
        problem = _check_pod_spec(spec, obj)
        if problem:
            return problem
    return None


def _files(root: Path) -> Iterator[Path]:
    for group in GROUPS:
        yield from sorted((root / group).glob("*.yaml"))


def load_sources(root: Path) -> list[Manifest]:
    """Every object under root, validated, in apply order. Raises ManifestError naming file and problem."""
    root = Path(root)
    found: list[Manifest] = []
    seen: dict[tuple[str, str, str], Path] = {}
    for path in _files(root):
        if not SAMPLE_ID.match(path.name):
            raise ManifestError(f"{path}: file name must start with the sample id (W01-, F07-, NS-)")
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            raise ManifestError(f"{path}: not valid YAML: {e}") from e
        if not docs:
            raise ManifestError(f"{path}: no objects")
        for index, obj in enumerate(docs):
            problem = validate(obj)
            if problem:
                raise ManifestError(f"{path}: document {index + 1}: {problem}")
            key = object_key(obj)
            if key in seen:
                raise ManifestError(f"{path}: {key[0]} {key[1]}/{key[2]} is also defined in {seen[key]}")
            seen[key] = path
            found.append(Manifest(path, index, obj))
    order = {g: i for i, g in enumerate(GROUPS)}
    found.sort(key=lambda m: (KINDS[m.obj["kind"]][1], order[m.path.parent.name], m.path.name, m.index))
    return found


def load_manifests(root: Path) -> list[dict]:
    """The objects under root, validated, in apply order."""
    return [m.obj for m in load_sources(root)]


# ---------------------------------------------------------------------------------------------------------
# Key material for the Secrets marked with GENERATE_ANNOTATION: made once, kept in keys_dir, reused after.

def _x509(cn: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _ssh_rsa() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _generate(spec: str) -> dict[str, bytes]:
    kind, *pairs = spec.split()
    fields = dict(p.split("=", 1) for p in pairs)
    if kind == "x509":
        cert, key = _x509(fields["cn"])
        return {fields["cert"]: cert, fields["key"]: key}
    if kind == "ssh-rsa":
        private, public = _ssh_rsa()
        out = {fields["private"]: private}
        if "public" in fields:
            out[fields["public"]] = public
        return out
    raise ManifestError(f"unknown {GENERATE_ANNOTATION} kind {kind!r} (x509, ssh-rsa)")


def with_generated_keys(obj: dict, keys_dir: Path) -> dict:
    """A copy of a Secret with its generated data filled in from keys_dir (made there on first use)."""
    spec = (obj["metadata"].get("annotations") or {}).get(GENERATE_ANNOTATION)
    if not spec:
        return obj
    _, namespace, name = object_key(obj)
    folder = Path(keys_dir) / f"{namespace}.{name}"
    stamp = folder / "SPEC"
    if not stamp.exists() or stamp.read_text() != spec:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for field_name, blob in _generate(spec).items():
            (folder / field_name).write_bytes(blob)
            (folder / field_name).chmod(0o600)
        stamp.write_text(spec)
    data = dict(obj.get("data") or {})
    for item in sorted(folder.iterdir()):
        if item.name != "SPEC":
            data[item.name] = base64.b64encode(item.read_bytes()).decode()
    return {**obj, "data": data}


def resource_name(obj: dict) -> str:
    kind, namespace, name = object_key(obj)
    return "-".join(p for p in (kind.lower(), namespace, name) if p)


# ---------------------------------------------------------------------------------------------------------
# Deployment with pulumi-kubernetes.

@dataclass
class SamplesArgs:
    kubeconfig: Any                       # pulumi.Input[str], a secret Output: the cluster's admin kubeconfig
    manifests_dir: Path                   # the workloads/ directory
    keys_dir: Path                        # where generated TLS/SSH keys are kept between runs (outside git)
    node_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)   # e.g. {"w1": {"disk": "ssd"}}
    external_ip: Optional[str] = None     # replaces W04's lab address 192.168.0.30 when given


def kubeconfig_content(path: Any) -> pulumi.Output[str]:
    """The admin kubeconfig's text, as a secret, from the path program.Cluster exports (read once it exists)."""
    return pulumi.Output.secret(pulumi.Output.from_input(path).apply(lambda p: Path(p).read_text()))


def default_node_labels(workers: list[str]) -> dict[str, dict[str, str]]:
    """The node labels the samples select on: W12's disk=ssd and W08's test=true on the first worker only,
    so the DaemonSet check can tell "exactly the labelled nodes" from "every node"."""
    if not workers:
        raise ValueError("the samples need at least one worker node")
    return {workers[0]: {"disk": "ssd", "test": "true"}}


class Samples(pulumi.ComponentResource):
    """Every sample manifest, one child per object; each apply stage waits for the one before.

    Objects of one stage (e.g. all Services) are applied concurrently, which keeps `up` short; the stage
    order still puts namespaces before their contents and Services before the pods that read their
    <SVC>_SERVICE_HOST variables. Await logic is skipped: several samples are meant to wait (a pod for its
    node label, a claim for its first consumer), and verify() checks behaviour afterwards.
    """

    objects: list[str]

    def __init__(self, name: str, args: SamplesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("pilothouse:workloads:Samples", name, None, opts)
        self.provider = k8s.Provider(f"{name}-provider", kubeconfig=pulumi.Output.secret(args.kubeconfig),
                                     opts=pulumi.ResourceOptions(parent=self))
        previous: list[pulumi.Resource] = []
        for node, labels in sorted(args.node_labels.items()):
            previous.append(k8s.core.v1.NodePatch(
                f"{name}-node-{node}", metadata={"name": node, "labels": dict(labels)},
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider)))
        names: list[str] = []
        stage, current = None, []
        for manifest in load_sources(args.manifests_dir):
            obj = with_generated_keys(manifest.obj, args.keys_dir)
            has_keys = obj is not manifest.obj
            if args.external_ip and obj["kind"] == "Service" and obj["spec"].get("externalIPs"):
                obj = {**obj, "spec": {**obj["spec"], "externalIPs": [args.external_ip]}}
            if KINDS[obj["kind"]][1] != stage:      # load order is stage order
                stage, previous, current = KINDS[obj["kind"]][1], current or previous, []
            child = f"{name}-{resource_name(obj)}"
            current.append(k8s.yaml.v2.ConfigGroup(
                child, objs=[pulumi.Output.secret(obj) if has_keys else obj], skip_await=True,
                opts=pulumi.ResourceOptions(parent=self, providers=[self.provider], depends_on=list(previous))))
            names.append(child)
        self.objects = names
        self.register_outputs({"objects": names})


# ---------------------------------------------------------------------------------------------------------
# Behaviour checks on the live cluster.

@dataclass(frozen=True)
class CheckResult:
    workload: str
    ok: bool
    reason: str


class CheckFailed(Exception):
    pass


BUSYBOX = "busybox:1.36"        # nslookup and wget
# Each in-cluster request bounded by busybox's timeout applet: its wget -T crashes (exit 139) in this build.
WGET = "timeout 10 wget -q -O-"
HELLO_KUBIA = "You've hit "


def _eventually(fn: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    """fn() until it stops raising CheckFailed, at most timeout seconds; the last failure otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (CheckFailed, subprocess.CalledProcessError) as e:
            if time.monotonic() > deadline:
                raise CheckFailed(str(e) if isinstance(e, CheckFailed) else _proc_error(e)) from e
        time.sleep(interval)


def _proc_error(e: subprocess.CalledProcessError) -> str:
    out = (e.stderr or e.stdout or "").strip().splitlines()
    return f"{' '.join(e.cmd[-3:])!s}: {out[-1] if out else 'exit ' + str(e.returncode)}"


def expect(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


class Cluster:
    """kubectl against one kubeconfig, plus throwaway client pods for in-cluster requests."""

    def __init__(self, kubectl: str, kubeconfig: str, ingress_address: Optional[str] = None):
        self.base = [str(kubectl), f"--kubeconfig={kubeconfig}"]
        self.ingress_address = ingress_address
        self.clients: dict[str, tuple[str, str]] = {}
        self._client_lock = threading.Lock()     # checks run on several threads; one client pod per namespace

    def run(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        done = subprocess.run(self.base + list(args), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, list(args), done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args, "-o", "json"))

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
        proc = subprocess.Popen(self.base + ["port-forward", "--address=127.0.0.1", "-n", ns, target, f":{port}"],
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
        return _eventually(get, timeout)


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


def _host_get(address: str, port: int, **kw: Any) -> tuple[int, str, Optional[str]]:
    try:
        return http_get(address, port, **kw)
    except OSError as e:
        raise CheckFailed(f"{address}:{port}{kw.get('path', '/')}: {e}") from e


# Each check: (workloads it covers, function). A function returns a short success reason or raises.
CHECKS: list[tuple[str, Callable[..., str]]] = []
# Checks that share a lane run one after another (they delete or count the same pods); lanes run
# concurrently. A check without a lane is its own.
LANES: dict[str, str] = {}

# Checks that cannot pass without an add-on of infra/addons.py, and which one.
NEEDS_ADDON: dict[str, str] = {
    "W17": "MetalLB (LoadBalancer address)",
    "W24": "MetalLB (LoadBalancer address)",
    "W55": "MetalLB (LoadBalancer address)",
    "W25": "Traefik (ingress class traefik)",
    "W32": "local-path (default StorageClass for the claim)",
    "W58": "local-path (volumeClaimTemplates)",
    "W60": "local-path (volumeClaimTemplates)",
}


def needs_addon(workload: str) -> Optional[str]:
    """The add-on a check (named by its workload line) depends on, or None."""
    return NEEDS_ADDON.get(workload.split("+", 1)[0].split()[0])


def check(workload: str, lane: Optional[str] = None) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def register(fn: Callable[..., str]) -> Callable[..., str]:
        CHECKS.append((workload, fn))
        LANES[workload] = lane or workload
        return fn
    return register


def _ready_pod(c: Cluster, ns: str, name: str, timeout: int = 120) -> dict:
    c.wait_ready(ns, f"pod/{name}", timeout)
    return c.pod(ns, name)


def _succeeded(c: Cluster, ns: str, name: str, timeout: float = 120) -> None:
    def done() -> None:
        phase = c.pod(ns, name)["status"].get("phase")
        expect(phase == "Succeeded", f"pod {name} is {phase}, not Succeeded")
    _eventually(done, timeout)


@check("NS namespaces")
def _namespaces(c: Cluster) -> str:
    names = [m.obj["metadata"]["name"] for m in load_sources(Path(__file__).parent.parent / "workloads")
             if m.obj["kind"] == "Namespace"]
    for ns in names:
        phase = c.json("get", "ns", ns)["status"]["phase"]
        expect(phase == "Active", f"namespace {ns} is {phase}")
    return f"{len(names)} namespaces Active"


@check("W10 namespace/custom-namespace")
def _w10(c: Cluster) -> str:
    expect(c.json("get", "ns", "custom-namespace")["status"]["phase"] == "Active", "custom-namespace not Active")
    return "Active"


@check("W01 pod/nginx")
def _w01(c: Cluster) -> str:
    ip = _ready_pod(c, "default", "nginx")["status"]["podIP"]
    expect("Welcome to nginx!" in c.wget(f"http://{ip}/"), "no nginx welcome page on :80")
    return f"serves the welcome page at {ip}:80"


@check("W02 replicaset/nginx", lane="default-rs")
def _w02(c: Cluster) -> str:
    return _replaced(c, "default", "tier=backend", 3)


@check("W11 replicaset/kubia", lane="kubia")
def _w11(c: Cluster) -> str:
    return _replaced(c, "kubia", "app=kubia", 3)


def _replaced(c: Cluster, ns: str, selector: str, replicas: int) -> str:
    """Delete one pod of a ReplicaSet; a new one takes its place."""
    def ready_names() -> set[str]:
        pods = c.pods(ns, selector)
        ready = {p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp") is None and any(
            cond["type"] == "Ready" and cond["status"] == "True" for cond in p["status"].get("conditions", []))}
        expect(len(ready) == replicas, f"{len(ready)} of {replicas} pods ready ({selector})")
        return ready
    before = _eventually(ready_names, 120)
    victim = sorted(before)[0]
    c.run("delete", "pod", "-n", ns, victim, "--wait=false")

    def replaced() -> set[str]:
        now = ready_names()
        expect(victim not in now and len(now - before) == 1, f"{victim} not replaced yet")
        return now
    after = _eventually(replaced, 120)
    return f"deleted {victim}; {replicas} ready again with {sorted(after - before)[0]}"


@check("W03 pod/hello-pod")
def _w03(c: Cluster) -> str:
    ip = _ready_pod(c, "default", "hello-pod")["status"]["podIP"]
    for _ in range(3):
        expect("Hello Kubernetes!" in c.wget(f"http://{ip}:8000/"), "no 'Hello Kubernetes!' on :8000")
    restarts = c.pod("default", "hello-pod")["status"]["containerStatuses"][0]["restartCount"]
    expect(restarts == 0, f"container restarted {restarts} times after requests")
    return "answers 'Hello Kubernetes!' three times, no restarts"


@check("W04 service/hello-svc")
def _w04(c: Cluster) -> str:
    svc = c.json("get", "svc", "hello-svc")
    external = svc["spec"]["externalIPs"][0]
    for url in ("http://hello-svc:8200/", f"http://{external}:8200/"):
        expect("Hello Kubernetes!" in c.wget(url), f"{url} did not answer 'Hello Kubernetes!'")
    return f"answers on hello-svc:8200 and externalIP {external}:8200 (from a pod)"


@check("W05 deployment/lines-admin-nextjs-deployment")
def _w05(c: Cluster) -> str:
    c.run("rollout", "status", "deploy/lines-admin-nextjs-deployment", "--timeout=180s", timeout=200)
    ready = c.json("get", "deploy", "lines-admin-nextjs-deployment")["status"].get("readyReplicas", 0)
    expect(ready == 2, f"{ready} of 2 replicas ready")
    return "rolled out, 2 ready replicas"


@check("W06 pod/lines-admin-nextjs")
def _w06(c: Cluster) -> str:
    ip = _ready_pod(c, "default", "lines-admin-nextjs")["status"]["podIP"]
    expect(c.wget(f"http://{ip}:8080/").strip() == "ok", "nothing answers 'ok' on :8080")
    return "httpd answers on :8080"


@check("W07 pod/lines-sample")
def _w07(c: Cluster) -> str:
    ip = _ready_pod(c, "default", "lines-sample")["status"]["podIP"]
    selected = c.run("get", "pods", "-l", "creation_method=manual,env=prod", "-o", "name").split()
    expect("pod/lines-sample" in selected, "label selector creation_method=manual,env=prod misses it")
    expect(HELLO_KUBIA + "lines-sample" in c.wget(f"http://{ip}:8080/"), "kubia app does not answer")
    return "selected by its labels and answers \"You've hit lines-sample\""


@check("W08 pod/hello-world")
def _w08(c: Cluster) -> str:
    node = _ready_pod(c, "default", "hello-world")["spec"]["nodeName"]
    labels = c.json("get", "node", node)["metadata"]["labels"]
    expect(labels.get("test") == "true", f"runs on {node}, which lacks test=true")
    return f"scheduled on {node}, labelled test=true"


@check("W12 daemonset/ssd-monitor")
def _w12(c: Cluster) -> str:
    nodes = c.json("get", "nodes", "-l", "disk=ssd")["items"]
    expected = {n["metadata"]["name"] for n in nodes if n["spec"].get("unschedulable") is not True and not any(
        t.get("effect") in ("NoSchedule", "NoExecute") for t in n["spec"].get("taints") or [])}
    expect(bool(expected), "no schedulable node is labelled disk=ssd")

    def placed() -> set[str]:
        pods = [p for p in c.pods("default", "app=ssd-monitor") if p["status"].get("phase") == "Running"]
        on = sorted(p["spec"].get("nodeName") for p in pods)
        expect(sorted(expected) == on, f"pods on {on}, expected one on each of {sorted(expected)}")
        return set(on)
    _eventually(placed, 90)
    expect("SSD OK" in c.logs("default", "daemonset/ssd-monitor"), "no 'SSD OK' in the log")
    return f"one pod on each disk=ssd node ({', '.join(sorted(expected))}), none elsewhere"


def _job_done(c: Cluster, name: str, completions: int, timeout: int) -> None:
    c.run("wait", "--for=condition=complete", f"job/{name}", f"--timeout={timeout}s", timeout=timeout + 10)
    succeeded = c.json("get", "job", name)["status"].get("succeeded", 0)
    expect(succeeded == completions, f"{succeeded} of {completions} completions")


@check("W13 job/pi")
def _w13(c: Cluster) -> str:
    _job_done(c, "pi", 1, 300)
    out = c.logs("default", "job/pi").strip()
    expect(out.startswith("3.14159"), f"log starts {out[:12]!r}, not 3.14159")
    expect(len(out) == 2001, f"{len(out)} characters of pi, expected 2001")
    return "complete; log is 3.14159... (2001 characters)"


@check("W14 job/multi-completion-batch-job")
def _w14(c: Cluster) -> str:
    _job_done(c, "multi-completion-batch-job", 5, 420)
    return "5/5 completions"


@check("W15 job/multi-completion-parallel-batch-job")
def _w15(c: Cluster) -> str:
    _job_done(c, "multi-completion-parallel-batch-job", 5, 420)
    return "5/5 completions (parallelism 2)"


@check("W16 cronjob/hello")
def _w16(c: Cluster) -> str:
    def finished_job() -> str:
        jobs = [j for j in c.json("get", "jobs")["items"]
                if any(o.get("name") == "hello" for o in j["metadata"].get("ownerReferences", []))
                and j["status"].get("succeeded")]
        expect(bool(jobs), "no finished job from cronjob/hello yet")
        return max(jobs, key=lambda j: j["metadata"]["creationTimestamp"])["metadata"]["name"]
    job = _eventually(finished_job, 150, 5)
    out = c.logs("default", f"job/{job}")
    expect("Hello from the Kubernetes cluster" in out, f"job {job} printed {out!r:.80}")
    return f"job {job} printed its date and the greeting"


def _kubia_hosts(c: Cluster, url: str, n: int, ns: str = "default") -> set[str]:
    out = c.sh(f"for i in $(seq {n}); do {WGET} {url}; echo; done", ns, timeout=90)
    return {line.split(HELLO_KUBIA, 1)[1].strip() for line in out.splitlines() if HELLO_KUBIA in line}


def _resolve(c: Cluster, name: str, ns: str = "default") -> set[str]:
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


@check("W18 service/kubia (kubia)", lane="kubia")
def _w18(c: Cluster) -> str:
    cluster_ip = c.json("get", "svc", "-n", "kubia", "kubia")["spec"]["clusterIP"]
    for name, ns in (("kubia", "kubia"), ("kubia.kubia", "default"), ("kubia.kubia.svc.cluster.local", "default")):
        got = _resolve(c, name, ns)
        expect(got == {cluster_ip}, f"{name} from {ns} resolves to {sorted(got)}, not {cluster_ip}")
    hosts = _kubia_hosts(c, "http://kubia.kubia.svc.cluster.local", 20)
    expect(len(hosts) >= 2, f"20 requests all went to {sorted(hosts)}")
    return f"kubia, kubia.kubia and kubia.kubia.svc.cluster.local resolve; 20 requests reached {len(hosts)} pods"


@check("F02 service/kubia-session-affinity (kubia)", lane="kubia")
def _f02(c: Cluster) -> str:
    hosts = _kubia_hosts(c, "http://kubia-session-affinity.kubia", 10)
    expect(len(hosts) == 1, f"ClientIP affinity, yet answers from {sorted(hosts)}")
    return f"10 requests from one client all reached {hosts.pop()}"


@check("W19+F03 pod/lines-sample, service/kubia (kubia-named-ports)")
def _w19(c: Cluster) -> str:
    _ready_pod(c, "kubia-named-ports", "lines-sample")
    ep = c.json("get", "endpoints", "-n", "kubia-named-ports", "kubia")
    ports = {p["name"]: p["port"] for s in ep.get("subsets", []) for p in s.get("ports", [])}
    expect(ports == {"http": 8080, "https": 8443}, f"endpoint ports {ports}, expected http 8080 / https 8443")
    expect(HELLO_KUBIA + "lines-sample" in c.wget("http://kubia.kubia-named-ports/"), "port 80 -> http failed")
    return "service ports resolve to the pod's named ports http:8080 and https:8443"


@check("W20+W21 service+endpoints/external-service")
def _w20(c: Cluster) -> str:
    ep = c.json("get", "endpoints", "external-service")
    ips = sorted(a["ip"] for s in ep.get("subsets", []) for a in s.get("addresses", []))
    expect(ips == ["11.11.11.11", "22.22.22.22"], f"endpoints {ips}")
    expect(bool(_resolve(c, "external-service.default.svc.cluster.local")), "external-service does not resolve")
    return "selector-less service resolves; its endpoints are the two manual addresses"


@check("W22 service/external-service (externalname)")
def _w22(c: Cluster) -> str:
    out = c.sh("nslookup -type=cname external-service.externalname.svc.cluster.local. || true")
    expect("someapi.somecompany.com" in out, f"no CNAME in: {out.strip()[-120:]}")
    return "DNS answers with CNAME someapi.somecompany.com"


@check("W23 service/kubia-nodeport (kubia)", lane="kubia")
def _w23(c: Cluster) -> str:
    nodes = c.node_addresses()
    for node, ip in sorted(nodes.items()):
        status, body, _ = _eventually(lambda: _host_get(ip, 30123), 30)
        expect(status == 200 and HELLO_KUBIA in body, f"{node} {ip}:30123 answered {status}")
    return f"answers on {ip_list(nodes)} port 30123"


def ip_list(nodes: Mapping[str, str]) -> str:
    return ", ".join(f"{n} {ip}" for n, ip in sorted(nodes.items()))


@check("F04 service/kubia-nodeport-local (kubia)", lane="kubia")
def _f04(c: Cluster) -> str:
    nodes = c.node_addresses()
    with_pods = {p["spec"].get("nodeName") for p in c.pods("kubia", "app=kubia")
                 if p["metadata"].get("deletionTimestamp") is None and _ready(p)}
    answered, silent = [], []
    for node, ip in sorted(nodes.items()):
        try:
            status, body, _ = http_get(ip, 30124, timeout=3)
            (answered if status == 200 else silent).append(node)
        except OSError:
            silent.append(node)
    expect(set(answered) == with_pods & set(nodes),
           f"answered on {answered}; nodes with a kubia pod: {sorted(with_pods)}")
    return f"answers only on nodes running a kubia pod ({', '.join(answered)})"


@check("W24 service/kubia-loadbalancer (kubia)", lane="kubia")
def _w24(c: Cluster) -> str:
    ip = c.lb_address("kubia", "kubia-loadbalancer")
    status, body, _ = _eventually(lambda: _host_get(ip, 80), 30)
    expect(HELLO_KUBIA in body, f"{ip}:80 answered {status} {body[:60]!r}")
    return f"got {ip}; it answers \"{body.strip()}\""


@check("W17 service/lines-admin-nextjs-service")
def _w17(c: Cluster) -> str:
    ip = c.lb_address("default", "lines-admin-nextjs-service")
    status, _, _ = _eventually(lambda: _host_get(ip, 3000), 30)
    expect(status == 200, f"{ip}:3000 answered {status}")
    return f"got {ip}; :3000 answers 200"


@check("W55 replicationcontroller/kubia-v1, service/kubia (kubia-rc)")
def _w55(c: Cluster) -> str:
    ready = c.json("get", "rc", "-n", "kubia-rc", "kubia-v1")["status"].get("readyReplicas", 0)
    expect(ready == 3, f"{ready} of 3 replicas ready")
    ip = c.lb_address("kubia-rc", "kubia")
    _, body, _ = _eventually(lambda: _host_get(ip, 80), 30)
    expect("This is v1 running in pod kubia-v1-" in body, f"{ip} answered {body[:60]!r}")
    return f"3 ready; {ip} answers \"{body.strip()}\""


def _ingress_address(c: Cluster, given: Optional[str]) -> str:
    if given:
        return given
    status = c.json("get", "ingress", "-n", "kubia", "kubia").get("status", {}).get("loadBalancer", {})
    ingress = status.get("ingress") or []
    expect(bool(ingress), "ingress kubia has no address in its status; pass ingress_address")
    return ingress[0].get("ip") or ingress[0]["hostname"]


@check("W25+W26+F05+F06 ingress/kubia, kubia-tls, kubia-paths, foo-bar (kubia)", lane="kubia")
def _ingress(c: Cluster) -> str:
    addr = _ingress_address(c, c.ingress_address)
    routes = [("kubia.example.com", "/", "kubia-"), ("kubia.example.com", "/kubia", "kubia-"),
              ("kubia.example.com", "/bar", "bar-"), ("foo.example.com", "/", "foo-"), ("bar.example.com", "/", "bar-")]
    for host, path, backend in routes:
        status, body, _ = _eventually(lambda: _host_get(addr, 80, host=host, path=path), 30)
        expect(body.startswith(HELLO_KUBIA + backend), f"http://{host}{path} -> {status} {body[:50]!r}")
    status, body, _ = _host_get(addr, 80, host="other.example.com")
    expect(status == 404, f"an unknown host got {status}, not 404")
    status, body, cn = _eventually(lambda: _host_get(addr, 443, host="kubia.example.com", tls=True), 30)
    expect(body.startswith(HELLO_KUBIA + "kubia-"), f"https://kubia.example.com/ -> {status} {body[:50]!r}")
    expect(cn == "kubia.example.com", f"TLS certificate is for {cn!r}, not kubia.example.com (tls-secret)")
    return f"{addr}: routes by host and path, unknown host 404, HTTPS with CN=kubia.example.com"


def _ready(pod: dict) -> bool:
    return any(cd["type"] == "Ready" and cd["status"] == "True" for cd in pod["status"].get("conditions", []))


@check("F07+W28+F08 replicationcontroller/kubia, service/kubia-headless, kubia-all (kubia-readiness)")
def _readiness(c: Cluster) -> str:
    ns = "kubia-readiness"
    pods = _eventually(lambda: _all_scheduled(c, ns), 120)
    target = pods[0]["metadata"]["name"]
    restarts = pods[0]["status"]["containerStatuses"][0]["restartCount"]
    ip = pods[0]["status"]["podIP"]

    def in_endpoints(ready: bool) -> None:
        pod = c.pod(ns, target)
        ep = c.json("get", "endpoints", "-n", ns, "kubia-headless")
        ready_ips = {a["ip"] for s in ep.get("subsets", []) for a in s.get("addresses", [])}
        expect(_ready(pod) == ready and (ip in ready_ips) == ready,
               f"{target} ready={_ready(pod)}, in endpoints={ip in ready_ips}; want {ready}")
    c.exec(ns, target, "rm -f /var/ready")
    _eventually(lambda: in_endpoints(False), 40)
    c.exec(ns, target, "touch /var/ready")
    _eventually(lambda: in_endpoints(True), 40)
    now = c.pod(ns, target)["status"]["containerStatuses"][0]["restartCount"]
    expect(now == restarts, "the failing readiness probe restarted the container")

    ready_ips = {p["status"]["podIP"] for p in c.pods(ns, "app=kubia") if _ready(p)}
    all_ips = {p["status"]["podIP"] for p in c.pods(ns, "app=kubia")}
    headless = _resolve(c, f"kubia-headless.{ns}.svc.cluster.local")
    expect(headless == ready_ips, f"kubia-headless A records {sorted(headless)} != ready pods {sorted(ready_ips)}")
    everyone = _resolve(c, f"kubia-all.{ns}.svc.cluster.local")
    expect(everyone == all_ips, f"kubia-all A records {sorted(everyone)} != all pods {sorted(all_ips)}")
    return (f"{target} out of endpoints until /var/ready exists, never restarted; headless DNS returns the "
            f"{len(ready_ips)} ready pod IPs, kubia-all all {len(all_ips)}")


def _all_scheduled(c: Cluster, ns: str) -> list[dict]:
    pods = [p for p in c.pods(ns, "app=kubia") if p["status"].get("podIP") and p["status"].get("containerStatuses")]
    expect(len(pods) == 3, f"{len(pods)} of 3 kubia pods running")
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def _a_records(nslookup_output: str) -> set[str]:
    """Addresses of the answer section (busybox prints the server's address first)."""
    answer = nslookup_output.split("Name:", 1)[-1] if "Name:" in nslookup_output else ""
    return set(re.findall(r"Address(?: \d+)?:\s*(\d+\.\d+\.\d+\.\d+)", answer))


@check("W27 pod/goproxy")
def _w27(c: Cluster) -> str:
    pod = _ready_pod(c, "default", "goproxy")
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    expect(restarts == 0, f"liveness probe restarted it {restarts} times")
    return "ready through its TCP probe, no restarts"


@check("W29 pod/test-pd")
def _w29(c: Cluster) -> str:
    _ready_pod(c, "default", "test-pd")
    expect(c.exec("default", "test-pd", "echo hi > /cache/verify && cat /cache/verify").strip() == "hi",
           "cannot write to the emptyDir /cache")
    return "emptyDir mounted at /cache and writable"


@check("W30 pod/test-pd-hostpath")
def _w30(c: Cluster) -> str:
    _ready_pod(c, "default", "test-pd-hostpath")
    c.exec("default", "test-pd-hostpath", "date > /test-pd/verify && test -s /test-pd/verify")
    return "hostPath /data (created on demand) mounted at /test-pd"


@check("W31 pod/test-webserver")
def _w31(c: Cluster) -> str:
    _ready_pod(c, "default", "test-webserver")
    c.exec("default", "test-webserver", "test -d /var/local/aaa && test -f /var/local/aaa/1.txt")
    return "DirectoryOrCreate and FileOrCreate hostPaths exist"


@check("W32 pvc/mongodb-pvc, pod/mongodb")
def _w32(c: Cluster) -> str:
    _ready_pod(c, "default", "mongodb", 180)
    phase = c.json("get", "pvc", "mongodb-pvc")["status"].get("phase")
    expect(phase == "Bound", f"claim is {phase}")
    c.exec("default", "mongodb", "test -s /data/db/starts")
    return "claim Bound from the default StorageClass, mounted at /data/db"


@check("W34 persistentvolume/pv0003, pvc/pvc-slow")
def _w34(c: Cluster) -> str:
    pvc = _eventually(lambda: _bound(c, "pvc-slow"), 60)
    expect(pvc["spec"].get("volumeName") == "pv0003", f"pvc-slow bound to {pvc['spec'].get('volumeName')}")
    return "pvc-slow Bound to pv0003"


def _bound(c: Cluster, name: str) -> dict:
    pvc = c.json("get", "pvc", name)
    expect(pvc["status"].get("phase") == "Bound", f"claim {name} is {pvc['status'].get('phase')}")
    return pvc


@check("W35 storageclass/example-vol-default")
def _w35(c: Cluster) -> str:
    sc = c.json("get", "storageclass", "example-vol-default")
    expect(sc["provisioner"] == "rancher.io/local-path", f"provisioner {sc['provisioner']}")
    return "uses the installed local-path provisioner"


@check("W59 persistentvolume/pv-a, pv-b, pv-c")
def _w59(c: Cluster) -> str:
    phases = {n: c.json("get", "pv", n)["status"].get("phase") for n in ("pv-a", "pv-b", "pv-c")}
    expect(all(p in ("Available", "Bound") for p in phases.values()), f"phases {phases}")
    return f"phases {phases}"


@check("W36 pod/fortune2s")
def _w36(c: Cluster) -> str:
    ip = _ready_pod(c, "default", "fortune2s")["status"]["podIP"]
    first = c.logs("default", "fortune2s", "html-generator").splitlines()[:1]
    expect(first and "every 2 seconds" in first[0], f"first log line {first}")
    _eventually(lambda: _nonempty(c.wget(f"http://{ip}/"), "nginx serves an empty page"), 20)
    return "generator runs every 2 s (args), nginx serves the fortune"


def _nonempty(text: str, reason: str) -> str:
    expect(bool(text.strip()), reason)
    return text


@check("W37+W38 configmap/game-demo, pod/mypod-configmap")
def _w38(c: Cluster) -> str:
    _ready_pod(c, "default", "mypod-configmap")
    files = set(c.exec("default", "mypod-configmap", "ls /etc/foo").split())
    want = {"game.properties", "player_initial_lives", "ui_properties_file_name", "user-interface.properties"}
    expect(files == want, f"/etc/foo has {sorted(files)}")
    lives = c.exec("default", "mypod-configmap", "cat /etc/foo/player_initial_lives").strip()
    expect(lives == "3", f"player_initial_lives is {lives!r}")
    return "each ConfigMap key is a file in /etc/foo"


@check("W39 pod/configmap-demo-pod")
def _w39(c: Cluster) -> str:
    _ready_pod(c, "default", "configmap-demo-pod")
    env = c.exec("default", "configmap-demo-pod", "env")
    for line in ("PLAYER_INITIAL_LIVES=3", "UI_PROPERTIES_FILE_NAME=user-interface.properties"):
        expect(line in env.splitlines(), f"env lacks {line}")
    files = set(c.exec("default", "configmap-demo-pod", "ls /config").split())
    expect(files == {"game.properties", "user-interface.properties"}, f"/config has {sorted(files)}")
    return "two keys as env vars, two items as files"


def _logs_of_finished(c: Cluster, name: str) -> str:
    _succeeded(c, "default", name)
    return c.logs("default", name)


@check("W40+W42 pod/dapi-test-pod-envfrom, configmap/special-config")
def _w40(c: Cluster) -> str:
    out = _logs_of_finished(c, "dapi-test-pod-envfrom").splitlines()
    expect("SPECIAL_LEVEL=very" in out and "SPECIAL_TYPE=charm" in out, "envFrom variables missing")
    return "every special-config key became an env var"


@check("F12 pod/envfrom-prefix")
def _f12(c: Cluster) -> str:
    out = _logs_of_finished(c, "envfrom-prefix").splitlines()
    expect("CONFIG_SPECIAL_LEVEL=very" in out and "CONFIG_SPECIAL_TYPE=charm" in out, "prefixed variables missing")
    return "keys arrive with the CONFIG_ prefix"


@check("W41 pod/fortune-args-from-configmap")
def _w41(c: Cluster) -> str:
    _ready_pod(c, "default", "fortune-args-from-configmap")
    first = c.logs("default", "fortune-args-from-configmap").splitlines()[:1]
    expect(first and "every 25 seconds" in first[0], f"first log line {first}")
    return "sleep-interval 25 reached the args through $(INTERVAL)"


@check("W43 pod/dapi-test-pod-ls")
def _w43(c: Cluster) -> str:
    out = set(_logs_of_finished(c, "dapi-test-pod-ls").split())
    expect({"SPECIAL_LEVEL", "SPECIAL_TYPE"} <= out, f"listing was {sorted(out)}")
    return "each key is a file in /etc/config"


@check("W44 pod/dapi-test-pod-keys")
def _w44(c: Cluster) -> str:
    out = _logs_of_finished(c, "dapi-test-pod-keys").strip()
    expect(out == "very", f"/etc/config/keys held {out!r}")
    return "only SPECIAL_LEVEL, as file 'keys'"


@check("F13 pod/subpath-demo")
def _f13(c: Cluster) -> str:
    _ready_pod(c, "default", "subpath-demo")
    expect(c.exec("default", "subpath-demo", "cat /etc/someconfig.conf").strip() == "very", "subPath file wrong")
    expect("passwd" in c.exec("default", "subpath-demo", "ls /etc").split(), "the mount hid the rest of /etc")
    return "one file added to /etc, the rest untouched"


@check("F14 configmap/fortune-config, pod/fortune-configmap-volume")
def _f14(c: Cluster) -> str:
    _ready_pod(c, "default", "fortune-configmap-volume")
    listing = c.exec("default", "fortune-configmap-volume", "ls -lL /etc/nginx/conf.d", "web-server")
    modes = {line.split()[0] for line in listing.splitlines() if line.startswith("-")}
    expect(modes == {"-rw-rw----"}, f"file modes {modes}, expected -rw-rw---- (0660)")
    return "configMap files carry defaultMode 0660"


@check("W45 pod/mypod-secret")
def _w45(c: Cluster) -> str:
    _ready_pod(c, "default", "mypod-secret")
    # `ls` without -A: the kubelet's atomic writer keeps its ..data entries even for an absent Secret
    # (and this busybox's ls -A crashes on them).
    files = c.exec("default", "mypod-secret", "ls /etc/foo").split()
    expect(files == [], f"/etc/foo holds {files}, yet Secret mysecret does not exist")
    expect(c.run("get", "secret", "mysecret", check=False).strip() == "", "Secret mysecret exists after all")
    return "starts without Secret mysecret (optional), empty /etc/foo"


@check("W46 secret/secret-basic-auth")
def _w46(c: Cluster) -> str:
    secret = c.json("get", "secret", "secret-basic-auth")
    expect("stringData" not in secret, "stringData came back")
    password = base64.b64decode(secret["data"]["password"]).decode()
    expect(password == "t0p-Secret", "password does not decode to t0p-Secret")
    return "stringData stored base64 under data"


@check("W47 secret/secret-ssh-auth")
def _w47(c: Cluster) -> str:
    secret = c.json("get", "secret", "secret-ssh-auth")
    expect(secret["type"] == "kubernetes.io/ssh-auth", f"type {secret['type']}")
    key = base64.b64decode(secret["data"]["ssh-privatekey"]).decode()
    expect(key.startswith("-----BEGIN RSA PRIVATE KEY-----"), "ssh-privatekey is not a PEM key")
    return "ssh-auth Secret with a generated PEM key"


@check("W48 secret/ssh-key-secret, pod/secret-test-pod")
def _w48(c: Cluster) -> str:
    _ready_pod(c, "default", "secret-test-pod")
    files = set(c.exec("default", "secret-test-pod", "ls /etc/secret-volume").split())
    expect(files == {"ssh-privatekey", "ssh-publickey"}, f"/etc/secret-volume has {sorted(files)}")
    return "secret keys are read-only files in /etc/secret-volume"


@check("W49 secret/dotfile-secret, pod/secret-dotfiles-pod")
def _w49(c: Cluster) -> str:
    out = _logs_of_finished(c, "secret-dotfiles-pod")
    expect(".secret-file" in out, "no .secret-file in the listing")
    return "the dot-key is a hidden file; pod Completed"


@check("W50+F15 secret/fortune-https, pod/fortune-https")
def _w50(c: Cluster) -> str:
    _ready_pod(c, "default", "fortune-https")
    env = c.exec("default", "fortune-https", "env", "html-generator").splitlines()
    expect("FOO_SECRET=bar" in env, "FOO_SECRET is not set from the Secret")
    mounts = c.exec("default", "fortune-https", "mount", "web-server")
    expect(any("/etc/nginx/certs" in m and "tmpfs" in m for m in mounts.splitlines()), "certs are not on tmpfs")
    c.exec("default", "fortune-https", "test -s /etc/nginx/certs/https.cert", "web-server")
    # busybox wget is no TLS client and pod IPs are not routed to this host: handshake through port-forward.
    with c.port_forward("default", "pod/fortune-https", 443) as port:
        status, body, cn = _eventually(lambda: _host_get("127.0.0.1", port, host="www.kubia-example.com",
                                                         tls=True), 15)
    expect(cn == "www.kubia-example.com", f"certificate CN {cn!r}, not www.kubia-example.com")
    expect(status == 200 and body.strip(), f"HTTPS answered {status} {body[:60]!r}")
    return f"FOO_SECRET from the Secret, certificates on tmpfs, HTTPS 200 with CN={cn}"


@check("W52 pod/downward-env")
def _w52(c: Cluster) -> str:
    pod = _ready_pod(c, "default", "downward-env")
    env = dict(line.split("=", 1) for line in c.exec("default", "downward-env", "env").splitlines() if "=" in line)
    want = {"POD_NAME": "downward-env", "POD_NAMESPACE": "default", "POD_IP": pod["status"]["podIP"],
            "NODE_NAME": pod["spec"]["nodeName"], "SERVICE_ACCOUNT": "default",
            "CONTAINER_CPU_REQUEST_MILLICORES": "15", "CONTAINER_MEMORY_LIMIT_KIBIBYTES": "16384"}
    wrong = {k: env.get(k) for k, v in want.items() if env.get(k) != v}
    expect(not wrong, f"wrong values {wrong}")
    return "name, namespace, IP, node, service account and resources as env vars"


@check("W53+F16 pod/downward")
def _w53(c: Cluster) -> str:
    _ready_pod(c, "default", "downward")
    read = lambda f: c.exec("default", "downward", f"cat /etc/downward/{f}")
    expect(read("podName").strip() == "downward", "podName")
    expect('foo="bar"' in read("labels"), "labels file lacks foo=\"bar\"")
    expect('key1="value1"' in read("annotations"), "annotations file lacks key1")
    expect(read("containerCpuRequestMilliCores").strip() == "15", "cpu request file is not 15")
    return "podName, podNamespace, labels, annotations and cpu request as files"


@check("W54 rolebinding/default-sa-view, pod/curl-with-ambassador")
def _w54(c: Cluster) -> str:
    _ready_pod(c, "default", "curl-with-ambassador")
    out = _eventually(lambda: c.exec("default", "curl-with-ambassador",
                                     "curl -s localhost:8001/api/v1/namespaces/default/pods", "main"), 30)
    expect('"PodList"' in out, f"ambassador answered {out[:80]!r}")
    return "main container lists pods through the ambassador's kubectl proxy"


@check("W56 replicaset/nginx (nginx-matchexpressions)")
def _w56(c: Cluster) -> str:
    def ready() -> int:
        n = c.json("get", "rs", "-n", "nginx-matchexpressions", "nginx")["status"].get("readyReplicas", 0)
        expect(n == 3, f"{n} of 3 ready")
        return n
    _eventually(ready, 120)
    names = c.run("get", "pods", "-n", "nginx-matchexpressions", "-l",
                  "app in (nginx,frontend),environment notin (production)", "-o", "name").split()
    expect(len(names) == 3, f"set-based selector finds {len(names)} pods")
    return "3 pods, found by the set-based selector"


@check("F01 replicaset/kubia (kubia-matchexpressions)")
def _f01(c: Cluster) -> str:
    rs = c.json("get", "rs", "-n", "kubia-matchexpressions", "kubia")
    expect(rs["status"].get("readyReplicas", 0) == 3, "not 3 ready replicas")
    return "3 replicas via matchExpressions app In (kubia)"


@check("W57+F17 deployment/kubia (kubia-deploy)")
def _w57(c: Cluster) -> str:
    ns, d = "kubia-deploy", "deployment/kubia"
    status = lambda: c.run("rollout", "status", "-n", ns, d, "--timeout=180s", timeout=200)

    def images_now() -> set[str]:
        return {p["spec"]["containers"][0]["image"] for p in c.pods(ns, "app=kubia")
                if p["metadata"].get("deletionTimestamp") is None}

    def only(image: str) -> None:
        _eventually(lambda: expect(images_now() == {image}, f"images {images_now()}, want {image}"), 60)
    try:
        status()
        only("luksa/kubia:v1")
        c.run("set", "image", "-n", ns, d, "nodejs=luksa/kubia:v2")
        status()
        only("luksa/kubia:v2")
        c.run("rollout", "undo", "-n", ns, d)
        status()
        only("luksa/kubia:v1")
        c.run("rollout", "pause", "-n", ns, d)
        c.run("set", "image", "-n", ns, d, "nodejs=luksa/kubia:v4")
        time.sleep(10)
        expect(images_now() == {"luksa/kubia:v1"}, f"paused deployment rolled anyway: {images_now()}")
        c.run("rollout", "resume", "-n", ns, d)
        status()
        only("luksa/kubia:v4")
    finally:   # leave it as declared, so Pulumi sees no drift
        c.run("rollout", "resume", "-n", ns, d, check=False)
        c.run("set", "image", "-n", ns, d, "nodejs=luksa/kubia:v1", check=False)
    status()
    return "v1 -> v2, undo -> v1, paused v4 held back, resumed -> v4; restored to v1"


@check("W58 service/nginx, statefulset/web (web)")
def _w58(c: Cluster) -> str:
    ns = "web"
    c.run("rollout", "status", "-n", ns, "statefulset/web", "--timeout=300s", timeout=320)
    c.exec(ns, "web-0", "hostname > /usr/share/nginx/html/index.html")
    claim = c.json("get", "pvc", "-n", ns, "www-web-0")["metadata"]["uid"]
    web0 = c.pod(ns, "web-0")["status"]["podIP"]
    expect(_resolve(c, f"web-0.nginx.{ns}.svc.cluster.local") == {web0}, "web-0.nginx does not resolve to web-0")
    c.run("delete", "pod", "-n", ns, "web-0", "--wait=true", timeout=90)
    _eventually(lambda: c.wait_ready(ns, "pod/web-0", 30), 180)
    expect(c.exec(ns, "web-0", "cat /usr/share/nginx/html/index.html").strip() == "web-0", "page lost")
    expect(c.json("get", "pvc", "-n", ns, "www-web-0")["metadata"]["uid"] == claim, "claim www-web-0 replaced")
    return "web-0 came back under its name with the same claim and its page; DNS web-0.nginx resolves"


@check("W60+W61 service/kubia, statefulset/kubia (kubia-sts)")
def _w61(c: Cluster) -> str:
    ns = "kubia-sts"
    c.run("rollout", "status", "-n", ns, "statefulset/kubia", "--timeout=300s", timeout=320)
    note = f"verify {int(time.time())}"
    url = f"http://kubia-0.kubia.{ns}.svc.cluster.local:8080/"
    out = c.sh(f"{WGET} --post-data='{note}' {url}")
    expect("Data stored on pod kubia-0" in out, f"POST answered {out[:60]!r}")
    c.run("delete", "pod", "-n", ns, "kubia-0", "--wait=true", timeout=90)
    _eventually(lambda: c.wait_ready(ns, "pod/kubia-0", 30), 180)
    got = _eventually(lambda: c.wget(url), 60)
    expect(HELLO_KUBIA + "kubia-0" in got and note in got, f"after restart: {got[:100]!r}")
    return "kubia-0 returned under its name and still holds the data posted before"


@check("W62+W63 pod/myapp-pod, replicaset/myapp-replica", lane="default-rs")
def _w63(c: Cluster) -> str:
    owners = [o["name"] for o in c.pod("default", "myapp-pod")["metadata"].get("ownerReferences", [])]
    expect(owners == ["myapp-replica"], f"myapp-pod owners {owners}")
    ready = c.json("get", "rs", "myapp-replica")["status"].get("readyReplicas", 0)
    expect(ready == 3, f"{ready} of 3 ready")
    return "the ReplicaSet adopted myapp-pod and keeps 3"


@check("W64 deployment/deploy")
def _w64(c: Cluster) -> str:
    c.run("rollout", "status", "deploy/deploy", "--timeout=180s", timeout=200)
    return "rolled out, 3 replicas"


def _run_check(cluster: Cluster, workload: str, fn: Callable[..., str]) -> tuple[CheckResult, float]:
    started = time.monotonic()
    try:
        result = CheckResult(workload, True, fn(cluster))
    except CheckFailed as e:
        result = CheckResult(workload, False, str(e))
    except subprocess.CalledProcessError as e:
        result = CheckResult(workload, False, _proc_error(e))
    except subprocess.TimeoutExpired as e:
        result = CheckResult(workload, False, f"timed out after {e.timeout:.0f}s: {' '.join(map(str, e.cmd[2:5]))}")
    except (KeyError, IndexError, ValueError, TypeError, OSError) as e:
        result = CheckResult(workload, False, f"unexpected state: {type(e).__name__}: {e}")
    return result, time.monotonic() - started


def verify(kubeconfig_path: str, kubectl: str = "kubectl", ingress_address: Optional[str] = None,
           only: Optional[set[str]] = None, echo: Callable[[str], None] = print,
           workers: int = 8) -> list[CheckResult]:
    """Run every behaviour check (or those whose workload starts with an id in `only`), one line each.

    Lanes run concurrently on `workers` threads (most of a check is waiting on the cluster), so the whole
    run is bounded by the slowest lane, not the sum; results come back in CHECKS order.
    """
    cluster = Cluster(kubectl, kubeconfig_path, ingress_address)
    selected = [(w, fn) for w, fn in CHECKS if not only or any(w.startswith(i) for i in only)]
    lanes: dict[str, list[tuple[str, Callable[..., str]]]] = {}
    for workload, fn in selected:
        lanes.setdefault(LANES[workload], []).append((workload, fn))
    results: dict[str, CheckResult] = {}
    printing = threading.Lock()

    def run_lane(checks: list[tuple[str, Callable[..., str]]]) -> None:
        for workload, fn in checks:
            result, took = _run_check(cluster, workload, fn)
            results[workload] = result
            with printing:
                echo(f"{'PASS' if result.ok else 'FAIL'}  {workload}  ({took:.0f}s)  {result.reason}")
    try:
        # The slowest lanes (jobs) start first so they do not end up waiting behind short checks.
        order = sorted(lanes.values(), key=lambda cs: not any(w.startswith(("W13", "W14", "W15")) for w, _ in cs))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(run_lane, checks) for checks in order]:
                future.result()
    finally:
        cluster.cleanup()
    return [results[w] for w, _ in selected]


def covered_samples() -> set[str]:
    """Sample ids that some check names (W13, F07, NS, ...)."""
    return set(re.findall(r"\b(W\d\d|F\d\d|NS)\b", " ".join(w for w, _ in CHECKS)))
