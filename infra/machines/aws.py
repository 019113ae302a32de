"""AWS EC2 machines for a ClusterSpec, with the official pulumi_aws provider.

Tested only with Pulumi mocks (tests/test_cloud_backends.py): this project has no AWS account, so what
runs against the real API is unverified. It is kept thin for that reason: one VPC and public subnet
holding the machine CIDR, one instance per machine at its spec address, and security groups that admit
only the traffic the cluster needs. The firewall is `firewall_rules(spec)`, plain data, so it can be read
and tested apart from the resources.

Pod traffic between nodes must be VXLAN on AWS (the spec enforces it): encapsulated, it travels as
UDP 8472 between node addresses, so one rule covers pod-to-pod, node-to-pod and masqueraded Service
hops without opening every port between nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.spec_model import API_PORT, ClusterSpec, SpecError

# Debian's own AMIs (the account Debian publishes its cloud images from); the default user is "admin".
DEBIAN_AMI_OWNER = "136693071363"
DEBIAN_AMI_NAME = "debian-12-amd64-*"
SSH_USER = "admin"
VXLAN_PORT = 8472
NODE_PORTS = (30000, 32767)
ETCD_CLIENT, ETCD_PEER = 2379, 2380
KUBELET_PORT = 10250

# Security groups by what they guard; a machine joins every group one of its roles maps to.
GROUPS = ("ssh", "lb", "master", "etcd", "node")
ROLE_GROUPS = {"lb": ("lb",), "master": ("master", "node"), "worker": ("node",), "etcd": ("etcd",)}


@dataclass(frozen=True)
class Rule:
    """One inbound rule: `group` admits `protocol` on ports `ports` from a CIDR or from another group."""

    name: str
    group: str
    protocol: str  # "tcp" or "udp"
    ports: tuple[int, int]
    why: str
    source_cidr: str | None = None
    source_group: str | None = None


def firewall_rules(spec: ClusterSpec) -> list[Rule]:
    operator = spec.aws.operator_cidr
    api = (API_PORT, API_PORT)
    rules = [
        Rule(
            "ssh-operator", "ssh", "tcp", (22, 22), "SSH for Ansible and the operator", source_cidr=operator
        ),
        Rule(
            "kubelet-control-plane",
            "node",
            "tcp",
            (KUBELET_PORT,) * 2,
            "kubelet API (logs, exec, metrics) from the control plane only",
            source_group="master",
        ),
        Rule("nodeports-tcp", "node", "tcp", NODE_PORTS, "NodePort Services", source_cidr=operator),
        Rule("nodeports-udp", "node", "udp", NODE_PORTS, "NodePort Services", source_cidr=operator),
        Rule(
            "pod-network-vxlan",
            "node",
            "udp",
            (VXLAN_PORT,) * 2,
            "pod network: VXLAN between nodes",
            source_group="node",
        ),
        # The `kubernetes` Service's endpoints are the masters' own addresses, so in-cluster clients
        # (CoreDNS, controllers in pods) reach API servers directly, not through the LB.
        Rule("api-nodes-direct", "master", "tcp", api, "API from in-cluster clients", source_group="node"),
        Rule(
            "etcd-peers",
            "etcd",
            "tcp",
            (ETCD_CLIENT, ETCD_PEER),
            "etcd among its members",
            source_group="etcd",
        ),
    ]
    if spec.lbs:
        rules += [
            Rule("api-operator", "lb", "tcp", api, "API for kubectl", source_cidr=operator),
            Rule("api-nodes", "lb", "tcp", api, "API for kubelets and kube-proxy", source_group="node"),
            Rule("api-lb", "master", "tcp", api, "haproxy to the API servers", source_group="lb"),
        ]
    else:
        rules.append(
            Rule("api-operator", "master", "tcp", api, "API for kubectl (no LB)", source_cidr=operator)
        )
    if not spec.stacked_etcd:
        rules.append(
            Rule(
                "etcd-clients",
                "etcd",
                "tcp",
                (ETCD_CLIENT,) * 2,
                "API servers are etcd's clients",
                source_group="master",
            )
        )
    return rules


def groups_of(roles: tuple[str, ...]) -> list[str]:
    return ["ssh"] + sorted({g for r in roles for g in ROLE_GROUPS[r]})


@dataclass
class AwsMachinesArgs:
    spec: ClusterSpec
    ssh_public_key: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]


class AwsMachines(pulumi.ComponentResource):
    """The machines interface (infra/machines/__init__.py) on EC2: Ansible reaches each instance on its public
    IP; the instances pull images from the upstream registries through the internet gateway."""

    machines: pulumi.Output[list]
    images_from_host = False
    ssh_user: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    api_public_address: pulumi.Output[str]

    def __init__(self, name: str, args: AwsMachinesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pilothouse:machines:AwsMachines", name, None, opts)
        spec = args.spec
        if spec.backend != "aws":
            raise SpecError(
                [f"pilothouse:backend is {spec.backend!r}; AwsMachines builds only backend 'aws'"]
            )
        child = pulumi.ResourceOptions(parent=self)
        tags = {"pilothouse:cluster": spec.name}
        cidr = str(spec.machine_cidr)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=cidr,
            enable_dns_hostnames=True,
            tags={**tags, "Name": spec.name},
            opts=child,
        )
        gateway = aws.ec2.InternetGateway(f"{name}-gateway", vpc_id=vpc.id, tags=tags, opts=child)
        subnet = aws.ec2.Subnet(
            f"{name}-subnet",
            vpc_id=vpc.id,
            cidr_block=cidr,
            map_public_ip_on_launch=True,
            tags=tags,
            opts=child,
        )
        routes = aws.ec2.RouteTable(
            f"{name}-routes",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=tags,
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            f"{name}-routes-subnet", route_table_id=routes.id, subnet_id=subnet.id, opts=child
        )

        groups = {
            g: aws.ec2.SecurityGroup(
                f"{name}-{g}", vpc_id=vpc.id, description=f"pilothouse {spec.name} {g}", tags=tags, opts=child
            )
            for g in GROUPS
        }
        for rule in firewall_rules(spec):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-{rule.group}-{rule.name}",
                security_group_id=groups[rule.group].id,
                ip_protocol=rule.protocol,
                from_port=rule.ports[0],
                to_port=rule.ports[1],
                cidr_ipv4=rule.source_cidr,
                referenced_security_group_id=groups[rule.source_group].id if rule.source_group else None,
                description=rule.why,
                opts=child,
            )
        # Outbound stays open (a new group has none in Pulumi): groups are stateful, inbound is the filter.
        for g, group in groups.items():
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-{g}-egress",
                security_group_id=group.id,
                ip_protocol="-1",
                cidr_ipv4="0.0.0.0/0",
                description="all outbound",
                opts=child,
            )

        key = aws.ec2.KeyPair(f"{name}-key", public_key=args.ssh_public_key, tags=tags, opts=child)
        ami = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[DEBIAN_AMI_OWNER],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[DEBIAN_AMI_NAME]),
                aws.ec2.GetAmiFilterArgs(name="architecture", values=["x86_64"]),
            ],
            opts=pulumi.InvokeOutputOptions(parent=self),
        )

        instances = {}
        for m in spec.machines:
            instances[m.name] = aws.ec2.Instance(
                f"{name}-{m.name}",
                ami=ami.id,
                instance_type=spec.aws.instance_type,
                subnet_id=subnet.id,
                private_ip=m.address,
                key_name=key.key_name,
                vpc_security_group_ids=[groups[g].id for g in groups_of(m.roles)],
                user_data=f"#cloud-config\nhostname: {m.name}\npreserve_hostname: false\n",
                tags={**tags, "Name": m.name, "pilothouse:roles": ",".join(m.roles)},
                opts=child,
            )

        self.machines = pulumi.Output.all(
            *[
                pulumi.Output.all(instances[m.name].private_ip, instances[m.name].public_ip).apply(
                    lambda ips, m=m: {
                        "name": m.name,
                        "roles": list(m.roles),
                        "address": ips[0],
                        "ssh_address": ips[1],
                        "ssh_user": SSH_USER,
                        "ssh_key_file": "",
                        "jump_host": "",
                        "ssh_host_key": "",  # made by the instance at first boot: recorded on first use
                    }
                )
                for m in spec.machines
            ]
        )
        self.ssh_user = pulumi.Output.from_input(SSH_USER)
        self.ssh_private_key = pulumi.Output.secret(args.ssh_private_key)
        front = (spec.lbs or spec.masters)[0]
        self.api_public_address = instances[front.name].public_ip
        self.register_outputs(
            {
                "machines": self.machines,
                "ssh_user": self.ssh_user,
                "ssh_private_key": self.ssh_private_key,
                "api_public_address": self.api_public_address,
            }
        )
