"""The roles' `validate` play accepts every cluster the spec accepts, and refuses a broken inventory with a
message that names the fix. No machine is needed.

Each case builds the inventory and extravars exactly as `pulumi up` does (`infra.playbook.inventory` and
`extravars`, from `infra.spec.from_config`), with the binaries replaced by empty files, since the artifacts
may not be built. The validate play runs on the controller only (gather_facts false, every task run_once), and
ssh is replaced by /bin/false, so a task that tried to reach a machine would fail the case instead of hanging.
For a few of the configs every role's argument_specs must accept the inventory too. The cases run in parallel
(one ansible-playbook each, about 2-4 s of CPU apiece).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from infra import artifacts, playbook, spec
from infra.artifacts.store import Entry

ROOT = Path(__file__).resolve().parents[1]
ROLES = ROOT / "roles"
REGISTRY_MIRROR = "http://10.77.0.1:5000"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # the fake binaries are empty
# A run is mostly CPU, but waits on its forked workers now and then: two per core keep the cores busy.
PARALLEL = 2 * (os.cpu_count() or 1)

# Configs the spec accepts (pilothouse:* keys without the namespace); each must pass validation.
ACCEPTED = {
    "default HA (3 masters, 1 LB, 2 workers)": {},
    "no HA, 1 master, no LB": {"ha": False, "masters": 1, "lbs": 0},
    "no HA, 1 master behind 1 LB": {"ha": False, "masters": 1, "lbs": 1},
    "external etcd 3": {"etcdNodes": 3},
    "external etcd 3, no LB": {"ha": False, "masters": 1, "lbs": 0, "etcdNodes": 3},
    "external etcd 1": {"ha": False, "masters": 1, "etcdNodes": 1},
    "external etcd 1, no LB": {"ha": False, "masters": 1, "lbs": 0, "etcdNodes": 1},
    "5 masters": {"masters": 5},
    "7 masters": {"masters": 7},
    "2 LBs with a VIP": {"lbs": 2, "vip": "10.77.0.5"},
    "vxlan pod network": {"podNetwork": "vxlan"},
    "vxlan, no LB": {"ha": False, "masters": 1, "lbs": 0, "podNetwork": "vxlan"},
    "1 worker": {"workers": 1},
    "10 workers": {"workers": 10},
    "other CIDRs": {"machineCidr": "192.168.50.0/24", "podCidr": "172.20.0.0/16", "serviceCidr": "172.30.0.0/16"},
    "libvirt VM workers beside local machines": {"backend": "libvirt", "libvirtMachines": "worker"},
    # No registry mirror: the machines pull from the upstream registries.
    "aws, upstream images": {"backend": "aws", "podNetwork": "vxlan", "operatorCidr": "198.51.100.7/32"},
}

# For these, every role's argument_specs must accept the inventory too: site.yml with `--tags always` runs only
# the argument validation each role starts with (on the controller), nothing else.
EVERY_ROLE = ["default HA (3 masters, 1 LB, 2 workers)", "vxlan, no LB", "2 LBs with a VIP", "external etcd 3",
              "aws, upstream images"]


def _pop_etcd_member(inv):
    inv["all"]["children"]["etcd"]["hosts"].pop("pilothouse-master-3")


def _set(**values):
    return lambda inv: inv["all"]["vars"].update(values)


def _drop_pod_subnet(inv):
    inv["all"]["hosts"]["pilothouse-worker-2"].pop("pilothouse_pod_subnet")


def _empty_lb(inv):
    inv["all"]["children"]["lb"]["hosts"].clear()


def _no_lb_group(inv):
    del inv["all"]["children"]["lb"]


# Inventories the play must refuse: (spec config, change to its inventory, text the failure must contain).
REFUSED = {
    "even etcd count": ({}, _pop_etcd_member, "etcd has 2 members"),
    "overlapping CIDRs": ({}, _set(pilothouse_service_cidr="10.244.0.0/16"), "must be network addresses in CIDR form"),
    "cluster DNS outside the service CIDR": ({}, _set(pilothouse_cluster_dns="10.0.0.10"),
                                             "must be inside the service CIDR"),
    "two LBs without a VIP": ({"lbs": 2, "vip": "10.77.0.5"}, _set(pilothouse_api_vip=""), "set pilothouse_api_vip"),
    "a node without a pod subnet": ({}, _drop_pod_subnet, "needs pilothouse_pod_subnet"),
    "3 API servers and no LB": ({}, _empty_lb, "lb may be empty only when there is exactly one API server"),
    "no lb group at all": ({"ha": False, "masters": 1, "lbs": 0}, _no_lb_group, "has no group 'lb'"),
    "unknown pod network": ({}, _set(pilothouse_pod_network="flannel"),
                            "pilothouse_pod_network must be one of: routed, vxlan"),
    "more pods per node than its /24 holds": ({}, _set(kubelet_max_pods=300), "must be from 1 to 253"),
    "negative parallel image pulls": ({}, _set(kubelet_max_parallel_image_pulls=-1),
                                      "must be 0 (one pull at a time) or more"),
}


@dataclass
class Run:
    returncode: int
    stdout: str
    seconds: float
    workdir: Path


def _fake_lookup_go(bin_root: Path):
    """lookup_go with every binary the lock pins as an empty file: validation checks they exist, nothing runs them."""
    lock = artifacts.load_lock()

    def lookup_go(name: str, lock_: dict | None = None) -> Entry:
        path = bin_root / name
        path.mkdir(parents=True, exist_ok=True)
        for binary in lock["go"][name]["binaries"]:
            (path / binary).touch()
        return Entry(name, lock["go"][name]["version"], path, {b: EMPTY_SHA256 for b in lock["go"][name]["binaries"]})

    return lookup_go


def _validate_play(workdir: Path) -> Path:
    """roles/site.yml's first play alone, in a playbook of its own."""
    plays = yaml.safe_load((ROLES / "site.yml").read_text())
    play = plays[0]
    assert play["roles"] == [{"role": "validate"}], "site.yml's first play is no longer the validate play"
    assert play["gather_facts"] is False, "the validate play must not gather facts (it would contact every machine)"
    path = workdir / "validate.yml"
    path.write_text(yaml.safe_dump([play], sort_keys=False))
    return path


