"""The whole program `pulumi up` runs (infra.program.main), under Pulumi mocks, for the backends that cannot run
here (aws), whose machines are someone else's (existing) or VMs (libvirt, whose live test is in
test_topologies.py): which resources it asks for, in which order, and
the inventory the playbook would get. The playbook itself never runs under mocks: its resource is recorded
with its inputs, and nothing connects to a machine.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pulumi
import pytest

from infra import kube, playbook, program
from infra.artifacts import images, registry
from infra.machines import aws_credentials, vm

pytestmark = pytest.mark.artifacts  # the program looks up the built binaries the playbook would copy

DYNAMIC = "pulumi-python:dynamic:Resource"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyMaterialForTestsOnly pilothouse"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\ntest\n-----END OPENSSH PRIVATE KEY-----\n"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example", "AWS_REGION": "eu-west-1"}


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        state = dict(args.inputs)
        if args.typ == DYNAMIC and args.name.endswith("-ssh"):
            state.update(public_key=PUBLIC_KEY, private_key=PRIVATE_KEY)
        if args.typ == "kubernetes:yaml/v2:ConfigGroup":
            # The objects the kubernetes provider would make: unknown here, as in a preview.
            state["resources"] = pulumi.runtime.rpc.UNKNOWN
        if args.typ == "aws:ec2/instance:Instance":
            state["publicIp"] = "203.0.113." + args.inputs["privateIp"].rsplit(".", 1)[1]
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0debian12", "architecture": "x86_64"}
        return {}


@pytest.fixture
def clusters_root(tmp_path, monkeypatch) -> Path:
    """The program reads the admin kubeconfig the playbook would write; here it is a placeholder, and no API
    server stands behind it to wait for."""
    monkeypatch.setattr(playbook, "CLUSTERS_ROOT", tmp_path / "clusters")
    monkeypatch.setattr(program.kube, "wait_readyz", lambda path, timeout: None)
    return tmp_path / "clusters"


def run_program(config: dict[str, str], clusters_root: Path, name: str, mocks: Mocks | None = None) -> Mocks:
    (clusters_root / name).mkdir(parents=True, exist_ok=True)
    (clusters_root / name / "admin.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    mocks = mocks or Mocks()
    pulumi.runtime.set_mocks(mocks, project="pilothouse", stack="test", preview=False)
    pulumi.runtime.set_all_config({"pilothouse:clusterName": name, **config})
    try:
        pulumi.runtime.test(program.main)()
    finally:
        pulumi.runtime.set_all_config({})
    return mocks


def named(mocks: Mocks, suffix: str) -> pulumi.runtime.MockResourceArgs:
    (found,) = [r for r in mocks.resources if r.name.endswith(suffix)]
    return found


def addon_images(mocks: Mocks, suffix: str) -> list[str]:
    """The container images of the workloads in an add-on's ConfigGroup."""
    group = named(mocks, f"-addons{suffix}")
    return [c["image"] for obj in group.inputs["objs"] if obj["kind"] in ("Deployment", "DaemonSet")
            for c in obj["spec"]["template"]["spec"]["containers"]]


# --- aws ---------------------------------------------------------------------------------------------------

AWS_CONFIG = {"pilothouse:backend": "aws", "pilothouse:podNetwork": "vxlan",
              "pilothouse:operatorCidr": "198.51.100.7/32"}


@pytest.fixture
def aws_run(clusters_root, monkeypatch) -> Mocks:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    return run_program(AWS_CONFIG, clusters_root, "phaws")


def test_aws_program_makes_the_network_instances_and_then_the_playbook(aws_run):
    types = [r.typ for r in aws_run.resources]
    assert types.count("aws:ec2/vpc:Vpc") == 1 and types.count("aws:ec2/subnet:Subnet") == 1
    assert types.count("aws:ec2/instance:Instance") == 6
    assert types.count("aws:ec2/securityGroup:SecurityGroup") == 5
    # No registry on this host: the instances cannot reach it and pull from the upstream registries instead.
    assert not [r for r in aws_run.resources if r.name.endswith("-registry")]
    run = named(aws_run, "-playbook")
    extravars = json.loads(run.inputs["extravars"])
    assert extravars["pilothouse_registry_mirror"] == ""
    # Upstream's digests are not the local builds': the images keep their tags (the roles' defaults).
    assert "containerd_sandbox_image" not in extravars and "coredns_image" not in extravars
    assert addon_images(aws_run, "-traefik") == ["docker.io/library/traefik:v3.6.12"]
    key = run.inputs["ssh_private_key"]
    assert key[pulumi.runtime.rpc._special_sig_key] == pulumi.runtime.rpc._special_secret_sig  # kept secret
    assert key["value"] == PRIVATE_KEY


