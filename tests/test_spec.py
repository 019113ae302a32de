"""The cluster spec: defaults, the derived layout, and every refusal (each naming its fix). The hosts of backend
existing are in test_spec_existing.py, reading the stack's config in test_spec_config.py."""

from __future__ import annotations

import ipaddress

import pytest

from infra import spec as cluster_spec, spec_checks
from infra.machines import local
from infra.machines.errors import MachineSpecError
from infra.spec import SpecError, from_config


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
    assert subnets["pilothouse-worker-2"] == "10.244.11.0/24"
    assert len({m.pod_subnet for m in spec.nodes}) == 5


def test_a_worker_keeps_its_pod_subnet_when_the_master_count_changes():
    def subnets(masters):
        return {m.name: m.pod_subnet for m in from_config({"masters": masters}).nodes}

    three, five = subnets(3), subnets(5)
    assert {n: s for n, s in five.items() if n in three} == three
    assert five["pilothouse-master-5"] == "10.244.4.0/24"
    assert three["pilothouse-worker-1"] == "10.244.10.0/24"


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
    refused({"podCidr": "10.244.0.0/22"}, "holds 4 node subnets", "layout needs 12", "first 10 are kept for masters",
            "a /20 or larger")
    assert from_config({"podCidr": "10.244.0.0/20", "workers": 6}).nodes[-1].pod_subnet == "10.244.15.0/24"
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


def test_machine_name_over_63_characters_is_refused_on_any_backend():
    refused(
        {"clusterName": "c" * 60, "backend": "aws", "podNetwork": "vxlan", "operatorCidr": "198.51.100.7/32"},
        f"machine name '{'c' * 60}-master-1' is 69 characters",
        "a hostname allows at most 63",
        "shorten pilothouse:clusterName by 6 characters (to 54 or fewer)",
    )


def test_unknown_backend_lists_the_valid_ones():
    refused({"backend": "gce"}, "'gce' is unknown", "local, existing, libvirt, aws")


def test_a_backup_schedule_systemd_cannot_read_and_a_retention_below_one_are_refused():
    refused({"etcdBackupSchedule": "every tuesday"}, "pilothouse:etcdBackupSchedule 'every tuesday'",
            "Failed to parse calendar", "OnCalendar expression such as hourly")
    refused({"etcdBackupSchedule": "daily\nExecStart=/bin/sh"}, "is not a calendar expression")
    refused({"etcdBackupSchedule": "daily", "etcdBackupRetention": 0}, "keep at least 1 snapshot")
    spec = from_config({"etcdBackupSchedule": "*-*-* 00/6:00:00", "etcdBackupRetention": 2})
    assert (spec.etcd_backup_schedule, spec.etcd_backup_retention) == ("*-*-* 00/6:00:00", 2)


def test_unknown_kubernetes_version_lists_the_known_ones():
    refused({"kubernetesVersion": "v1.29.0"}, "not pinned in infra/artifacts/lock.yaml", "known: v1.34.4")


def test_known_versions_come_from_the_lock_file(tmp_path):
    lock = tmp_path / "lock.yaml"
    lock.write_text("go:\n  kubernetes:\n    version: v9.9.9\n")
    assert cluster_spec.known_kubernetes_versions(lock) == ("v9.9.9",)


def test_counts_that_do_not_fit_their_role_are_refused_with_the_room_there_is():
    refused(
        {"masters": 11, "etcdNodes": 3},
        "pilothouse:masters is 11",
        "masters have 10 addresses (.20-.29 of machineCidr)",
        "use at most 10",
    )
    # A larger machine network does not help: the layout is by offset.
    refused({"machineCidr": "10.77.0.0/16", "lbs": 11, "vip": "10.77.0.5"}, "load balancers have 10 addresses")


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
    refused({"master": 3}, "unknown config key pilothouse:master", "did you mean masters?", "Rename or remove it")


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
    assert "set pilothouse:lbs to 1 and unset pilothouse:vip on aws" in text
    refused({"backend": "aws", "podNetwork": "vxlan", "operatorCidr": "0.0.0.0/0"}, "whole internet")


# --- the machine network's layout -------------------------------------------------------------------


