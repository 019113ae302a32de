"""End to end: from no machines to a healthy HA cluster running every sample workload with one `pulumi up`,
every workload verified, a no-op re-run, then a clean host.

The default topology (3 masters with stacked etcd, 2 workers, 1 haproxy LB) under its own name and network,
so a developer's `dev` stack is never touched.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pulumi import automation as auto

from infra import artifacts, configure, program, spec as spec_mod, stack, status, workloads
from infra.machines import local

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

CONFIG = {"pilothouse:clusterName": "phe2e", "pilothouse:machineCidr": "10.76.0.0/24"}
SCALED_SPEC = spec_mod.from_config({**{k.split(":", 1)[1]: v for k, v in CONFIG.items()}, "workers": 3})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    st = stack.select_stack("e2e", program.main, tmp_path_factory.mktemp("state"), config=CONFIG)
    spec = spec_mod.from_config({k.split(":", 1)[1]: v for k, v in CONFIG.items()})
    try:
        outputs = st.up().outputs
        yield st, spec, outputs
    finally:
        st.destroy()
        st.workspace.remove_stack("e2e")
        Path(stack.REPO / "Pulumi.e2e.yaml").unlink(missing_ok=True)
    names = [m.name for m in SCALED_SPEC.machines]
    assert [n for n in names if local.status(n) != "absent"] == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert program.bridge_name(spec) + ":" not in links
    assert not program.cluster_dir(spec).exists(), "the cluster's PKI and logs outlived `pulumi destroy`"


def test_every_component_is_healthy_through_the_load_balancer(cluster):
    _, spec, outputs = cluster
    kubectl = str(artifacts.ensure_go("kubernetes").file("kubectl"))
    report = status.collect(outputs["machines"].value, outputs["ssh_private_key"].value,
                            outputs["admin_kubeconfig"].value, kubectl)
    assert report.healthy, status.render(report)
    assert len(report.etcd_members) == 3 and sum(m["leader"] for m in report.etcd_members) == 1
    assert set(report.leases) == {"kube-controller-manager", "kube-scheduler"}
    assert set(report.nodes) == {m.name for m in spec.nodes} and all(report.nodes.values())
    server = next(line for line in Path(outputs["admin_kubeconfig"].value).read_text().splitlines()
                  if "server:" in line)
    assert server.strip() == f"server: https://{spec.api_address}:6443"


def test_every_sample_workload_behaves_as_the_notes_say(cluster):
    _, _, outputs = cluster
    results = workloads.verify(outputs["admin_kubeconfig"].value,
                               kubectl=str(artifacts.ensure_go("kubernetes").file("kubectl")),
                               ingress_address=outputs["ingress_address"].value)
    assert len(results) >= 60
    assert [f"{r.workload}: {r.reason}" for r in results if not r.ok] == []


def test_a_second_pulumi_up_changes_nothing(cluster):
    st, _, _ = cluster
    result = st.up(expect_no_changes=True)
    assert set(result.summary.resource_changes) == {"same"}


def test_plain_pulumi_preview_runs_the_same_program_and_sees_no_change(cluster):
    """The `pulumi` CLI itself, through its language host, on the state `invoke up` left: same program,
    same resources, nothing to do."""
    st, _, _ = cluster
    proc = subprocess.run(["pulumi", "--non-interactive", "preview", "--stack", "e2e", "--expect-no-changes"],
                          cwd=stack.REPO, env={**os.environ, **st.workspace.env_vars},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_adding_a_worker_configures_only_it_and_the_pod_routes(cluster):
    st, spec, _ = cluster
    st.set_config("pilothouse:workers", auto.ConfigValue("3"))
    outputs = st.up().outputs
    kubectl = str(artifacts.ensure_go("kubernetes").file("kubectl"))
    ready = subprocess.run([kubectl, "--kubeconfig", outputs["admin_kubeconfig"].value, "get", "node", "phe2e-worker-3",
                            "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                           capture_output=True, text=True)
    assert ready.stdout == "True", ready.stderr
    # Only the new worker got the node roles; every node and the LB got the route to its pod subnet.
    log = (program.cluster_dir(spec) / "logs" / "ansible.log").read_text()
    assert "PLAY [Nodes being added]" in log and "PLAY [Control plane]" not in log
    # The next test's full site.yml run reporting changed=0 shows scale.yml left nothing undone.


def test_a_second_playbook_run_reports_no_change(cluster):
    st, _, _ = cluster
    outputs = st.outputs()
    spec = SCALED_SPEC  # with the worker the test above added
    workdir = program.cluster_dir(spec)
    result = configure.run_playbook(spec.inventory(), program.role_vars(spec, program.registry_endpoint(spec), workdir),
                                    outputs["ssh_private_key"].value, workdir / "logs")
    assert result.changed == 0, f"changed={result.changed}; see {result.log}"