def test_aws_inventory_keeps_private_node_addresses_and_connects_to_public_ones_as_admin(aws_run):
    inventory = json.loads(named(aws_run, "-playbook").inputs["inventory"])["all"]
    master = inventory["hosts"]["phaws-master-1"]
    assert master["ansible_host"] == "10.77.0.20"  # etcd, kubelet and the certificates use the VPC address
    # The instances make their host keys at first boot: recorded on first use in the cluster's known_hosts.
    known = playbook.cluster_dir("phaws") / "known_hosts"
    assert shlex.split(master["ansible_ssh_common_args"]) == [
        "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=accept-new", "-o", "HashKnownHosts=no",
        "-o", "HostName=203.0.113.20"]
    assert (master["ansible_user"], master["ansible_become"]) == ("admin", True)
    assert inventory["vars"]["pilothouse_pod_network"] == "vxlan"
    assert sorted(inventory["children"]["kube_node"]["hosts"]) == [
        "phaws-master-1", "phaws-master-2", "phaws-master-3", "phaws-worker-1", "phaws-worker-2"]


def test_aws_program_without_credentials_stops_before_creating_anything(clusters_root, monkeypatch, tmp_path):
    for key in (*AWS_ENV, "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    mocks = Mocks()
    with pytest.raises(pulumi.RunError) as caught:
        run_program(AWS_CONFIG, clusters_root, "phaws", mocks)
    message = str(caught.value)
    assert message.startswith("pilothouse:backend aws cannot start; nothing was created:")
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message and "aws:region" in message
    made = [r.typ for r in mocks.resources if r.typ.startswith("aws:") or r.typ == DYNAMIC]
    assert made == [], f"resources asked for before the credentials check: {made}"


def test_aws_credentials_are_found_in_a_profile_file(tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text("[work]\naws_access_key_id = AKIA\naws_secret_access_key = x\nregion = eu-north-1\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    assert aws_credentials.problems({**env, "AWS_PROFILE": "work"}, {}, tmp_path) == []
    missing = aws_credentials.problems(env, {}, tmp_path)  # the default profile has nothing
    assert len(missing) == 2 and "no AWS credentials" in missing[0] and "no AWS region" in missing[1]
    assert aws_credentials.problems(env, {"profile": "work"}, tmp_path) == []


# --- existing ----------------------------------------------------------------------------------------------


def test_existing_program_checks_and_claims_hosts_and_gives_the_playbook_their_keys(clusters_root, tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text(PRIVATE_KEY)
    hosts = ["lb address=10.77.0.10 roles=lb", *(f"m{i} address=10.77.0.2{i} roles=master,etcd" for i in (1, 2, 3)),
             "w1 address=10.77.0.40 roles=worker jump=10.77.0.10", "w2 address=10.77.0.41 roles=worker user=debian"]
    mocks = run_program({"pilothouse:backend": "existing", "pilothouse:sshKeyPath": str(key),
                         "pilothouse:hosts": json.dumps(hosts)}, clusters_root, "phbyo")
    check = named(mocks, "-machines-check")
    assert [h["name"] for h in check.inputs["hosts"]] == ["lb", "m1", "m2", "m3", "w1", "w2"]
    assert check.inputs["registry"] == "10.77.0.1"  # the mirror must listen on this host's machine-network address
    assert sorted(r.name.removeprefix("phbyo-machines-") for r in mocks.resources
                  if r.typ == DYNAMIC and r.inputs.get("cluster") == "phbyo" and "access" in r.inputs) == [
        "lb", "m1", "m2", "m3", "w1", "w2"]
    assert not [r for r in mocks.resources if "LocalMachine" in r.typ or r.name.endswith("-ssh")]  # nothing booted
    run = named(mocks, "-playbook")
    extravars = json.loads(run.inputs["extravars"])
    assert extravars["pilothouse_registry_mirror"] == "http://10.77.0.1:5000"
    # Through the mirror, what the project deploys is pulled by the digest of the local build.
    built = registry.pinned_refs(images.ensure_images(build=False))
    assert extravars["containerd_sandbox_image"] == built["registry.k8s.io/pause:3.10.1"]
    assert extravars["coredns_image"] == built["registry.k8s.io/coredns/coredns:v1.14.1"]
    assert addon_images(mocks, "-traefik") == [built["docker.io/library/traefik:v3.6.12"]]
    assert "@sha256:" in built["docker.io/library/traefik:v3.6.12"]
    inventory = json.loads(run.inputs["inventory"])["all"]["hosts"]
    known = playbook.cluster_dir("phbyo") / "known_hosts"
    assert inventory["m1"] == {"ansible_host": "10.77.0.21", "pilothouse_pod_subnet": "10.244.0.0/24",
                               "ansible_ssh_private_key_file": str(key), "ansible_ssh_common_args":
                               f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=accept-new -o HashKnownHosts=no"}
    assert "ProxyCommand=ssh -i" in inventory["w1"]["ansible_ssh_common_args"]
    assert "root@10.77.0.10" in inventory["w1"]["ansible_ssh_common_args"]
    assert (inventory["w2"]["ansible_user"], inventory["w2"]["ansible_become"]) == ("debian", True)


def test_libvirt_without_an_answering_hypervisor_is_refused_before_anything_is_created(clusters_root):
    mocks = Mocks()
    with pytest.raises(pulumi.RunError, match=r"libvirt at qemu:///system\?socket=\S+ does not answer: start it"):
        run_program({"pilothouse:backend": "libvirt",
                     "pilothouse:libvirtUri": f"qemu:///system?socket={clusters_root}/no-libvirt.sock"},
                    clusters_root, "phkvm", mocks)
    assert [r.typ for r in mocks.resources if not r.typ.startswith("pilothouse:")] == []


def test_libvirt_makes_vms_of_the_listed_roles_and_local_machines_of_the_rest(clusters_root, monkeypatch):
    monkeypatch.setattr(vm, "check_hypervisor", lambda uri: None)  # no hypervisor is asked under mocks
    mocks = run_program({"pilothouse:backend": "libvirt", "pilothouse:libvirtMachines": "worker",
                         "pilothouse:libvirtAccel": "tcg"}, clusters_root, "phkvm")
    machines = {r.name.removeprefix("phkvm-machines-"): r.inputs for r in mocks.resources
                if r.typ == DYNAMIC and "address" in r.inputs}
    vms = {name for name, inputs in machines.items() if "accel" in inputs}
    assert vms == {"phkvm-worker-1", "phkvm-worker-2"}
    assert set(machines) - vms == {"phkvm-lb-1", "phkvm-master-1", "phkvm-master-2", "phkvm-master-3"}
    worker = machines["phkvm-worker-1"]
    assert (worker["accel"], worker["uri"], worker["pool"], worker["bridge"]) == (
        "tcg", "qemu:///system", "default", "ph-phkvm")
    assert (worker["memory_mib"], worker["vcpus"]) == (2048, 2)
    # Every machine, VM or not, is on the one bridge, where the registry mirror listens.
    assert {inputs["bridge"] for inputs in machines.values()} == {"ph-phkvm"}
    registry_run = named(mocks, "-registry")
    assert registry_run.inputs["listen"] == "10.77.0.1:5000"


def test_the_kubernetes_objects_wait_for_the_api_in_an_update_but_not_in_a_preview(tmp_path, monkeypatch):
    # After a host reboot nothing else waits for the restarted API servers (the playbook has nothing to do).
    kubeconfig = tmp_path / "admin.kubeconfig"
    waited: list[str] = []
    monkeypatch.setattr(program.kube, "wait_readyz", lambda path, timeout: waited.append(path))
    monkeypatch.setattr(pulumi.runtime, "is_dry_run", lambda: False)
    assert program.answering(kubeconfig) == str(kubeconfig) and waited == []  # no cluster yet: nothing to ask
    kubeconfig.write_text("apiVersion: v1\n")
    assert program.answering(kubeconfig) == str(kubeconfig) and waited == [str(kubeconfig)]
    monkeypatch.setattr(pulumi.runtime, "is_dry_run", lambda: True)
    assert program.answering(kubeconfig) == str(kubeconfig) and waited == [str(kubeconfig)]


def test_an_api_that_never_answers_stops_the_wait_with_what_it_said(tmp_path):
    kubeconfig = tmp_path / "admin.kubeconfig"  # loopback, a port nothing listens on
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    with pytest.raises(kube.ApiNotReady, match=r"within 3s \(.*127.0.0.1:1 was refused.*invoke status"):
        kube.wait_readyz(str(kubeconfig), 3)
