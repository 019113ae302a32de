"""The AWS backend, run against Pulumi mocks: no cloud is contacted.

These check what would be asked of the provider (resources, their inputs, every firewall rule); they
cannot check that AWS accepts it.
"""

from __future__ import annotations

import pulumi
import pytest

from infra import spec as cluster_spec
from infra.machines import aws as aws_machines

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyMaterialForTestsOnly pilothouse"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\ntest\n-----END OPENSSH PRIVATE KEY-----\n"
OPERATOR = "198.51.100.7/32"


class Mocks(pulumi.runtime.Mocks):
    def __init__(self, component_type: str) -> None:
        self.component_type = component_type
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        state = dict(args.inputs)
        if args.typ == "aws:ec2/instance:Instance":
            state["privateIp"] = args.inputs["privateIp"]
            state["publicIp"] = "203.0.113." + args.inputs["privateIp"].rsplit(".", 1)[1]
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args)
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0debian12", "architecture": "x86_64"}
        raise NotImplementedError(f"the mocks do not implement {args.token}")


def run(component_type: str, build) -> tuple[Mocks, dict]:
    """Run `build()` as a program against fresh mocks; return the mocks and the component's outputs."""
    mocks = Mocks(component_type)
    pulumi.runtime.set_mocks(mocks, project="pilothouse", stack="test", preview=False)
    outputs: dict = {}

    @pulumi.runtime.test
    def program():
        component = build()
        names = [
            n
            for n in ("machines", "ssh_user", "ssh_private_key", "api_public_address")
            if hasattr(component, n)
        ]
        return pulumi.Output.all(*[getattr(component, n) for n in names]).apply(
            lambda values: outputs.update(zip(names, values, strict=True))
        )

    program()
    return mocks, outputs


def urn(mocks: Mocks, res: pulumi.runtime.MockResourceArgs) -> str:
    # Every resource here is a direct child of the component, hence the one-level parent type.
    return f"urn:pulumi:test::pilothouse::{mocks.component_type}${res.typ}::{res.name}"