@pytest.mark.parametrize(
    "cidr,suggested", [("10.77.0.0/28", "10.77.0.0/24"), ("192.168.5.128/25", "192.168.5.0/24")]
)
def test_machine_cidr_smaller_than_a_24_is_refused_with_the_layout_and_a_24_to_use(cidr, suggested):
    # A /28 used to crash with IndexError while laying out the masters at .20.
    refused(
        {"machineCidr": cidr},
        f"pilothouse:machineCidr {cidr} has",
        "laid out by role up to .220",
        "workers .40-.199",
        "MetalLB's LoadBalancer addresses .200-.220",
        f"use a /24 or larger, e.g. {suggested}",
    )


def test_workers_stay_below_the_metallb_range_even_on_a_larger_network():
    spec = from_config({"machineCidr": "10.77.0.0/16", "workers": 160, "podCidr": "10.244.0.0/16"})
    assert spec.workers[-1].address == "10.77.0.199"
    assert spec.lb_address_range == "10.77.0.200-10.77.0.220"
    assert not {m.address for m in spec.machines} & {f"10.77.0.{i}" for i in range(200, 221)}
    refused(
        {"workers": 161},
        "pilothouse:workers is 161",
        "workers have 160 addresses (.40-.199 of machineCidr; .200-.220 are MetalLB's LoadBalancer addresses)",
        "use at most 160",
    )


def test_lb_address_range_is_200_to_220_of_the_machine_network():
    assert from_config({}).lb_address_range == "10.77.0.200-10.77.0.220"
    assert from_config({"machineCidr": "192.168.50.0/24"}).lb_address_range == "192.168.50.200-192.168.50.220"


def test_a_vip_inside_the_metallb_range_is_refused():
    refused(
        {"lbs": 2, "vip": "10.77.0.210"},
        "pilothouse:vip 10.77.0.210 is in MetalLB's LoadBalancer range 10.77.0.200-10.77.0.220",
        "pick a free address below .10 (e.g. 10.77.0.5)",
    )


# --- public and unroutable networks --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,cidr,default",
    [
        ("machineCidr", "198.51.100.0/24", "10.77.0.0/24"),
        ("podCidr", "11.0.0.0/16", "10.244.0.0/16"),
        ("serviceCidr", "172.32.0.0/16", "10.96.0.0/12"),  # just past 172.16.0.0/12
    ],
)
def test_public_cidrs_are_refused_unless_allowed(key, cidr, default):
    refused(
        {key: cidr},
        f"pilothouse:{key} {cidr} is not a private network",
        "lose the real hosts that own those addresses",
        "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10",
        f"(e.g. {default})",
        f"set pilothouse:allowPublicCidrs true if you own {cidr}",
    )
    assert from_config({key: cidr, "allowPublicCidrs": True})


def test_a_network_straddling_a_private_range_is_public():
    refused({"podCidr": "172.0.0.0/11"}, "172.0.0.0/11 is not a private network")


@pytest.mark.parametrize(
    "cfg",
    [
        {"machineCidr": "10.10.0.0/24", "podCidr": "172.20.0.0/16", "serviceCidr": "192.168.0.0/16"},
        {"machineCidr": "100.64.0.0/24", "podCidr": "100.65.0.0/16", "serviceCidr": "100.96.0.0/12"},
    ],
)
def test_private_and_cgnat_cidrs_are_accepted(cfg):
    assert from_config(cfg).machine_cidr == ipaddress.ip_network(cfg["machineCidr"])


@pytest.mark.parametrize(
    "key,cidr,what",
    [
        ("machineCidr", "127.0.0.0/24", "loopback (127.0.0.0/8)"),
        ("podCidr", "169.254.0.0/16", "link-local (169.254.0.0/16)"),
        ("serviceCidr", "224.0.0.0/16", "multicast (224.0.0.0/4)"),
        ("podCidr", "240.0.0.0/16", "reserved (240.0.0.0/4)"),
    ],
)
def test_unroutable_cidrs_are_refused_even_when_public_ones_are_allowed(key, cidr, what):
    for allow in (False, True):
        refused(
            {key: cidr, "allowPublicCidrs": allow},
            f"pilothouse:{key} {cidr} overlaps the {what} range",
            "cannot be routed between machines",
            f"use a private range such as {cluster_spec.KEYS[key].default}",
        )


# --- local backend limits ------------------------------------------------------------------------------


def test_local_name_limit_is_what_the_local_backend_accepts():
    limit = spec_checks.local_name_limit()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE8Q test"
    local.MachineSpec("a" * limit, "10.77.0.20", 24, "ph-test", key)
    with pytest.raises(MachineSpecError):
        local.MachineSpec("a" * (limit + 1), "10.77.0.20", 24, "ph-test", key)