def _run(workdir: Path, playbook_file: Path, *args: str) -> Run:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROLES / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROLES),
           # Any attempt to reach a machine fails at once (unreachable) instead of waiting for a timeout.
           "ANSIBLE_SSH_EXECUTABLE": "/bin/false", "ANSIBLE_NOCOLOR": "1"}
    started = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(workdir / "inventory.yml"),
                           "-e", f"@{workdir / 'extravars.json'}", str(playbook_file), *args],
                          cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
    return Run(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started, workdir)


def _prepare(mp: pytest.MonkeyPatch, root: Path, label: str, config: dict, mutate=None) -> Path:
    workdir = root / re.sub(r"[^a-z0-9]+", "-", label.lower())
    workdir.mkdir()
    # extravars puts the PKI in the cluster's directory under ~/.local/share: keep each case in its own.
    mp.setattr(playbook, "CLUSTERS_ROOT", workdir / "clusters")
    cluster = spec.from_config(config)  # the spec must accept it: these are configs users may write
    inventory = playbook.inventory(cluster)
    if mutate:
        mutate(inventory)
    (workdir / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    mirror = "" if cluster.backend == "aws" else REGISTRY_MIRROR  # as infra.program passes it
    (workdir / "extravars.json").write_text(json.dumps(playbook.extravars(cluster, mirror)))
    return workdir


def _selected(request, name: str) -> list[str]:
    """The cases of test `name` this session will run (all of them unless -k or node ids narrowed it)."""
    return [item.callspec.params["case"] for item in request.session.items
            if getattr(item, "originalname", None) == name and item.module.__name__ == __name__]


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Every selected case, run in parallel once: {("accepted"|"roles"|"refused", case): Run}."""
    root = tmp_path_factory.mktemp("validate")
    jobs = {}
    with pytest.MonkeyPatch.context() as mp:
        fake = _fake_lookup_go(root / "bin")
        mp.setattr(artifacts, "lookup_go", fake)
        mp.setattr(artifacts, "lookup_kubernetes", lambda version, lock=None: fake("kubernetes"))
        validate = _validate_play(root)
        for case in _selected(request, "test_validate_accepts_every_cluster_the_spec_accepts"):
            jobs[("accepted", case)] = (_prepare(mp, root, f"ok {case}", ACCEPTED[case]), validate)
        for case in _selected(request, "test_every_role_accepts_the_inventory"):
            jobs[("roles", case)] = (_prepare(mp, root, f"roles {case}", ACCEPTED[case]), ROLES / "site.yml",
                                     "--tags", "always")
        for case in _selected(request, "test_validate_refuses_a_bad_inventory_with_a_message_naming_the_fix"):
            config, mutate, _ = REFUSED[case]
            # The whole site.yml: validation must stop it before the PKI (the next play) is created.
            jobs[("refused", case)] = (_prepare(mp, root, f"bad {case}", config, mutate), ROLES / "site.yml")
    started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {key: pool.submit(_run, *job) for key, job in jobs.items()}
        results = {key: f.result() for key, f in futures.items()}
    if results:
        slowest = max(r.seconds for r in results.values())
        print(f"\nvalidate matrix: {len(results)} ansible-playbook runs in {time.monotonic() - started:.1f} s "
              f"({PARALLEL} at a time; slowest run {slowest:.1f} s)")
    return results


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_validate_accepts_every_cluster_the_spec_accepts(case, runs):
    run = runs[("accepted", case)]
    assert run.returncode == 0, f"{case}: validation refused a cluster the spec accepts:\n{run.stdout[-4000:]}"
    assert not re.search(r"(unreachable|failed)=[1-9]", run.stdout), run.stdout[-4000:]
    assert "Validate | Check every binary is on the controller" in run.stdout, "the validate play did not run to its end"


@pytest.mark.parametrize("case", EVERY_ROLE)
def test_every_role_accepts_the_inventory(case, runs):
    run = runs[("roles", case)]
    assert run.returncode == 0, f"{case}: a role's argument_specs refused the inventory:\n{run.stdout[-4000:]}"
    checked = set(re.findall(r"^TASK \[(\w+) : Validating arguments", run.stdout, re.M))
    assert checked >= {"validate", "pki", "etcd", "kube_apiserver", "containerd", "cni", "kubelet", "coredns"}, checked
    assert ("loadbalancer" in checked) == (ACCEPTED[case].get("lbs", 1) > 0)


@pytest.mark.parametrize("case", list(REFUSED))
def test_validate_refuses_a_bad_inventory_with_a_message_naming_the_fix(case, runs):
    run = runs[("refused", case)]
    expected = REFUSED[case][2]
    assert run.returncode != 0, f"{case}: the playbook accepted the inventory"
    failed_in = [line for line in run.stdout.splitlines() if line.startswith("TASK [")][-1]
    assert failed_in.startswith("TASK [validate : "), f"{case}: failed outside validation, in {failed_in}"
    assert expected in run.stdout, run.stdout[-4000:]
    assert not re.search(r"unreachable=[1-9]", run.stdout), f"{case}: a machine was contacted"
    assert not list((run.workdir / "clusters").glob("*/pki")), "validation failed only after the PKI was created"
