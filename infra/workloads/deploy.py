"""The sample manifests deployed with pulumi-kubernetes: one Samples component, one child per object.

Each object is its own child resource, so removing one manifest and running `pulumi up` removes exactly that
object. verify() checks their behaviour afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import pulumi
import pulumi_kubernetes as k8s

from infra.workloads.keys import with_generated_keys
from infra.workloads.manifests import KINDS, load_sources, object_key


def resource_name(obj: dict) -> str:
    """The object's child name under Samples (kind-namespace-name): part of its Pulumi URN, so keep it stable."""
    kind, namespace, name = object_key(obj)
    return "-".join(p for p in (kind.lower(), namespace, name) if p)


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
