"""The CIS Kubernetes Benchmark on a live cluster: `invoke cis`.

kube-bench (lock.yaml's `tools:`, built on first use) runs through roles/cis.yml on one machine of each kind the
benchmark covers: the first control-plane machine (control-plane, etcd when it is a member, policies and node
checks), the first etcd member that is not a master (external etcd), the first worker (node checks). Its JSON
comes back into the cluster directory's `cis/`, and this module sums it up.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass

from infra import artifacts, playbook

TOOL = "kube-bench"
STATUSES = ("PASS", "FAIL", "WARN", "INFO")


class CisError(RuntimeError):
    """The benchmark cannot run; the message says why."""


@dataclass(frozen=True)
class Finding:
    host: str
    number: str
    status: str
    description: str
    remediation: str


def targets(inventory: dict) -> dict[str, str]:
    """host -> the kube-bench targets to run there."""
    groups = {g: list(v.get("hosts", {})) for g, v in inventory["all"]["children"].items()}
    masters, etcd = groups.get("kube_control_plane", []), groups.get("etcd", [])
    workers = [h for h in groups.get("kube_node", []) if h not in masters]
    chosen: dict[str, str] = {}
    if masters:
        first = masters[0]
        chosen[first] = ",".join(["master", "controlplane", *(["etcd"] if first in etcd else []), "policies", "node"])
    external = [h for h in etcd if h not in masters]
    if external:
        chosen[external[0]] = "etcd"
    if workers:
        chosen[workers[0]] = "node"
    return chosen


def findings(host: str, report: dict) -> list[Finding]:
    """Every check of one kube-bench JSON report ({"Controls": [...], "Totals": ...})."""
    return [Finding(host, r["test_number"], r["status"], r["test_desc"], r.get("remediation", "").strip())
            for control in report["Controls"] for group in control.get("tests") or []
            for r in group.get("results") or []]


def run(outputs: dict, log=print) -> list[Finding]:
    """Build kube-bench if needed, run it on the cluster of a stack's outputs, return every finding."""
    if "inventory" not in outputs or "admin_kubeconfig" not in outputs:
        raise CisError("the stack has no cluster: bring it up first (`invoke up`)")
    inventory = json.loads(outputs["inventory"])
    lock = artifacts.load_lock()
    entry = artifacts.ensure_tool(TOOL, lock, log=log)
    benchmark = lock["tools"][TOOL]["benchmark"]
    cluster = inventory["all"]["vars"]["pilothouse_cluster_name"]
    results = playbook.cluster_dir(cluster) / "cis"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(mode=0o700, parents=True)
    chosen = targets(inventory)
    log(f"kube-bench {lock['tools'][TOOL]['version']} ({benchmark}) on "
        + ", ".join(f"{h} ({t})" for h, t in chosen.items()))
    playbook.run_playbook(inventory, {
        **json.loads(outputs["playbook_vars"]), "pilothouse_kube_bench_targets": chosen,
        "pilothouse_kube_bench_dir": str(entry.path), "pilothouse_kube_bench_benchmark": benchmark,
        "pilothouse_kube_bench_results": str(results),
    }, outputs["ssh_private_key"], playbook.cluster_dir(cluster) / "logs", playbook="cis.yml")
    return [f for host in chosen for f in findings(host, json.loads((results / f"{host}.json").read_text()))]


def render(found: list[Finding]) -> str:
    """Counts per host, then every FAIL and WARN with kube-bench's remediation on one line."""
    lines = []
    for host in dict.fromkeys(f.host for f in found):
        counts = Counter(f.status for f in found if f.host == host)
        lines.append(f"{host}: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES))
    for status in ("FAIL", "WARN"):
        for f in (f for f in found if f.status == status):
            hint = " ".join(f.remediation.split())[:240]
            lines.append(f"  [{status}] {f.host} {f.number} {f.description}" + (f"\n         {hint}" if hint else ""))
    return "\n".join(lines)
