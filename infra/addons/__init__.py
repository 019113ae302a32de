"""Cluster add-ons the sample workloads need, deployed with pulumi-kubernetes from infra/addons/manifests/:

- MetalLB (L2): LoadBalancer Services get an address from a pool on the machine network.
- Traefik: the default IngressClass `traefik`, HTTP on 80 and HTTPS on 443 (certificates from the
  Ingresses' TLS Secrets) behind a LoadBalancer Service, its address published on Ingress status.
- local-path-provisioner: the default StorageClass `local-path` (volumes in a directory on the node).
- metrics-server: the Metrics API (`kubectl top nodes|pods`), through the API server's aggregation layer.

Every image is built from the pinned lock.yaml binaries (its `images:` families) and served by the local
registry under its upstream name. The component only finishes once each controller is available (for
metrics-server: ready, which it reports only once it holds a scrape of the kubelets) and
MetalLB's webhooks admit objects, so workloads applied after it never race a fail-closed webhook.

    python -m infra.addons --refresh-metallb   rewrite manifests/metallb*.yaml from the pinned module
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml
from pulumi import Output, ResourceOptions, dynamic

from infra import artifacts, yamlload
from infra.artifacts.store import ArtifactError
from infra.kube import Kubectl, KubectlError
from infra.workloads.deploy import grouped_urn, type_token
from infra.workloads.keys import GENERATE_ANNOTATION, with_generated_keys

# Not under workloads/: these are the cluster's own services, not samples of the notes.
ADDONS_DIR = Path(__file__).resolve().parent / "manifests"
INGRESS_CLASS = "traefik"
STORAGE_CLASS = "local-path"
METALLB_NAMESPACE = "metallb-system"
# MetalLB's own manifest, shipped in its module at the pinned version.
METALLB_UPSTREAM = "config/manifests/metallb-native.yaml"
WEBHOOK_TIMEOUT = 300.0


class AddonsError(ValueError):
    """Bad add-on arguments; the message says what to change."""


def parse_address_range(value: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """`10.78.0.200-10.78.0.220` or a CIDR such as `10.78.0.192/27` -> (first, last)."""
    try:
        if "-" in value:
            first, last = (ipaddress.IPv4Address(part.strip()) for part in value.split("-", 1))
        else:
            net = ipaddress.IPv4Network(value.strip(), strict=True)
            first, last = net[0], net[-1]
    except ValueError as e:
        raise AddonsError(f"lb_address_range {value!r} is not `A.B.C.D-A.B.C.E` or a CIDR: {e}") from None
    if first > last:
        raise AddonsError(f"lb_address_range {value!r}: the first address is after the last")
    return first, last


def check_address_range(value: str, machine_cidr: str | None = None,
                        used: tuple[str, ...] = ()) -> str:
    """The range in MetalLB's form, after checking it sits inside the machine network (L2 mode only
    answers ARP on the segment the nodes share) and overlaps no machine or bridge address."""
    first, last = parse_address_range(value)
    if machine_cidr:
        net = ipaddress.IPv4Network(machine_cidr)
        if first not in net or last not in net or first == net.network_address or last == net.broadcast_address:
            raise AddonsError(f"lb_address_range {value!r} must lie inside the machine network {machine_cidr} "
                              "(MetalLB L2 answers ARP there), e.g. its .200-.220")
    clash = sorted(a for a in used if first <= ipaddress.IPv4Address(a) <= last)
    if clash:
        raise AddonsError(f"lb_address_range {value!r} includes addresses in use ({', '.join(clash)}); "
                          "pick unused ones, e.g. above the machines'")
    return f"{first}-{last}"


def load(name: str, pinned: dict[str, str] | None = None) -> list[dict]:
    """The documents of manifests/<name>.yaml, with every image pinned by digest if `pinned` is given."""
    path = ADDONS_DIR / f"{name}.yaml"
    docs = [d for d in yamlload.load_all(path.read_text()) if d]
    return pin_images(docs, pinned, path.name) if pinned else docs


def pin_images(docs: list[dict], pinned: dict[str, str], source: str) -> list[dict]:
    """`docs` with each container image replaced by pinned[image] (name@sha256:...), wherever a pod spec
    sits: in a workload's template, or as YAML text in a ConfigMap (local-path's helper pod). An image the
    local registry does not hold is refused: through the mirror it could never be pulled."""
    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out = {key: walk(value) for key, value in node.items()}
        for key in ("containers", "initContainers"):
            containers = out.get(key)
            # A list of containers, not a CRD schema's `containers` property.
            for container in containers if isinstance(containers, list) else []:
                image = container.get("image") if isinstance(container, dict) else None
                if image is None:
                    continue
                if image not in pinned:
                    raise AddonsError(f"{source}: image {image!r} is not built by lock.yaml `images:`, so the "
                                      "local registry cannot serve it; add its ref to the family that builds it")
                container["image"] = pinned[image]
        return out

    def pin_doc(doc: dict) -> dict:
        doc = walk(doc)
        if doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                embedded = yamlload.load(text) if key.endswith(".yaml") else None
                if isinstance(embedded, dict) and embedded.get("kind") == "Pod":
                    doc["data"][key] = yaml.safe_dump(walk(embedded), sort_keys=False)
        return doc

    return [pin_doc(doc) for doc in docs]


# Seconds between readiness probes of an add-on's containers (see prompt_readiness).
READINESS_PERIOD = 2


def prompt_readiness(docs: list[dict]) -> list[dict]:
    """`docs` with each workload container's readiness probe run every READINESS_PERIOD seconds from its
    start; liveness probes keep their timing. The component is awaited on readiness, and upstream's first
    probes (MetalLB's at 10 s, metrics-server's at 20 s, every 10 s after) were most of the add-ons' bring-up."""
    def prompt(container: dict) -> dict:
        probe = container.get("readinessProbe")
        if not probe:
            return container
        probe = {k: v for k, v in probe.items() if k != "initialDelaySeconds"}
        return {**container, "readinessProbe": {**probe, "periodSeconds": READINESS_PERIOD}}

    out = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet"):
            pod = doc["spec"]["template"]["spec"]
            pod = {**pod, "containers": [prompt(c) for c in pod["containers"]]}
            doc = {**doc, "spec": {**doc["spec"], "template": {**doc["spec"]["template"], "spec": pod}}}
        out.append(doc)
    return out


