"""End to end, on the session's shared cluster (tests/conftest.py): one `pulumi up` from no machines to a
healthy HA cluster running every sample workload, every workload verified, a no-op re-run (through the
Automation API and through the plain `pulumi` CLI), a worker added, a playbook run that repairs only two units
stopped or disabled by hand, and a manifest removed. The fixture's teardown checks that `pulumi destroy` leaves
nothing on the host.

The tests run in this order and each one's change is what the next one sees.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from infra import playbook, stack, status
from infra import workloads as wl
from infra.kube import Kubectl, KubectlError

pytestmark = [pytest.mark.artifacts, pytest.mark.machines]

# The manifest the removal test deletes: a Deployment with a ReplicaSet and pods, so "only that object" is visible.
REMOVED = ("controllers/W64-deploy-deploy.yaml", ("Deployment", "default", "deploy"))


def test_every_component_is_healthy_through_the_load_balancer(shared_cluster):
    spec, outputs = shared_cluster.spec, shared_cluster.outputs
    report = status.collect(outputs["machines"], outputs["ssh_private_key"], outputs["admin_kubeconfig"])
    assert report.healthy, status.render(report)
    assert len(report.etcd_members) == 3 and sum(m["leader"] for m in report.etcd_members) == 1
    assert set(report.leases) == {"kube-controller-manager", "kube-scheduler"}
    assert set(report.nodes) == {m.name for m in spec.nodes} and all(report.nodes.values())
    server = next(line for line in open(outputs["admin_kubeconfig"]).read().splitlines() if "server:" in line)
    assert server.strip() == f"server: https://{spec.api_address}:6443"


def test_every_sample_workload_behaves_as_the_notes_say(shared_cluster):
    results = wl.verify(shared_cluster.kubeconfig, ingress_address=shared_cluster.outputs["ingress_address"])
    assert {r.workload for r in results} == {w for w, _ in wl.CHECKS}
    assert [f"{r.workload}: {r.reason}" for r in results if not r.ok] == []


def test_a_second_pulumi_up_changes_nothing(shared_cluster):
    since = time.time()
    result = stack.up(shared_cluster.stack, expect_no_changes=True)
    assert set(result.summary.resource_changes) == {"same"}, result.summary.resource_changes
    # pulumi-kubernetes copies the admin kubeconfig to a new file in $TMPDIR each time it starts: the copies
    # of this run are in the stack's private directory (stack.pulumi_env), none in the host's /tmp.
    def copies(directory: Path) -> list[Path]:
        return [p for p in directory.glob("kubeconfig*") if p.stat().st_mtime >= since]
    assert copies(shared_cluster.workdir / "state" / "tmp")
    assert copies(Path(tempfile.gettempdir())) == []
    # Nor does the CLI write its automatic log (stack.no_automatic_log) anywhere in its home.
    home = Path(shared_cluster.stack.workspace.env_vars["PULUMI_HOME"])
    assert [p for p in home.rglob("*.log") if p.stat().st_mtime >= since] == []


def test_plain_pulumi_preview_runs_the_same_program_and_sees_no_change(shared_cluster):
    """The `pulumi` CLI itself, through its language host, runs infra/__main__.py (the repository's
    workloads/, which the shared cluster deployed a copy of) on the state the fixture left: same program,
    same resources, nothing to do."""
    proc = subprocess.run(["pulumi", "--non-interactive", "preview", "--stack", shared_cluster.stack.name,
                           "--expect-no-changes"], cwd=stack.REPO,
                          env={**os.environ, **shared_cluster.stack.workspace.env_vars},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_adding_a_worker_configures_only_it_and_the_pod_routes(shared_cluster):
    workers = len(shared_cluster.spec.workers)
    shared_cluster.up(workers=workers + 1)
    new = shared_cluster.spec.workers[-1].name
    ready = Kubectl(shared_cluster.kubeconfig).run(
        "get", "node", new, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
    assert ready == "True"
    # Only the new worker got the node roles; every node and the LB got the route to its pod subnet.
    log = (playbook.cluster_dir(shared_cluster.spec.name) / "logs" / "ansible.log").read_text()
    assert "PLAY [Nodes being added]" in log and "PLAY [Control plane" not in log
    # The next test's full site.yml run changing only what it broke itself shows scale.yml left nothing undone.


def test_a_second_playbook_run_changes_only_the_units_stopped_or_disabled_by_hand(shared_cluster):
    """The roles skip a unit's "ensure it is enabled and running" task when the unit was up as the run found it:
    one stopped and disabled, one only disabled, must still be found and brought back, as the run's only two
    changes (anything more would also be work scale.yml left undone)."""
    worker = shared_cluster.spec.workers[0].name
    shared_cluster.ssh(worker, "systemctl disable --now kube-proxy && systemctl disable containerd")
    try:
        outputs = shared_cluster.outputs
        result = playbook.run_playbook(json.loads(outputs["inventory"]), json.loads(outputs["playbook_vars"]),
                                       outputs["ssh_private_key"],
                                       playbook.cluster_dir(shared_cluster.spec.name) / "logs")
        states = shared_cluster.ssh(worker, "for u in kube-proxy containerd; do systemctl is-active $u; "
                                            "systemctl is-enabled $u; done", check=False).stdout.split()
        assert states == ["active", "enabled"] * 2, states
        assert result.changed == 2, f"changed={result.changed}; see {result.log}"
    finally:
        shared_cluster.ssh(worker, "systemctl enable --now kube-proxy containerd", check=False)


def _exists(kube: Kubectl, key: tuple[str, str, str]) -> bool:
    kind, namespace, name = key
    try:
        kube.run("get", kind, name, *(["-n", namespace] if namespace else []), "-o", "name")
        return True
    except KubectlError as e:
        assert "NotFound" in e.stderr, str(e)   # a broken API is not "gone"
        return False


def test_removing_one_manifest_removes_exactly_that_object(shared_cluster):
    kube = Kubectl(shared_cluster.kubeconfig)
    path, key = REMOVED
    keys = [m.key for m in wl.load_sources(shared_cluster.manifests)]
    assert key in keys and _exists(kube, key)
    (shared_cluster.manifests / path).unlink()
    result = shared_cluster.up()
    # The object itself; nothing else changes.
    assert result.summary.resource_changes == {"delete": 1, "same": result.summary.resource_changes["same"]}, \
        result.summary.resource_changes
    # The samples skip pulumi-kubernetes' await, so `up` returns once the API accepted the delete; with its
    # ReplicaSet and pods still being removed, the Deployment may be there a moment longer, marked for deletion.
    kind, namespace, name = key
    deadline = time.monotonic() + 90
    while found := kube.run("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "json"):
        assert json.loads(found)["metadata"].get("deletionTimestamp"), "up left the object, not marked for deletion"
        assert time.monotonic() < deadline, "the object is still being deleted 90 s after up returned"
        time.sleep(1)
    still = [k for k in keys if k != key and not _exists(kube, k)]
    assert not still, f"also gone: {still}"