def test_local_backend_refuses_names_it_cannot_boot_and_says_how_much_to_cut():
    limit = spec_checks.local_name_limit()
    longest_part = len("-master-1")
    cluster = "c" * (limit - longest_part + 2)  # two characters too many
    refused(
        {"clusterName": cluster},
        f"machine name '{cluster}-master-1' is {limit + 2} characters",
        f"the local backend boots names of at most {limit}",
        f"shorten pilothouse:clusterName by 2 characters (to {len(cluster) - 2} or fewer)",
    )
    assert from_config({"clusterName": cluster[:-2]})
    assert from_config({"clusterName": cluster, "backend": "aws", "podNetwork": "vxlan",
                        "operatorCidr": "198.51.100.7/32"})  # a cloud allows 63


def test_local_backend_names_the_part_to_shorten_when_the_cluster_name_cannot_absorb_it():
    refused(
        {"clusterName": "ph", "workerName": "w" * 40},
        f"machine name 'ph-{'w' * 40}-1'",
        f"shorten pilothouse:workerName '{'w' * 40}' by 13 characters",
    )
    refused(
        {"clusterName": "c" * 30, "workerName": "w" * 30},
        "shorten pilothouse:clusterName and pilothouse:workerName by 31 characters between them",
    )


def test_bridge_name_keeps_short_names_and_hashes_long_ones_apart():
    assert local.bridge_name("pilothouse") == "ph-pilothouse"
    assert local.bridge_name("c" * 12) == "ph-" + "c" * 12  # exactly 15 characters still fits
    staging, prod = local.bridge_name("team-alpha-staging"), local.bridge_name("team-alpha-prod")
    assert staging != prod
    assert staging.startswith("ph-team-") and prod.startswith("ph-team-")
    for long in ("team-alpha-staging", "c" * 13, "x" * 63):
        name = local.bridge_name(long)
        assert len(name) == 15 and local.BRIDGE_RE.match(name), name
        assert local.bridge_name(long) == name  # stable across runs
    # A shortened name holds '_', which no cluster name (a DNS label) can, so it never equals a kept one.
    assert "_" in local.bridge_name("c" * 13) and not cluster_spec.DNS_1123_LABEL.match("c" * 12 + "_")


def test_libvirt_options_are_checked_with_the_fix():
    refused({"backend": "libvirt", "libvirtUri": "qemu+ssh://kvm1/system"},
            "'qemu+ssh://kvm1/system' is not this host's system hypervisor", "only qemu:///system")
    refused({"backend": "libvirt", "libvirtMachines": "worker,gpu,other-worker-1"},
            "must list roles (lb, master, etcd, worker) or machine names of this cluster",
            "gpu, other-worker-1 is neither")
    refused({"backend": "libvirt", "libvirtMachines": ""}, "pilothouse:libvirtMachines")
    refused({"backend": "libvirt", "libvirtAccel": "hvf"}, "must be kvm", "or tcg")
    refused({"backend": "libvirt", "libvirtPool": "my pool"}, "'my pool' is not a pool name")


def test_libvirt_machines_are_chosen_by_role_or_by_name():
    spec = from_config({"backend": "libvirt", "libvirtMachines": "worker, lb", "libvirtAccel": "tcg"})
    assert spec.libvirt.accel == "tcg"
    assert [m.name for m in spec.machines if spec.libvirt.is_vm(m)] == [
        m.name for m in spec.machines if {"worker", "lb"} & set(m.roles)]
    # A master with stacked etcd is a VM when either of its roles is listed.
    stacked = from_config({"backend": "libvirt", "libvirtMachines": "etcd"})
    assert all(stacked.libvirt.is_vm(m) for m in stacked.masters)
    assert not any(stacked.libvirt.is_vm(m) for m in stacked.workers)
    # By name, including one the cluster has only once a count grows.
    named = from_config({"backend": "libvirt", "clusterName": "c", "libvirtMachines": "c-worker-2,c-worker-3"})
    assert [m.name for m in named.machines if named.libvirt.is_vm(m)] == ["c-worker-2"]
    grown = from_config({"backend": "libvirt", "clusterName": "c", "libvirtMachines": "c-worker-3", "workers": 3})
    assert [m.name for m in grown.machines if grown.libvirt.is_vm(m)] == ["c-worker-3"]