# pulumi-kubernetes' ordering inside a ConfigGroup (cli-utils object references, comma separated).
DEPENDS_ON = "config.kubernetes.io/depends-on"


def object_ref(doc: dict) -> str:
    """`doc` as a depends-on reference: <group>/namespaces/<namespace>/<kind>/<name> (core group empty)."""
    group = doc["apiVersion"].rpartition("/")[0]
    namespace = doc["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{group}{scope}/{doc['kind']}/{doc['metadata']['name']}"


def with_depends_on(doc: dict, refs: list[str]) -> dict:
    """A copy of `doc` that pulumi-kubernetes creates only after `refs` are created and ready."""
    annotations = dict(doc["metadata"].get("annotations") or {})
    known = [r for r in annotations.get(DEPENDS_ON, "").split(",") if r]
    annotations[DEPENDS_ON] = ",".join(known + [r for r in refs if r not in known])
    return {**doc, "metadata": {**doc["metadata"], "annotations": annotations}}


def accounts_first(docs: list[dict]) -> list[dict]:
    """`docs` with each Deployment and DaemonSet created after the ServiceAccount its pods run as and the
    bindings and roles in the group that grant it rights. Created together, the ReplicaSet controller is
    refused the pods until the account exists and retries with a growing backoff, and a controller that
    starts before its rights fails and restarts with the kubelet's crash backoff."""
    def key(doc: dict) -> tuple:
        return doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]

    present = {key(d): d for d in docs}
    out = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet"):
            namespace = doc["metadata"].get("namespace")
            account = doc["spec"]["template"]["spec"].get("serviceAccountName", "default")
            needed = [present.get(("ServiceAccount", namespace, account))]
            for binding in docs:
                if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or not any(
                        s.get("kind") == "ServiceAccount" and s.get("name") == account
                        and s.get("namespace", binding["metadata"].get("namespace")) == namespace
                        for s in binding.get("subjects") or []):
                    continue
                role = binding["roleRef"]
                scope = binding["metadata"].get("namespace") if role["kind"] == "Role" else None
                needed += [binding, present.get((role["kind"], scope, role["name"]))]
            refs = [object_ref(d) for d in needed if d]
            if refs:
                doc = with_depends_on(doc, refs)
        out.append(doc)
    return out


