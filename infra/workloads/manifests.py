"""The sample manifests in workloads/: the model (Manifest), static validation against what Kubernetes 1.34
serves, and loading in apply order.

Apply order is deterministic: by kind stage (namespaces and cluster storage, config, claims and jobs,
services, bare pods and StatefulSets, the other controllers, ingresses), then by group directory, file name
and position in the file. Services come before the pods so pods get the <SVC>_SERVICE_HOST variables the
notes show; bare pods come before the controllers so a ReplicaSet adopts the pod made "by hand", as in the
notes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from infra import yamlload

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
    # With the bare pods, not the other controllers: no sample pod shares a namespace with one, and both start
    # their pods one by one (web waits minReadySeconds: 10 between them), so they are the slowest to settle.
    "StatefulSet": ("apps/v1", 4, True),
    # Jobs read no Service, claim or bare pod, and the notes' run longest: they start with the config.
    "Job": ("batch/v1", 2, True),
    "CronJob": ("batch/v1", 2, True),
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
            docs = [d for d in yamlload.load_all(path.read_text()) if d is not None]
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
