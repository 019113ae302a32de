"""The pilothouse Pulumi program: machines, the registry they pull from, the playbook, then the add-ons and
the notes' sample workloads.

`main` is what `pulumi up` and `invoke up` run; `build` is the same program for any spec, manifests
directory and LoadBalancer address range, which is how the tests' shared cluster is made.
The program builds nothing: every artifact and image is looked up in the cache (`invoke artifacts` builds
them), so a missing one stops the program with that advice before any resource is touched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi import Output, ResourceOptions, dynamic

from infra import addons, kube, playbook, spec as spec_mod, workloads
from infra.artifacts import ArtifactError, images, registry
from infra.machines import aws_credentials, vm
from infra.machines.errors import MachineError
from infra.machines.existing import ExistingHosts
from infra.machines.provider import LocalMachines, SshKey

REGISTRY_PORT = 5000
REPO = Path(__file__).resolve().parent.parent


def registry_endpoint(spec: spec_mod.ClusterSpec) -> str:
    """The registry listens on the host's address on the cluster's bridge, the only host address machines reach."""
    return f"{spec.host_address}:{REGISTRY_PORT}"


class _RegistryProvider(dynamic.ResourceProvider):
    """The local OCI registry on the machines' bridge, holding every image the cluster pulls: read-only there,
    written only through a temporary daemon on this host's loopback (registry.publish)."""

    def create(self, props):
        handle = registry.start([props["listen"]], readonly=True)
        registry.publish(handle.home, images.ensure_images(build=False), log=lambda _msg: None)
        return dynamic.CreateResult(id_=props["listen"], outs={**props, "endpoint": handle.endpoint})

    def read(self, id_, props):
        # After a host reboot the registry process is gone: report the resource missing so refresh recreates it.
        return dynamic.ReadResult(id_=id_ if registry.answers(id_) else "", outs=props)

    def diff(self, id_, olds, news):
        moved = olds.get("listen") != news.get("listen")
        # `mode` is absent from the state of a registry made before it was read-only: that one is restarted. So
        # is one whose process is gone (a host reboot, or a killed `up` that had started it): without it no
        # machine pulls an image.
        changed = moved or any(olds.get(k) != news.get(k) for k in ("images", "mode")) or not registry.answers(id_)
        return dynamic.DiffResult(changes=changed, replaces=["listen"] if moved else [])

    def update(self, id_, olds, news):
        handle = registry.start([olds["listen"]], readonly=True)
        registry.publish(handle.home, images.ensure_images(build=False), log=lambda _msg: None)
        return dynamic.UpdateResult(outs={**news, "endpoint": olds["endpoint"]})

    def delete(self, id_, props):
        registry.stop(listen=id_)


class LocalRegistry(dynamic.Resource):
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, listen: str, digests: list[str], opts: ResourceOptions | None = None):
        # The image digests are an input, so a rebuilt image is pushed by the next `pulumi up`.
        super().__init__(_RegistryProvider(), name,
                         {"listen": listen, "images": digests, "mode": "read-only", "endpoint": None}, opts)


def machines_for(name: str, spec: spec_mod.ClusterSpec, opts: ResourceOptions) -> pulumi.ComponentResource:
    """The machines of the spec, from the backend it names; each has the outputs infra/machines/__init__.py lists."""
    if spec.backend == "local":
        return LocalMachines(name, spec, opts)
    if spec.backend == "existing":
        return ExistingHosts(name, spec, registry=spec.host_address, opts=opts)
    if spec.backend == "libvirt":
        from infra.machines.libvirt import LibvirtMachines

        try:
            vm.check_hypervisor(spec.libvirt.uri)
        except MachineError as exc:
            raise pulumi.RunError(str(exc)) from None
        return LibvirtMachines(name, spec, opts)
    if spec.backend == "aws":
        from infra.machines import aws  # late: pulumi_aws is large, and only this backend needs it

        aws_credentials.require()
        key = SshKey(f"{name}-ssh", comment=f"pilothouse-{spec.name}", opts=opts)
        return aws.AwsMachines(name, aws.AwsMachinesArgs(spec, key.public_key, key.private_key), opts)
    raise pulumi.RunError(f"pilothouse:backend {spec.backend!r} is not a backend")


@dataclass(frozen=True)
class ClusterArgs:
    spec: spec_mod.ClusterSpec


# The API servers start on their own when stopped machines start again (after a host reboot), while the
# playbook, with nothing changed, does not run: without this wait pulumi-kubernetes would read a cluster still
# coming up and fail. Seconds once the API answers; a preview touches nothing and waits for nothing.
API_READY_TIMEOUT = 300.0


def answering(kubeconfig: Path) -> str:
    """`kubeconfig`'s path, once the API answers /readyz through it (in an update, when the file exists)."""
    if not pulumi.runtime.is_dry_run() and kubeconfig.exists():
        kube.wait_readyz(str(kubeconfig), API_READY_TIMEOUT)
    return str(kubeconfig)