def of_type(mocks: Mocks, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
    return [r for r in mocks.resources if r.typ == typ]


def aws_spec(**overrides) -> cluster_spec.ClusterSpec:
    cfg = {"backend": "aws", "podNetwork": "vxlan", "operatorCidr": OPERATOR, **overrides}
    return cluster_spec.from_config(cfg)


def run_aws(spec: cluster_spec.ClusterSpec) -> tuple[Mocks, dict]:
    args = aws_machines.AwsMachinesArgs(spec=spec, ssh_public_key=PUBLIC_KEY, ssh_private_key=PRIVATE_KEY)
    return run("pilothouse:machines:AwsMachines", lambda: aws_machines.AwsMachines("aws", args))


@pytest.fixture(scope="module")
def default_aws():
    return run_aws(aws_spec())


# --- AWS ---------------------------------------------------------------------------------------------


def test_aws_creates_one_instance_per_machine_at_its_spec_address(default_aws):
    mocks, outputs = default_aws
    spec = aws_spec()
    instances = {r.inputs["tags"]["Name"]: r for r in of_type(mocks, "aws:ec2/instance:Instance")}
    assert sorted(instances) == sorted(m.name for m in spec.machines)
    for m in spec.machines:
        res = instances[m.name]
        assert res.inputs["privateIp"] == m.address, f"{urn(mocks, res)}: private IP is not the spec address"
        assert res.inputs["ami"] == "ami-0debian12", f"{urn(mocks, res)}: not the looked-up Debian AMI"
        assert f"hostname: {m.name}" in res.inputs["userData"], f"{urn(mocks, res)}: hostname not set"
    assert [m["name"] for m in outputs["machines"]] == [m.name for m in spec.machines]
    assert outputs["machines"][0] == {
        "name": "pilothouse-lb-1",
        "roles": ["lb"],
        "address": "10.77.0.10",
        "ssh_address": "203.0.113.10",
        "ssh_user": "admin",
        "ssh_key_file": "",
        "jump_host": "",
        "ssh_host_key": "",  # made at first boot: recorded on first use
    }
    assert outputs["ssh_user"] == "admin"
    assert outputs["ssh_private_key"] == PRIVATE_KEY
    assert outputs["api_public_address"] == "203.0.113.10"


def test_aws_looks_up_debian_ami_from_debians_account(default_aws):
    mocks, _ = default_aws
    (call,) = [c for c in mocks.calls if c.token == "aws:ec2/getAmi:getAmi"]
    assert call.args["owners"] == [aws_machines.DEBIAN_AMI_OWNER]
    assert {"name": "name", "values": ["debian-12-amd64-*"]} in call.args["filters"]


def test_aws_network_is_one_vpc_and_public_subnet_on_the_machine_cidr(default_aws):
    mocks, _ = default_aws
    (vpc,) = of_type(mocks, "aws:ec2/vpc:Vpc")
    (subnet,) = of_type(mocks, "aws:ec2/subnet:Subnet")
    assert vpc.inputs["cidrBlock"] == "10.77.0.0/24", urn(mocks, vpc)
    assert subnet.inputs["cidrBlock"] == "10.77.0.0/24", urn(mocks, subnet)
    (table,) = of_type(mocks, "aws:ec2/routeTable:RouteTable")
    assert table.inputs["routes"] == [{"cidrBlock": "0.0.0.0/0", "gatewayId": "aws-gateway-id"}], urn(
        mocks, table
    )
    (key,) = of_type(mocks, "aws:ec2/keyPair:KeyPair")
    assert key.inputs["publicKey"] == PUBLIC_KEY


def ingress(mocks: Mocks) -> dict[str, dict]:
    """Ingress rules keyed by `<group>-<rule>`, with group ids translated back to group names."""
    group_ids = {
        f"{r.name}-id": r.name.removeprefix("aws-")
        for r in of_type(mocks, "aws:ec2/securityGroup:SecurityGroup")
    }
    rules = {}
    for r in of_type(mocks, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"):
        i = r.inputs
        rules[r.name.removeprefix("aws-")] = {
            "urn": urn(mocks, r),
            "group": group_ids[i["securityGroupId"]],
            "protocol": i["ipProtocol"],
            "ports": (i["fromPort"], i["toPort"]),
            "from": i.get("cidrIpv4") or group_ids[i["referencedSecurityGroupId"]],
        }
    return rules


EXPECTED_DEFAULT_RULES = {
    # rule: (group, protocol, ports, source)
    "ssh-ssh-operator": ("ssh", "tcp", (22, 22), OPERATOR),
    "lb-api-operator": ("lb", "tcp", (6443, 6443), OPERATOR),
    "lb-api-nodes": ("lb", "tcp", (6443, 6443), "node"),
    "master-api-lb": ("master", "tcp", (6443, 6443), "lb"),
    "master-api-nodes-direct": ("master", "tcp", (6443, 6443), "node"),
    "etcd-etcd-peers": ("etcd", "tcp", (2379, 2380), "etcd"),
    "node-kubelet-control-plane": ("node", "tcp", (10250, 10250), "master"),
    "node-nodeports-tcp": ("node", "tcp", (30000, 32767), OPERATOR),
    "node-nodeports-udp": ("node", "udp", (30000, 32767), OPERATOR),
    "node-pod-network-vxlan": ("node", "udp", (8472, 8472), "node"),
}


def test_aws_firewall_opens_exactly_the_ports_the_cluster_needs(default_aws):
    mocks, _ = default_aws
    rules = ingress(mocks)
    unexpected = {n: r["urn"] for n, r in rules.items() if n not in EXPECTED_DEFAULT_RULES}
    assert not unexpected, f"ingress rules nobody asked for: {unexpected}"
    for name, (group, protocol, ports, source) in EXPECTED_DEFAULT_RULES.items():
        assert name in rules, (
            f"missing ingress rule {name}: {group} must admit {protocol} {ports} from {source}"
        )
        got = rules[name]
        assert (got["group"], got["protocol"], got["ports"], got["from"]) == (
            group,
            protocol,
            ports,
            source,
        ), f"{got['urn']}: rule {name} should admit {protocol} {ports} from {source} into {group}, got {got}"


def test_aws_no_rule_opens_anything_to_the_whole_internet(default_aws):
    mocks, _ = default_aws
    for name, rule in ingress(mocks).items():
        assert rule["from"] != "0.0.0.0/0", f"{rule['urn']}: rule {name} is open to 0.0.0.0/0"


def test_aws_machines_join_only_the_groups_of_their_roles(default_aws):
    mocks, _ = default_aws
    group_ids = {
        f"{r.name}-id": r.name.removeprefix("aws-")
        for r in of_type(mocks, "aws:ec2/securityGroup:SecurityGroup")
    }
    expected = {"lb": ["lb", "ssh"], "master": ["etcd", "master", "node", "ssh"], "worker": ["node", "ssh"]}
    for res in of_type(mocks, "aws:ec2/instance:Instance"):
        role = res.inputs["tags"]["Name"].split("-")[1]
        got = sorted(group_ids[g] for g in res.inputs["vpcSecurityGroupIds"])
        assert got == expected[role], (
            f"{urn(mocks, res)}: a {role} must be in groups {expected[role]}, got {got}"
        )


def test_aws_external_etcd_admits_clients_only_from_the_control_plane():
    mocks, _ = run_aws(aws_spec(etcdNodes=3))
    rules = ingress(mocks)
    client = rules["etcd-etcd-clients"]
    assert (client["protocol"], client["ports"], client["from"]) == ("tcp", (2379, 2379), "master"), client[
        "urn"
    ]
    assert rules["etcd-etcd-peers"]["from"] == "etcd", rules["etcd-etcd-peers"]["urn"]
    groups = {
        r.inputs["tags"]["Name"]: r.inputs["vpcSecurityGroupIds"]
        for r in of_type(mocks, "aws:ec2/instance:Instance")
    }
    assert sorted(groups["pilothouse-etcd-1"]) == ["aws-etcd-id", "aws-ssh-id"]
    assert "aws-etcd-id" not in groups["pilothouse-master-1"], (
        "masters must not join etcd's group when etcd is external"
    )


def test_aws_without_lb_opens_the_api_on_the_master_to_the_operator_only():
    mocks, outputs = run_aws(aws_spec(ha=False, masters=1, lbs=0))
    rules = ingress(mocks)
    api = rules["master-api-operator"]
    assert (api["protocol"], api["ports"], api["from"]) == ("tcp", (6443, 6443), OPERATOR), api["urn"]
    assert not [n for n in rules if n.startswith("lb-") or n == "master-api-lb"], (
        "rules for a LB that does not exist"
    )
    assert outputs["api_public_address"] == "203.0.113.20"


def test_aws_refuses_a_spec_for_another_backend():
    spec = cluster_spec.from_config({})
    with pytest.raises(cluster_spec.SpecError, match="AwsMachines builds only backend 'aws'"):
        run_aws(spec)