def split_out(docs: list[dict], manifest: str, kind: str, name: str) -> tuple[list[dict], dict]:
    """(the manifest's documents without its one `kind` named `name`, that document)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        raise AddonsError(f"{ADDONS_DIR / (manifest + '.yaml')} must hold exactly one {kind} `{name}`")
    return [d for d in docs if d is not found[0]], found[0]


# MetalLB's webhook Secret, and what its controller's certificate rotator accepts there as valid (a CA named
# `cert`, and a serving certificate it signs for the webhook Service's name).
WEBHOOK_SECRET = "metallb-webhook-cert"
WEBHOOK_KEYS = (f"x509-ca ca-cn=cert ca=ca.crt ca-key=ca.key cn=metallb-webhook-service.{METALLB_NAMESPACE}.svc "
                "cert=tls.crt key=tls.key")


def with_webhook_cert(docs: list[dict], keys_dir: Path) -> list[dict]:
    """MetalLB's docs with its webhook Secret holding a CA and serving certificate made once and kept in
    keys_dir. Upstream ships it empty: the controller then issues them, but serves (and turns ready) only
    once the kubelet has refreshed the Secret's volume in its pod, which took 10-45 s here and sometimes
    past the liveness probe's limit, restarting it. Valid ones from the start are kept as they are."""
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == WEBHOOK_SECRET)
    out = []
    for doc in docs:
        if doc is secret:
            annotations = {**(doc["metadata"].get("annotations") or {}), GENERATE_ANNOTATION: WEBHOOK_KEYS}
            doc = with_generated_keys({**doc, "metadata": {**doc["metadata"], "annotations": annotations}},
                                      keys_dir)
            doc = {**doc, "data": {k: Output.secret(v) for k, v in doc["data"].items()}}
        elif doc["kind"] == "Deployment" and doc["metadata"]["name"] == "controller":
            # Its pod mounts the Secret: created first, the kubelet need not retry the mount.
            doc = with_depends_on(doc, [object_ref(secret)])
        out.append(doc)
    return out


def pool_objects(address_range: str) -> list[dict]:
    """MetalLB's configuration: one pool on the machine network, announced in L2 mode."""
    meta = {"namespace": METALLB_NAMESPACE}
    return [
        {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
         "metadata": {"name": "machine-network", **meta},
         "spec": {"addresses": [address_range], "autoAssign": True}},
        {"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
         "metadata": {"name": "machine-network", **meta},
         "spec": {"ipAddressPools": ["machine-network"]}},
    ]


# ---- MetalLB's manifests, from its module source ----------------------------------------------------

def metallb_module_dir() -> Path:
    """The pinned MetalLB module in the Go module cache (fetched from the proxy if missing)."""
    spec = artifacts.load_lock()["go"]["metallb"]
    env = dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local")
    proc = subprocess.run(["go", "mod", "download", "-json", f"{spec['module']}@{spec['version']}"],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), check=False)
    info = json.loads(proc.stdout or "{}")
    if "Dir" not in info:
        raise ArtifactError(f"cannot fetch {spec['module']}@{spec['version']}: {info.get('Error', proc.stderr)}")
    return Path(info["Dir"])


def metallb_upstream(module_dir: Path) -> tuple[list[dict], list[dict]]:
    """(CRDs, everything else) from MetalLB's own native-mode manifest."""
    docs = [d for d in yamlload.load_all((module_dir / METALLB_UPSTREAM).read_text()) if d]
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    return crds, [d for d in docs if d["kind"] != "CustomResourceDefinition"]


def refresh_metallb_files(module_dir: Path | None = None) -> list[Path]:
    """Write manifests/metallb-crds.yaml and metallb.yaml from the pinned module, unchanged but
    for a header: its images (quay.io/metallb/*) are the names the local registry serves."""
    module_dir = module_dir or metallb_module_dir()
    version = module_dir.name.split("@", 1)[1]
    crds, rest = metallb_upstream(module_dir)
    parts = (("metallb-crds", crds, "its CustomResourceDefinitions"),
             ("metallb", rest, "all but the CRDs: namespace, RBAC, excludel2 ConfigMap, webhook, controller, speaker"))
    written = []
    for name, docs, what in parts:
        header = (f"# Generated by `python -m infra.addons --refresh-metallb` from {METALLB_UPSTREAM}\n"
                  f"# of go.universe.tf/metallb@{version} (Go module cache): {what}.\n"
                  "# Do not edit; re-generate.\n")
        path = ADDONS_DIR / f"{name}.yaml"
        path.write_text(header + yaml.safe_dump_all(docs, sort_keys=False))
        written.append(path)
    return written


