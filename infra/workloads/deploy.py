"""The sample manifests deployed with pulumi-kubernetes: one Samples component, one child per object.

Each object is its own child resource, so removing one manifest and running `pulumi up` removes exactly that
object. It is registered directly with pulumi-kubernetes' type for its kind: wrapping each in a ConfigGroup
cost the provider a component construction per object in every `up`, no-op ones included. verify() checks
their behaviour afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import pulumi
import pulumi_kubernetes as k8s

from infra.workloads.keys import with_generated_keys
from infra.workloads.manifests import KINDS, load_sources, object_key


SKIP_AWAIT = {"pulumi.com/skipAwait": "true"}

# The add-ons a sample needs before it is created; every other sample is applied while the add-ons come up.
STORAGE, INGRESS = "storage", "ingress"


def addon_needed(obj: dict) -> Optional[str]:
    """STORAGE for an object whose claims take the default StorageClass (it is set when a claim is created),
    INGRESS for an Ingress (the controller and its class), None for the rest. A LoadBalancer Service needs
    nothing first: MetalLB gives it an address whenever its pool appears, and pods read only its ClusterIP."""
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind == "Ingress":
        return INGRESS
    if kind == "PersistentVolumeClaim":
        claims = [spec]
    elif kind == "StatefulSet":
        claims = [template.get("spec") or {} for template in spec.get("volumeClaimTemplates") or []]
    else:
        claims = []
    return STORAGE if any("storageClassName" not in claim for claim in claims) else None


def resource_name(obj: dict) -> str:
    """The object's child name under Samples (kind-namespace-name): part of its Pulumi URN, so keep it stable."""
    kind, namespace, name = object_key(obj)
    return "-".join(p for p in (kind.lower(), namespace, name) if p)


def type_token(obj: dict) -> str:
    """pulumi-kubernetes' resource type for the object's apiVersion and kind, e.g. kubernetes:apps/v1:Deployment."""
    group, _, version = obj["apiVersion"].rpartition("/")
    return f"kubernetes:{group or 'core'}/{version}:{obj['kind']}"


def grouped_urn(parent_urn: str, group: str, obj: dict) -> str:
    """The URN the object has as a child of ConfigGroup `group` under the component at parent_urn. Given as an
    alias where an object left its group (each sample had one of its own in stacks made before 2026-12-05), so
    a stack made before keeps the object instead of replacing it."""
    prefix = parent_urn.rsplit("::", 1)[0]
    _, namespace, name = object_key(obj)
    ident = f"{namespace}/{name}" if namespace else name
    return f"{prefix}$kubernetes:yaml/v2:ConfigGroup${type_token(obj)}::{group}:{ident}"


def resource_inputs(obj: dict, secret: bool) -> dict:
    """The object as the resource's inputs: await logic skipped (pulumi-kubernetes' annotation), and with
    `secret`, everything but its identity kept secret in the state (generated key material)."""
    metadata = obj["metadata"]
    inputs = {**obj, "metadata": {**metadata, "annotations": {**metadata.get("annotations", {}), **SKIP_AWAIT}}}
    if secret:
        inputs = {k: v if k in ("apiVersion", "kind", "metadata") else pulumi.Output.secret(v)
                  for k, v in inputs.items()}
    return inputs


@dataclass
class SamplesArgs:
    kubeconfig: Any                       # pulumi.Input[str], a secret Output: the cluster's admin kubeconfig
    manifests_dir: Path                   # the workloads/ directory
    keys_dir: Path                        # where generated TLS/SSH keys are kept between runs (outside git)
    node_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)   # e.g. {"w1": {"disk": "ssd"}}
    external_ip: Optional[str] = None     # replaces W04's lab address 192.168.0.30 when given
    # STORAGE / INGRESS -> the add-on resource that provides it: the samples that need one (addon_needed) wait
    addons: Mapping[str, pulumi.Resource] = field(default_factory=dict)


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
    <SVC>_SERVICE_HOST variables. Only the objects addon_needed() names wait for an add-on (and, through the
    stage order, what follows them), so the rest start while the add-ons come up. Await logic is skipped:
    several samples are meant to wait (a pod for its node label, a claim for its first consumer), and verify()
    checks behaviour afterwards.
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
            needed = addon_needed(obj)
            needs = [args.addons[needed]] if needed in args.addons else []
            former = self.urn.apply(lambda urn, child=child, obj=obj: grouped_urn(urn, child, obj))
            current.append(pulumi.CustomResource(
                type_token(obj), child, resource_inputs(obj, has_keys),
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider, aliases=[former],
                                            depends_on=list(previous) + needs)))
            names.append(child)
        self.objects = names
        self.register_outputs({"objects": names})
