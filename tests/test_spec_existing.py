"""The cluster spec of backend existing: the host lines, their roles and pod subnets, and the refusals."""

from __future__ import annotations

import json

import pytest

from infra import spec as cluster_spec
from infra.spec import SpecError, from_config
from test_spec import problems_of, refused
from test_spec_config import stack_config


@pytest.fixture
def key_file(tmp_path) -> str:
    path = tmp_path / "id_ed25519"
    path.write_text("not read by the spec, only found\n")
    return str(path)


def existing(key_file: str, *extra: str, **overrides) -> dict:
    """Backend existing with the default HA topology (1 LB, 3 stacked masters, 2 workers) on 10.77.0.0/24."""
    hosts = ["lb address=10.77.0.10 roles=lb", "m1 address=10.77.0.20 roles=master,etcd",
             "m2 address=10.77.0.21 roles=master,etcd", "m3 address=10.77.0.22 roles=master,etcd",
             "w1 address=10.77.0.40 roles=worker", "w2 address=10.77.0.41 roles=worker", *extra]
    return {"backend": "existing", "hosts": hosts, "sshKeyPath": key_file, **overrides}


def test_existing_hosts_keep_their_pod_subnets_when_masters_are_added_and_more_than_10_masters_are_refused(key_file):
    before = {m.name: m.pod_subnet for m in from_config(existing(key_file)).nodes}
    grown = from_config(existing(key_file, "m4 address=10.77.0.23 roles=master,etcd",
                                 "m5 address=10.77.0.24 roles=master,etcd"))
    after = {m.name: m.pod_subnet for m in grown.nodes}
    assert {n: after[n] for n in before} == before and after["m5"] == "10.244.4.0/24"
    many = [f"c{i} address=10.77.0.{50 + i} roles=master" for i in range(11)]
    hosts = ["lb address=10.77.0.10 roles=lb", "e1 address=10.77.0.30 roles=etcd", "w1 address=10.77.0.40 roles=worker"]
    refused({**existing(key_file), "hosts": hosts + many}, "host c10: more than 10 masters")


def test_existing_hosts_become_the_machines_with_their_roles_addresses_and_access(key_file):
    cfg = existing(key_file)
    cfg["hosts"][4] += " user=debian jump=admin@10.77.0.10:2222"
    spec = from_config(cfg)
    assert [(m.name, m.roles, m.address) for m in spec.machines] == [
        ("lb", ("lb",), "10.77.0.10"), ("m1", ("master", "etcd"), "10.77.0.20"),
        ("m2", ("master", "etcd"), "10.77.0.21"), ("m3", ("master", "etcd"), "10.77.0.22"),
        ("w1", ("worker",), "10.77.0.40"), ("w2", ("worker",), "10.77.0.41")]
    assert spec.stacked_etcd and spec.api_address == "10.77.0.10"
    assert [m.pod_subnet for m in spec.nodes] == [f"10.244.{i}.0/24" for i in (0, 1, 2, 10, 11)]
    assert spec.access("m1") == cluster_spec.SshAccess("root", key_file, "")
    assert spec.access("w1") == cluster_spec.SshAccess("debian", key_file, "admin@10.77.0.10:2222")


def test_existing_roles_may_be_written_in_any_order_and_etcd_may_have_hosts_of_its_own(key_file):
    spec = from_config(existing(key_file, hosts=[
        "m1 address=10.77.0.20 roles=master", "e1 address=10.77.0.30 roles=etcd", "w1 address=10.77.0.40 roles=worker"],
        ha=False))
    assert spec.etcd[0].name == "e1" and not spec.stacked_etcd
    again = from_config(existing(key_file, hosts=["m1 address=10.77.0.20 roles=etcd,master",
                                                  "w1 address=10.77.0.40 roles=worker"], ha=False))
    assert again.masters[0].roles == ("master", "etcd")


def test_existing_needs_hosts_and_says_how_to_set_one():
    refused({"backend": "existing"}, "needs pilothouse:hosts", "pulumi config set --path 'pilothouse:hosts[0]'")


@pytest.mark.parametrize("line, fragment", [
    ("Node_1 address=10.77.0.50 roles=worker", "must start with the host's name, a DNS-1123 label"),
    ("w3 address=10.77.0.50 roles=worker colour=blue", "'colour=blue' is not a field"),
    ("w3 roles=worker", "address= missing"),
    ("w3 address=node.example roles=worker", "not an IPv4 address; the roles use it as the node's IP"),
    ("w3 address=10.99.0.50 roles=worker", "not a usable address of machineCidr 10.77.0.0/24"),
    ("w3 address=10.77.0.1 roles=worker", "this host is 10.77.0.1"),
    ("w3 address=10.77.0.205 roles=worker", "in MetalLB's LoadBalancer range"),
    ("w3 address=10.77.0.50 roles=lb,master", "roles=lb,master is not a role set"),
    ("w3 address=10.77.0.50 roles=worker user=Root!", "SSH user 'Root!' is not a user name"),
    ("w3 address=10.77.0.50 roles=worker key=/nonexistent/id", "SSH key file /nonexistent/id does not exist"),
    ("w3 address=10.77.0.50 roles=worker jump=a@b@c", "jump host 'a@b@c' is not [user@]host[:port]"),
    ("w3 address=10.77.0.50 roles=worker jump=bastion:70000", "is not [user@]host[:port]"),
    ("w1 address=10.77.0.50 roles=worker", "names repeat (w1)"),
    ("w3 address=10.77.0.40 roles=worker", "addresses repeat (10.77.0.40)"),
])
def test_existing_host_lines_are_checked_one_by_one(key_file, line, fragment):
    refused(existing(key_file, line), fragment)


