"""The pilothouse Pulumi program: machines, then the registry they pull from, then the playbook."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi import Output, ResourceOptions, dynamic

from infra import addons, artifacts, configure, spec as spec_mod, workloads
from infra.artifacts import images, registry
from infra.machines import provider as local_provider

REGISTRY_PORT = 5000
REPO = Path(__file__).resolve().parent.parent


def registry_endpoint(spec: spec_mod.ClusterSpec) -> str:
    """The registry listens on the host's address on the cluster's bridge, the only host address machines reach."""
    return f"{spec.host_address}:{REGISTRY_PORT}"


def bridge_name(spec: spec_mod.ClusterSpec) -> str:
    """One host bridge per cluster, so two stacks on one host never share a network (IFNAMSIZ is 15)."""
    return f"ph-{spec.name}"[:15]


CLUSTERS_ROOT = Path.home() / ".local" / "share" / "pilothouse"


def cluster_dir(spec: spec_mod.ClusterSpec) -> Path:
    """Where the cluster's PKI, admin kubeconfig and playbook logs live on this host, kept across runs."""
    return CLUSTERS_ROOT / spec.name


class _RegistryProvider(dynamic.ResourceProvider):
    """The local OCI registry on the machines' bridge, holding every image the cluster pulls."""

    def create(self, props):
        handle = registry.start([props["listen"]])
        registry.push_all(handle.endpoint, images.ensure_images(), log=lambda _msg: None)
        return dynamic.CreateResult(id_=props["listen"], outs={**props, "endpoint": handle.endpoint})

    def read(self, id_, props):
        # After a host reboot the registry process is gone: report the resource missing so refresh recreates it.
        return dynamic.ReadResult(id_=id_ if registry.answers(id_) else "", outs=props)

    def diff(self, id_, olds, news):
        moved = olds.get("listen") != news.get("listen")
        return dynamic.DiffResult(changes=moved or olds.get("images") != news.get("images"),
                                  replaces=["listen"] if moved else [])

    def update(self, id_, olds, news):
        registry.push_all(olds["endpoint"], images.ensure_images(), log=lambda _msg: None)
        return dynamic.UpdateResult(outs={**news, "endpoint": olds["endpoint"]})

    def delete(self, id_, props):
        registry.stop(listen=id_)


class LocalRegistry(dynamic.Resource):
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, listen: str, opts: ResourceOptions | None = None):
        # The image digests are an input, so a rebuilt image is pushed by the next `pulumi up`.
        digests = sorted(t.digest for family in images.ensure_images(log=lambda _msg: None) for t in family.tags)
        super().__init__(_RegistryProvider(), name, {"listen": listen, "images": digests, "endpoint": None}, opts)


@dataclass(frozen=True)
class ClusterArgs:
    spec: spec_mod.ClusterSpec


class LocalMachines(pulumi.ComponentResource):
    """Every machine of the spec as a systemd-nspawn machine on this host, sharing one SSH key."""

    machines: list[local_provider.LocalMachine]
    ssh_private_key: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs, opts: ResourceOptions | None = None):
        super().__init__("pilothouse:machines:LocalMachines", name, None, opts)
        spec = args.spec
        child = ResourceOptions(parent=self)
        key = local_provider.SshKey(f"{name}-ssh", comment=f"pilothouse-{spec.name}", opts=child)
        self.machines = [
            local_provider.LocalMachine(f"{name}-{m.name}", local_provider.LocalMachineArgs(
                name=m.name, address=m.address, cidr=str(spec.machine_cidr), bridge=bridge_name(spec),
                ssh_public_key=key.public_key, ssh_private_key=key.private_key), opts=child)
            for m in spec.machines
        ]
        self.ssh_private_key = key.private_key
        self.register_outputs({"addresses": [m.address for m in self.machines],
                               "ssh_private_key": self.ssh_private_key})