class Cluster(pulumi.ComponentResource):
    """Machines + registry + the configured Kubernetes cluster."""

    admin_kubeconfig: pulumi.Output[str]
    playbook: playbook.Playbook
    inventory: pulumi.Output[str]
    machines: pulumi.Output[list]
    playbook_vars: pulumi.Output[str]
    pinned_images: dict[str, str]      # image ref -> the same image by digest ({} when pulled from upstream)
    ssh_private_key: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs, opts: ResourceOptions | None = None):
        super().__init__("pilothouse:cluster:Cluster", name, None, opts)
        spec = args.spec
        hosts = machines_for(f"{name}-machines", spec, ResourceOptions(parent=self))
        # How images reach the machines is the backend's to say: through the registry mirror this host runs on
        # the machine network, or from the upstream registries (an empty mirror).
        ready: list[pulumi.Resource] = [hosts]
        mirror_url = ""
        # Through the mirror, the images the project deploys itself (pause, CoreDNS, the add-ons) are pulled
        # by the digest of the local build; from upstream they keep their tags (their digests differ).
        self.pinned_images = {}
        if hosts.images_from_host:
            families = images.ensure_images(build=False)
            digests = sorted(t.digest for family in families for t in family.tags)
            ready.append(LocalRegistry(f"{name}-registry", registry_endpoint(spec), digests,
                                       opts=ResourceOptions(parent=self, depends_on=[hosts])))
            mirror_url = f"http://{registry_endpoint(spec)}"
            self.pinned_images = registry.pinned_refs(families)
        workdir = playbook.cluster_dir(spec.name)
        # Known once the machines are (a cloud's public addresses); it carries the dependency on them.
        inventory = hosts.machines.apply(lambda machines: json.dumps(playbook.inventory(spec, machines)))
        extravars = json.dumps(playbook.extravars(spec, mirror_url, self.pinned_images))
        run = playbook.Playbook(
            f"{name}-playbook", inventory=inventory, extravars=extravars,
            ssh_private_key=hosts.ssh_private_key, log_dir=str(workdir / "logs"),
            opts=ResourceOptions(parent=self, depends_on=ready))
        # Known once the playbook has run; keyed on its id (known in a preview of an update, unlike its
        # outputs), so a preview that re-runs the playbook does not show the Kubernetes providers replaced.
        self.admin_kubeconfig = run.id.apply(lambda _: answering(workdir / "admin.kubeconfig"))
        self.playbook = run
        self.inventory = inventory
        self.machines = hosts.machines
        self.playbook_vars = Output.from_input(extravars)
        self.ssh_private_key = hosts.ssh_private_key
        self.register_outputs({"admin_kubeconfig": self.admin_kubeconfig, "inventory": self.inventory,
                               "playbook_vars": self.playbook_vars, "ssh_private_key": self.ssh_private_key})


def deleted_with(target: pulumi.Resource) -> ResourceOptions:
    """Options for a component whose every resource lives inside the cluster: when the cluster goes too
    (`pulumi destroy`), Pulumi skips deleting them one by one, since the machines take them along. Removing
    one of them alone (a manifest deleted) still deletes it. The option is set on each child, which does
    not inherit it from its component."""

    def mark(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult:
        return pulumi.ResourceTransformationResult(
            args.props, ResourceOptions.merge(args.opts, ResourceOptions(deleted_with=target)))

    return ResourceOptions(transformations=[mark])


def build(spec: spec_mod.ClusterSpec, manifests_dir: Path = REPO / "workloads", lb_range: str | None = None) -> None:
    """The whole program for one spec: the cluster, its add-ons, the samples from `manifests_dir`, and the
    stack outputs the invoke tasks read. `lb_range` is MetalLB's pool (default: the spec's)."""
    cluster = Cluster(spec.name, ClusterArgs(spec))
    used = tuple(m.address for m in spec.machines) + (spec.host_address,)
    cluster_addons = addons.Addons(f"{spec.name}-addons", addons.AddonsArgs(
        kubeconfig=cluster.admin_kubeconfig, lb_address_range=lb_range or spec.lb_address_range,
        machine_cidr=str(spec.machine_cidr), used_addresses=used, pinned_images=cluster.pinned_images,
        keys_dir=playbook.cluster_dir(spec.name) / "addon-keys"),
        opts=ResourceOptions.merge(deleted_with(cluster.playbook), ResourceOptions(depends_on=[cluster])))
    # The notes' sample workloads, beside the add-ons: only those that need the default StorageClass or the
    # ingress controller wait for that add-on (workloads.addon_needed).
    workloads.Samples(f"{spec.name}-samples", workloads.SamplesArgs(
        kubeconfig=workloads.kubeconfig_content(cluster.admin_kubeconfig), manifests_dir=manifests_dir,
        keys_dir=playbook.cluster_dir(spec.name) / "workload-keys",
        node_labels=workloads.default_node_labels([m.name for m in spec.workers]),
        addons={workloads.STORAGE: cluster_addons.storage, workloads.INGRESS: cluster_addons.ingress}),
        ResourceOptions.merge(deleted_with(cluster.playbook), ResourceOptions(depends_on=[cluster])))
    pulumi.export("ingress_address", cluster_addons.ingress_address)
    pulumi.export("admin_kubeconfig", cluster.admin_kubeconfig)
    pulumi.export("inventory", cluster.inventory)
    pulumi.export("playbook_vars", cluster.playbook_vars)  # with the inventory: what `invoke playbook` re-runs
    pulumi.export("ssh_private_key", Output.secret(cluster.ssh_private_key))
    # name, roles, address (what `invoke status` and the tests read) and how SSH reaches each machine.
    pulumi.export("machines", cluster.machines)


def main() -> None:
    spec = spec_mod.load()
    # A missing artifact or a bad add-on setting is a message for the user, not a program crash: RunError
    # makes Pulumi print it without a Python traceback.
    try:
        build(spec)
    except (ArtifactError, addons.AddonsError) as exc:
        raise pulumi.RunError(str(exc)) from None