def test_existing_without_a_key_names_both_ways_to_give_one(key_file):
    problems = problems_of(existing(key_file, sshKeyPath=""))
    assert [p.split(":")[1] for p in problems] == [f"hosts host {h}" for h in ("lb", "m1", "m2", "m3", "w1", "w2")]
    assert all("no SSH key; set pilothouse:sshKeyPath (every host) or key= on its line" in p for p in problems)


@pytest.mark.parametrize("hosts, fragment", [
    (["m1 address=10.77.0.20 roles=master,etcd", "m2 address=10.77.0.21 roles=master,etcd",
      "m3 address=10.77.0.22 roles=master,etcd", "w1 address=10.77.0.40 roles=worker"], "no load balancer"),
    (["lb address=10.77.0.10 roles=lb", "m1 address=10.77.0.20 roles=master,etcd",
      "m2 address=10.77.0.21 roles=master,etcd", "w1 address=10.77.0.40 roles=worker"], "2 etcd members"),
    (["lb address=10.77.0.10 roles=lb", "m1 address=10.77.0.20 roles=master,etcd",
      "m2 address=10.77.0.21 roles=master,etcd", "m3 address=10.77.0.22 roles=master,etcd"], "has no worker"),
    (["lb address=10.77.0.10 roles=lb", "m1 address=10.77.0.20 roles=master,etcd",
      "m2 address=10.77.0.21 roles=master", "e1 address=10.77.0.30 roles=etcd", "e2 address=10.77.0.31 roles=etcd",
      "w1 address=10.77.0.40 roles=worker"], "mixes stacked and separate etcd"),
])
def test_existing_topologies_follow_the_same_rules_as_counts(key_file, hosts, fragment):
    refused(existing(key_file, hosts=hosts), fragment)


def test_existing_two_lbs_need_a_vip_like_any_backend(key_file):
    refused(existing(key_file, "lb2 address=10.77.0.11 roles=lb"), "keepalived needs a virtual address")
    assert from_config(existing(key_file, "lb2 address=10.77.0.11 roles=lb", vip="10.77.0.5")).vip == "10.77.0.5"


def test_existing_refuses_counts_and_other_backends_refuse_hosts(key_file):
    refused(existing(key_file, workers=4), "pilothouse:workers does not apply to backend existing")
    refused({"hosts": ["w1 address=10.77.0.40 roles=worker"]}, "pilothouse:hosts is for backend existing only")
    # Pulumi fills in every declared default: those are not the user's choice and pass.
    defaults = {k: key.default for k, key in cluster_spec.KEYS.items()}
    assert from_config(defaults).backend == "local"
    assert len(from_config({**defaults, **existing(key_file)}).machines) == 6


def test_existing_hosts_are_read_from_a_stack_file_and_from_the_automation_api_as_json(key_file):
    cfg = {f"pilothouse:{k}": v for k, v in existing(key_file).items()}
    assert len(cluster_spec.from_stack_config(cfg).machines) == 6
    as_text = {**cfg, "pilothouse:hosts": json.dumps(cfg["pilothouse:hosts"])}
    assert len(cluster_spec.from_stack_config(as_text).machines) == 6
    with pytest.raises(SpecError, match="pilothouse:hosts must be a list of strings"):
        cluster_spec.from_stack_config({**cfg, "pilothouse:hosts": "lb address=10.77.0.10"})


def test_existing_hosts_are_read_from_pulumi_config(key_file):
    cfg = existing(key_file)
    with stack_config({"pilothouse:backend": "existing", "pilothouse:sshKeyPath": key_file,
                       "pilothouse:hosts": json.dumps(cfg["hosts"])}):
        spec = cluster_spec.from_pulumi_config()
    assert [m.name for m in spec.masters] == ["m1", "m2", "m3"]


def test_every_problem_is_reported_at_once():
    problems = problems_of(
        {
            "backend": "gce",
            "etcdNodes": 4,
            "serviceCidr": "10.96.0.0/28",
            "ha": "yes",
            "kubernetesVersion": "v1.0.0",
        }
    )
    assert len(problems) == 5, problems
    message = str(SpecError(problems))
    assert message.startswith("the cluster spec has 5 problem(s); nothing was created")