class Cluster(pulumi.ComponentResource):
    """Machines + registry + the configured Kubernetes cluster, for the local backend."""

    admin_kubeconfig: pulumi.Output[str]
    inventory: pulumi.Output[str]
    playbook_vars: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterArgs, opts: ResourceOptions | None = None):
        super().__init__("pilothouse:cluster:Cluster", name, None, opts)
        spec = args.spec
        hosts = LocalMachines(f"{name}-machines", args, ResourceOptions(parent=self))
        machines = hosts.machines
        mirror = LocalRegistry(f"{name}-registry", registry_endpoint(spec),
                               opts=ResourceOptions(parent=self, depends_on=machines))
        workdir = cluster_dir(spec)
        inventory = spec.inventory()
        extravars = mirror.endpoint.apply(lambda endpoint: json.dumps(role_vars(spec, endpoint, workdir)))
        playbook = configure.Playbook(
            f"{name}-playbook", inventory=json.dumps(inventory), extravars=extravars,
            ssh_private_key=hosts.ssh_private_key, log_dir=str(workdir / "logs"),
            opts=ResourceOptions(parent=self, depends_on=[*machines, mirror]))
        self.admin_kubeconfig = playbook.changed.apply(lambda _: str(workdir / "admin.kubeconfig"))
        self.inventory = Output.from_input(json.dumps(inventory))
        self.playbook_vars = extravars
        self.ssh_private_key = hosts.ssh_private_key
        self.register_outputs({"admin_kubeconfig": self.admin_kubeconfig, "inventory": self.inventory,
                               "playbook_vars": self.playbook_vars, "ssh_private_key": self.ssh_private_key})


def role_vars(spec: spec_mod.ClusterSpec, registry_endpoint: str, workdir: Path) -> dict:
    """The variables of roles/README.md that the inventory (spec.inventory) does not carry."""
    return {
        # Only what the roles install: a new add-on artifact must not re-run the playbook.
        "pilothouse_binaries": artifacts.binaries([artifacts.ensure_go(n) for n in ("kubernetes", "etcd")]),
        "pilothouse_registry_mirror": f"http://{registry_endpoint}",
        "pilothouse_pki_dir": str(workdir / "pki"),
        "pilothouse_admin_kubeconfig": str(workdir / "admin.kubeconfig"),
    }


def load_balancer_range(spec: spec_mod.ClusterSpec) -> str:
    """Addresses MetalLB hands to LoadBalancer Services: .200-.220 of the machine network, where no machine sits."""
    net = spec.machine_cidr
    if net.num_addresses < 256:
        raise spec_mod.SpecError([f"machineCidr {net} is smaller than a /24: LoadBalancer Services take its "
                                  ".200-.220; use a /24 or larger"])
    return f"{net[200]}-{net[220]}"


def main() -> None:
    spec = spec_mod.from_pulumi_config()
    if spec.backend != "local":
        raise spec_mod.SpecError([f"backend {spec.backend!r}: only `local` is wired into `pulumi up` so far; "
                                  "the libvirt and aws components are tested with mocks only"])
    cluster = Cluster(spec.name, ClusterArgs(spec))
    used = tuple(m.address for m in spec.machines) + (spec.host_address,)
    cluster_addons = addons.Addons(f"{spec.name}-addons", addons.AddonsArgs(
        kubeconfig=cluster.admin_kubeconfig, lb_address_range=load_balancer_range(spec),
        machine_cidr=str(spec.machine_cidr), used_addresses=used), opts=ResourceOptions(depends_on=[cluster]))
    pulumi.export("ingress_address", cluster_addons.ingress_address)
    # The notes' sample workloads, after the add-ons they need (ingress, LoadBalancer, storage).
    workloads.Samples(f"{spec.name}-samples", workloads.SamplesArgs(
        kubeconfig=workloads.kubeconfig_content(cluster.admin_kubeconfig), manifests_dir=REPO / "workloads",
        keys_dir=cluster_dir(spec) / "workload-keys",
        node_labels=workloads.default_node_labels([m.name for m in spec.workers])),
        ResourceOptions(depends_on=[cluster, cluster_addons]))
    pulumi.export("admin_kubeconfig", cluster.admin_kubeconfig)
    pulumi.export("inventory", cluster.inventory)
    pulumi.export("playbook_vars", cluster.playbook_vars)  # with the inventory: what `invoke playbook` re-runs
    pulumi.export("ssh_private_key", Output.secret(cluster.ssh_private_key))
    pulumi.export("machines", [{"name": m.name, "roles": list(m.roles), "address": m.address}
                               for m in spec.machines])