# ---- waiting for MetalLB's webhooks ------------------------------------------------------------------

def wait_admitted(kubeconfig: str, objs: list[dict], timeout: float = WEBHOOK_TIMEOUT) -> float:
    """Retry a server-side dry-run apply of `objs` until the API server admits them; seconds taken.

    MetalLB's validating webhooks fail closed, and its controller injects their CA only after it has
    issued its serving certificate: until then every IPAddressPool is refused.
    """
    started = time.monotonic()
    with Kubectl(kubeconfig) as kube:
        while True:
            try:
                kube.apply(*objs, dry_run=True)
                return time.monotonic() - started
            except KubectlError as e:
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"MetalLB's webhooks still refuse its configuration after {timeout:.0f}s: "
                                       f"{e.stderr.strip()[-600:]}\nCheck that the API server reaches pod IPs "
                                       "(`kubectl -n metallb-system get pods,endpoints`).") from e
            time.sleep(1)


class _AdmittedProvider(dynamic.ResourceProvider):
    """A gate: created once the API server admits the given objects (dry run); holds no cluster state."""

    def create(self, props):
        took = wait_admitted(props["kubeconfig"], json.loads(props["objects"]))
        return dynamic.CreateResult(id_="admitted", outs={**props, "seconds": round(took, 1)})

    def diff(self, id_, olds, news):
        return dynamic.DiffResult(changes=olds.get("objects") != news.get("objects"))

    def update(self, id_, olds, news):
        took = wait_admitted(news["kubeconfig"], json.loads(news["objects"]))
        return dynamic.UpdateResult(outs={**news, "seconds": round(took, 1)})


class WebhooksAdmit(dynamic.Resource):
    seconds: Output[float]

    def __init__(self, name: str, kubeconfig: Any, objs: list[dict], opts: ResourceOptions | None = None):
        super().__init__(_AdmittedProvider(), name,
                         {"kubeconfig": Output.secret(kubeconfig), "objects": json.dumps(objs, sort_keys=True),
                          "seconds": None}, opts)


# ---- the component -------------------------------------------------------------------------------------

@dataclass
class AddonsArgs:
    kubeconfig: Any            # pulumi.Input[str], secret: the admin kubeconfig (its contents or its path)
    lb_address_range: str      # unused machine-network addresses for LoadBalancer Services, e.g.
                               # "10.78.0.200-10.78.0.220" (or a CIDR)
    machine_cidr: str | None = None       # when given, the range must lie inside it
    used_addresses: tuple[str, ...] = ()     # machine/bridge addresses the range must not include
    # image ref -> the same image by digest, for images served by the local registry; empty keeps the tags
    # (pulled from upstream, whose digests are not those of the local builds)
    pinned_images: dict[str, str] = field(default_factory=dict)
    # where generated key material is kept between runs (MetalLB's webhook certificates); None leaves them
    # to MetalLB's controller
    keys_dir: Path | None = None


