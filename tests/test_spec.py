"""The cluster spec: defaults, the derived layout, and every refusal (each naming its fix)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pulumi
import pytest
import yaml

from infra import configure
from infra import spec as cluster_spec
from infra.spec import SpecError, from_config

ROOT = Path(__file__).resolve().parents[1]


def problems_of(cfg: dict) -> list[str]:
    with pytest.raises(SpecError) as caught:
        from_config(cfg)
    return caught.value.problems


def refused(cfg: dict, *fragments: str) -> str:
    """Assert `cfg` is refused with exactly one problem containing every fragment; return it."""
    problems = problems_of(cfg)
    assert len(problems) == 1, f"expected one problem, got {problems}"
    for fragment in fragments:
        assert fragment in problems[0], f"{fragment!r} not in {problems[0]!r}"
    return problems[0]


# --- defaults ------------------------------------------------------------------------------------------


def test_default_cluster_is_ha_with_three_stacked_masters_two_workers_one_lb():
    spec = from_config({})
    assert spec.backend == "local" and spec.ha
    assert [m.name for m in spec.lbs] == ["pilothouse-lb-1"]
    assert [m.name for m in spec.masters] == [
        "pilothouse-master-1",
        "pilothouse-master-2",
        "pilothouse-master-3",
    ]
    assert [m.name for m in spec.workers] == ["pilothouse-worker-1", "pilothouse-worker-2"]
    assert spec.etcd == spec.masters and spec.stacked_etcd
    assert spec.kubernetes_version == "v1.34.4"


def test_default_addresses_are_fixed_by_role():
    spec = from_config({})
    assert {m.name: m.address for m in spec.machines} == {
        "pilothouse-lb-1": "10.77.0.10",
        "pilothouse-master-1": "10.77.0.20",
        "pilothouse-master-2": "10.77.0.21",
        "pilothouse-master-3": "10.77.0.22",
        "pilothouse-worker-1": "10.77.0.40",
        "pilothouse-worker-2": "10.77.0.41",
    }
    assert spec.host_address == "10.77.0.1"
    assert spec.api_address == "10.77.0.10"


def test_service_addresses_are_the_first_and_tenth_of_the_service_cidr():
    spec = from_config({})
    assert spec.first_service_ip == "10.96.0.1"
    assert spec.cluster_dns == "10.96.0.10"
    other = from_config({"serviceCidr": "172.20.0.0/16"})
    assert (other.first_service_ip, other.cluster_dns) == ("172.20.0.1", "172.20.0.10")


def test_each_kubelet_node_gets_its_own_pod_subnet_and_lbs_get_none():
    spec = from_config({})
    subnets = {m.name: m.pod_subnet for m in spec.machines}
    assert subnets["pilothouse-lb-1"] is None
    assert subnets["pilothouse-master-1"] == "10.244.0.0/24"
    assert subnets["pilothouse-worker-2"] == "10.244.4.0/24"
    assert len({m.pod_subnet for m in spec.nodes}) == 5


def test_external_etcd_gets_its_own_machines_and_masters_lose_the_etcd_role():
    spec = from_config({"etcdNodes": 5})
    assert [m.address for m in spec.etcd] == [f"10.77.0.{30 + i}" for i in range(5)]
    assert all(m.roles == ("etcd",) and m.pod_subnet is None for m in spec.etcd)
    assert all(m.roles == ("master",) for m in spec.masters)
    assert not spec.stacked_etcd


def test_two_lbs_with_a_vip_make_the_vip_the_api_address():
    spec = from_config({"lbs": 2, "vip": "10.77.0.5"})
    assert [m.address for m in spec.lbs] == ["10.77.0.10", "10.77.0.11"]
    assert spec.api_address == "10.77.0.5"


def test_non_ha_single_master_without_lb_serves_the_api_itself():
    spec = from_config({"ha": False, "masters": 1, "lbs": 0, "workers": 1})
    assert spec.api_address == "10.77.0.20"
    assert [m.name for m in spec.etcd] == ["pilothouse-master-1"]


def test_spec_is_frozen():
    spec = from_config({})
    with pytest.raises(AttributeError):
        spec.backend = "aws"


# --- inventory -----------------------------------------------------------------------------------------


def test_inventory_groups_put_masters_in_etcd_control_plane_and_kube_node():
    inv = from_config({})
    groups = inv.inventory()["all"]["children"]
    masters = ["pilothouse-master-1", "pilothouse-master-2", "pilothouse-master-3"]
    assert list(groups["etcd"]["hosts"]) == masters
    assert list(groups["kube_control_plane"]["hosts"]) == masters
    assert list(groups["kube_node"]["hosts"]) == masters + ["pilothouse-worker-1", "pilothouse-worker-2"]
    assert list(groups["lb"]["hosts"]) == ["pilothouse-lb-1"]


def test_inventory_hosts_carry_their_addresses_and_connect_address_overrides():
    inv = from_config({}).inventory({"pilothouse-worker-1": "203.0.113.9"}, ssh_user="admin")["all"]
    assert inv["hosts"]["pilothouse-master-1"] == {
        "ansible_host": "10.77.0.20",
        "pilothouse_node_address": "10.77.0.20",
        "pilothouse_pod_subnet": "10.244.0.0/24",
    }
    assert inv["hosts"]["pilothouse-worker-1"]["ansible_host"] == "203.0.113.9"
    assert inv["hosts"]["pilothouse-worker-1"]["pilothouse_node_address"] == "10.77.0.40"
    assert inv["vars"]["ansible_user"] == "admin"
    assert inv["vars"]["pilothouse_cluster_dns"] == "10.96.0.10"
    assert inv["vars"]["pilothouse_service_ip"] == "10.96.0.1"
    assert inv["vars"]["pilothouse_api_endpoint"] == "10.77.0.10"


def test_inventory_with_external_etcd_lists_etcd_machines_only():
    groups = from_config({"etcdNodes": 3}).inventory()["all"]["children"]
    assert list(groups["etcd"]["hosts"]) == ["pilothouse-etcd-1", "pilothouse-etcd-2", "pilothouse-etcd-3"]
    assert "pilothouse-etcd-1" not in groups["kube_node"]["hosts"]


# --- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 4, 6])
def test_even_external_etcd_count_is_refused(count):
    refused({"etcdNodes": count}, f"gives {count} etcd members", "even", "use 3, 5 or 7")


def test_two_stacked_masters_are_an_even_etcd_and_the_fix_says_so():
    refused(
        {"masters": 2}, "stacked on every master", "2 etcd members", "use 3 masters, or set etcdNodes to 3"
    )


def test_etcd_count_outside_1_3_5_7_is_refused():
    refused({"etcdNodes": 9}, "9 etcd members", "use one of 1, 3, 5, 7")


def test_single_etcd_member_is_refused_with_ha_but_allowed_without():
    refused({"etcdNodes": 1}, "1 etcd member", "with ha true use 3, 5 or 7")
    assert len(from_config({"etcdNodes": 1, "ha": False}).etcd) == 1


def test_ha_needs_two_api_servers():
    problems = problems_of({"masters": 1})
    assert any("HA needs at least 2 API servers" in p and "or set ha false" in p for p in problems), problems
    # One master is also one (stacked) etcd member, which HA refuses too.
    assert any("1 etcd member" in p for p in problems), problems


def test_ha_needs_a_load_balancer():
    refused({"lbs": 0}, "lbs is 0", "set lbs to 1")


@pytest.mark.parametrize(
    "a,b,cfg",
    [
        ("machineCidr", "podCidr", {"machineCidr": "10.244.1.0/24"}),
        ("machineCidr", "serviceCidr", {"machineCidr": "10.96.0.0/24"}),
        ("podCidr", "serviceCidr", {"podCidr": "10.96.0.0/16"}),
    ],
)
def test_overlapping_cidrs_are_refused_pairwise(a, b, cfg):
    refused(cfg, f"pilothouse:{a}", f"overlaps pilothouse:{b}", "must be disjoint")


def test_service_cidr_smaller_than_a_24_is_refused_with_the_reason():
    refused({"serviceCidr": "10.96.0.0/25"}, "only 128 addresses", "every Service takes one", "/24 or larger")


def test_service_cidr_larger_than_the_api_server_accepts_is_refused():
    refused(
        {"serviceCidr": "10.0.0.0/8", "podCidr": "172.16.0.0/16", "machineCidr": "192.168.77.0/24"},
        "larger than kube-apiserver accepts",
        "/12",
    )


def test_pod_cidr_too_small_for_the_nodes_is_refused():
    refused({"podCidr": "10.244.0.0/22"}, "holds 4 node subnets", "5 nodes", "larger podCidr")
    refused({"podCidr": "10.244.0.0/25"}, "smaller than the /24 each node needs")


def test_malformed_and_host_bits_and_ipv6_cidrs_are_refused():
    refused({"machineCidr": "10.77.0.1/24"}, "host bits set", "did you mean 10.77.0.0/24")
    refused({"podCidr": "lots"}, "'lots' is not a CIDR")
    refused({"serviceCidr": "fd00::/108"}, "IPv6", "IPv4 only")


@pytest.mark.parametrize(
    "key,value",
    [
        ("clusterName", "Pilot_House"),
        ("clusterName", "-edge"),
        ("workerName", "node."),
    ],
)
def test_names_that_are_not_dns_1123_labels_are_refused(key, value):
    refused({key: value}, f"pilothouse:{key}", "not a DNS-1123 label", "lower-case letters")


def test_duplicate_machine_names_are_refused():
    refused(
        {"workerName": "node", "masterName": "node"},
        "machine names repeat",
        "pilothouse-node-1",
        "different values",
    )


def test_machine_name_over_63_characters_is_refused():
    problems = problems_of({"clusterName": "c" * 60})
    assert any("longer than 63 characters" in p and "shorten pilothouse:clusterName" in p for p in problems)


def test_unknown_backend_lists_the_valid_ones():
    refused({"backend": "gce"}, "'gce' is unknown", "local, libvirt, aws")


def test_unknown_kubernetes_version_lists_the_known_ones():
    refused({"kubernetesVersion": "v1.29.0"}, "not pinned in infra/artifacts/lock.yaml", "known: v1.34.4")


def test_known_versions_come_from_the_lock_file(tmp_path):
    lock = tmp_path / "lock.yaml"
    lock.write_text("go:\n  kubernetes:\n    version: v9.9.9\n")
    assert cluster_spec.known_kubernetes_versions(lock) == ("v9.9.9",)


def test_counts_that_do_not_fit_the_machine_cidr_are_refused():
    refused({"masters": 11, "etcdNodes": 3}, "11 master machines do not fit", "larger machineCidr")
    refused({"machineCidr": "10.77.0.0/26", "workers": 30}, "30 worker machines do not fit", "23 addresses")


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("ha", "true", "the string 'true' is not a boolean; write true without quotes"),
        ("ha", "False", "write false without quotes"),
        ("masters", "3", "must be a whole number"),
        ("workers", True, "must be a whole number"),
        ("clusterName", 7, "must be a string"),
    ],
)
def test_wrongly_typed_values_are_refused(key, value, fragment):
    refused({key: value}, f"pilothouse:{key}", fragment)


@pytest.mark.parametrize("key", ["masters", "workers", "lbs", "etcdNodes"])
def test_negative_counts_are_refused(key):
    assert any(f"pilothouse:{key} is -1; a count must be 0 or more" in p for p in problems_of({key: -1}))


def test_zero_workers_is_refused_because_masters_are_tainted():
    refused({"workers": 0}, "masters are tainted", "workers to 1 or more")


def test_unknown_key_suggests_the_closest_known_one():
    refused({"master": 3}, "unknown config key pilothouse:master", "did you mean masters?")


def test_two_lbs_need_a_vip():
    refused({"lbs": 2}, "keepalived needs a virtual address", "set pilothouse:vip")


@pytest.mark.parametrize(
    "vip,fragment",
    [
        ("10.77.1.5", "not a usable address of machineCidr"),
        ("10.77.0.255", "not a usable address of machineCidr"),
        ("10.77.0.1", "the host's address"),
        ("10.77.0.21", "pilothouse-master-2's address"),
        ("ten", "not an IPv4 address"),
    ],
)
def test_bad_vips_are_refused(vip, fragment):
    refused({"lbs": 2, "vip": vip}, fragment)


def test_vip_without_two_lbs_is_refused():
    refused({"vip": "10.77.0.5"}, "a vip needs 2 or more load balancers")


def test_aws_needs_operator_cidr_vxlan_and_a_single_lb():
    problems = problems_of({"backend": "aws", "lbs": 2, "vip": "10.77.0.5"})
    text = "\n".join(problems)
    assert "needs pilothouse:operatorCidr" in text
    assert "needs pilothouse:podNetwork vxlan" in text
    assert "set lbs to 1 on aws" in text
    refused({"backend": "aws", "podNetwork": "vxlan", "operatorCidr": "0.0.0.0/0"}, "whole internet")


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


# --- stack config --------------------------------------------------------------------------------------

PULUMI_TYPES = {bool: "boolean", int: "integer", str: "string"}


def test_pulumi_yaml_declares_every_key_as_the_spec_does():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "pilothouse" and project["main"] == "infra/"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip"}}  # venv: invoke env
    declared = project["config"]
    assert sorted(declared) == sorted(f"pilothouse:{k}" for k in cluster_spec.KEYS)
    for key, want in cluster_spec.KEYS.items():
        got = declared[f"pilothouse:{key}"]
        assert got == {
            "type": PULUMI_TYPES[want.type],
            "default": want.default,
            "description": want.description,
        }, key


def test_default_stack_is_the_default_local_ha_cluster():
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    spec = from_config({k.removeprefix("pilothouse:"): v for k, v in stack.items()})
    assert spec.backend == "local"
    assert (len(spec.masters), len(spec.workers), len(spec.lbs)) == (3, 2, 1)


class _ConfigMocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return f"{args.name}-id", args.inputs

    def call(self, args):
        return {}


def test_from_pulumi_config_reads_typed_stack_values():
    pulumi.runtime.set_mocks(_ConfigMocks(), project="pilothouse", stack="test", preview=False)
    pulumi.runtime.set_all_config(
        {
            "pilothouse:workers": "4",
            "pilothouse:ha": "true",
            "pilothouse:lbs": "2",
            "pilothouse:vip": "10.77.0.5",
        }
    )
    try:
        spec = cluster_spec.from_pulumi_config()
    finally:
        pulumi.runtime.set_all_config({})
    assert len(spec.workers) == 4 and spec.vip == "10.77.0.5"


def test_from_pulumi_config_refuses_a_non_numeric_count():
    pulumi.runtime.set_mocks(_ConfigMocks(), project="pilothouse", stack="test", preview=False)
    pulumi.runtime.set_all_config({"pilothouse:masters": "three"})
    try:
        with pytest.raises(SpecError, match="pilothouse:masters must be a whole number.*--type int"):
            cluster_spec.from_pulumi_config()
    finally:
        pulumi.runtime.set_all_config({})


# --- adding workers: the playbook's scale-out path ---------------------------------------------------

def test_one_more_worker_is_recognised_as_a_plain_worker_addition():
    before, after = from_config({}).inventory(), from_config({"workers": 3}).inventory()
    assert configure.added_workers(before, after) == ["pilothouse-worker-3"]


@pytest.mark.parametrize("change", [
    {"masters": 5},                                  # new masters join etcd and the control plane
    {"workers": 3, "serviceCidr": "10.100.0.0/16"},  # a worker and a cluster-wide change
    {"workers": 1},                                  # removing is not adding
    {},                                                # nothing added
])
def test_anything_but_added_workers_needs_the_whole_playbook(change):
    assert configure.added_workers(from_config({}).inventory(), from_config(change).inventory()) == []


# --- playbook progress during `invoke up` ---------------------------------------------------------------

def test_a_running_playbooks_phases_are_echoed_as_they_are_written(tmp_path):
    since = time.time()
    stdout = tmp_path / "c1" / "logs" / "runs" / "run-1" / "stdout"
    stdout.parent.mkdir(parents=True)
    stdout.write_text("PLAY [Control plane] ****\nok: [m1]\nTASK [kube_apiserver : Write the unit] ***\nTASK [par")
    echoed: list[str] = []
    stop = threading.Event()
    follower = threading.Thread(target=configure.follow_runs,
                                args=(tmp_path, "*/logs/runs/*/stdout", since, stop, echoed.append))
    follower.start()
    try:
        time.sleep(1.5)
        with stdout.open("a") as f:
            f.write("tial] ***\nfatal: [m2]: FAILED! => {}\n")
        time.sleep(1.5)
    finally:
        stop.set()
        follower.join()
    assert [line.split("s  ", 1)[1] for line in echoed] == [
        "PLAY [Control plane]", "TASK [kube_apiserver : Write the unit]", "TASK [partial]", "fatal: [m2]: FAILED! => {}"]