class Addons(pulumi.ComponentResource):
    """MetalLB + Traefik + local-path-provisioner + metrics-server; finished only when all four serve."""

    ingress_class: str
    storage_class: str
    storage: pulumi.Resource
    ingress: pulumi.Resource
    ingress_address: Output[str]       # the Traefik LoadBalancer address (HTTP 80, HTTPS 443)
    webhook_wait_seconds: Output[float]

    def __init__(self, name: str, args: AddonsArgs, opts: ResourceOptions | None = None):
        super().__init__("pilothouse:addons:Addons", name, None, opts)
        address_range = check_address_range(args.lb_address_range, args.machine_cidr, args.used_addresses)
        kubeconfig = Output.secret(args.kubeconfig)
        pins = args.pinned_images
        self.provider = k8s.Provider(f"{name}-provider", kubeconfig=kubeconfig,
                                     opts=ResourceOptions(parent=self))

        def child(*depends_on: pulumi.Resource) -> ResourceOptions:
            return ResourceOptions(parent=self, providers=[self.provider], depends_on=list(depends_on))

        def objects(manifest: str) -> list[dict]:
            return accounts_first(prompt_readiness(load(manifest, pins)))

        # Each group is applied with pulumi-kubernetes' await logic on: Deployments and DaemonSets count as
        # created only when their pods are available, a LoadBalancer Service only once it has an address.
        crds = k8s.yaml.v2.ConfigGroup(f"{name}-metallb-crds", objs=load("metallb-crds", pins), opts=child())
        rest, speaker = split_out(prompt_readiness(load("metallb", pins)), "metallb", "DaemonSet", "speaker")
        if args.keys_dir:
            rest = with_webhook_cert(rest, args.keys_dir)
        metallb = k8s.yaml.v2.ConfigGroup(f"{name}-metallb", objs=accounts_first(rest), opts=child(crds))
        # The speaker follows the controller, which creates the `memberlist` Secret its pods mount: created
        # together, the kubelet retried that mount with a doubling backoff and the speakers came up 15-20 s
        # late. Nothing waits for it but the component itself: the pool needs the controller's webhooks,
        # and Services get their addresses from the controller. It runs in the node's network and reaches the
        # API through the `kubernetes` ClusterIP, which the cni role routes on every node. Its name is the one
        # it had as a child of the metallb group, and that former parent is an alias, so an existing stack
        # keeps its DaemonSet.
        pulumi.CustomResource("kubernetes:apps/v1:DaemonSet", f"{name}-metallb:{METALLB_NAMESPACE}/speaker", speaker,
                              opts=ResourceOptions(parent=self, provider=self.provider, depends_on=[metallb],
                                                   aliases=[pulumi.Alias(parent=metallb)]))
        pool_objs = pool_objects(address_range)
        admitted = WebhooksAdmit(f"{name}-metallb-webhooks", kubeconfig, pool_objs,
                                 opts=ResourceOptions(parent=self, depends_on=[metallb]))
        k8s.yaml.v2.ConfigGroup(f"{name}-metallb-pool", objs=pool_objs, opts=child(admitted))
        local_path_rest, storage_class = split_out(objects("local-path"), "local-path", "StorageClass", STORAGE_CLASS)
        k8s.yaml.v2.ConfigGroup(f"{name}-local-path", objs=local_path_rest, opts=child())
        # The default StorageClass apart from its provisioner, for what needs storage to wait on: a claim needs only
        # the class to exist when it is created (admission fills it in), its volume waits for a consumer pod, and
        # the provisioner takes up the claims made before it ran. Waiting for the provisioner's Deployment held
        # the samples' StatefulSets back 6-10 s. Its URN inside the group is an alias, so a stack made before keeps
        # it; given as a URN, because the group's own URN is known only once every child of it is created.
        former = self.urn.apply(lambda urn: grouped_urn(urn, f"{name}-local-path", storage_class))
        self.storage = pulumi.CustomResource(
            type_token(storage_class), f"{name}-local-path:{STORAGE_CLASS}", storage_class,
            opts=ResourceOptions(parent=self, provider=self.provider, aliases=[former]))
        k8s.yaml.v2.ConfigGroup(f"{name}-metrics-server", objs=objects("metrics-server"), opts=child())
        # Traefik starts beside MetalLB: its Service is awaited until it has an address, which MetalLB's
        # controller gives it once the pool exists (it reconciles every Service again when a pool appears).
        traefik = k8s.yaml.v2.ConfigGroup(f"{name}-traefik", objs=objects("traefik"), opts=child())

        self.ingress_class = INGRESS_CLASS
        self.storage_class = STORAGE_CLASS
        self.ingress = traefik          # done once the IngressClass exists and Traefik serves on its address
        self.webhook_wait_seconds = admitted.seconds
        self.ingress_address = traefik.resources.apply(_lb_address)
        self.register_outputs({"ingress_class": self.ingress_class, "storage_class": self.storage_class,
                               "ingress_address": self.ingress_address,
                               "webhook_wait_seconds": self.webhook_wait_seconds})


def _lb_address(resources: list) -> Output[str]:
    services = [r for r in resources if isinstance(r, k8s.core.v1.Service)]
    if len(services) != 1:
        raise AddonsError(f"{ADDONS_DIR / 'traefik.yaml'} must hold exactly one Service (Traefik's LoadBalancer)")
    return services[0].status.apply(_ingress_ip)


def _ingress_ip(status: Any) -> str:
    """status.loadBalancer.ingress[0].ip of a Service (an output object, or a dict in tests)."""
    def get(obj: Any, attr: str, key: str) -> Any:
        return obj.get(key) if isinstance(obj, dict) and key in obj else getattr(obj, attr, None)
    ingress = get(get(status, "load_balancer", "loadBalancer"), "ingress", "ingress") or []
    return (get(ingress[0], "ip", "ip") or "") if ingress else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--refresh-metallb"]:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    for path in refresh_metallb_files():
        print(f"wrote {path}")
    return 0
