"""Benchmark the default topology end to end; prints figures and writes a timeline (JSON + PNG). No asserts.

    .venv/bin/python tests/bench_cluster.py [--out DIR]

Phases: artifacts (warm cache), machines SSH-ready, the whole `pulumi up` (playbook, add-ons, sample workloads)
and all nodes Ready, every workload verified, a no-op `pulumi up`, adding one worker, destroy. The first
playbook run's slowest tasks (its timing callback's summary) go into the JSON and are printed too, and so does
each component's restart-to-ready time (restarted on one machine of the running cluster, its own health check
polled every 50 ms on that machine).
It uses its own stack and network (cluster `phbench`, 10.75.0.0/24), so it never touches the `dev` stack.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra import artifacts, known_hosts, playbook, program, stack, workloads  # noqa: E402

CONFIG = {"pilothouse:clusterName": "phbench", "pilothouse:machineCidr": "10.75.0.0/24"}


class Timeline:
    def __init__(self):
        self.start = time.monotonic()
        self.phases: list[dict] = []

    def phase(self, name: str, began: float, ended: float | None = None) -> None:
        ended = time.monotonic() if ended is None else ended
        self.phases.append({"phase": name, "start_s": round(began - self.start, 2),
                            "seconds": round(ended - began, 2)})
        print(f"{name:<34} {ended - began:7.1f} s", flush=True)


def slowest_tasks(cluster: str) -> list[dict]:
    """The summary roles/callback_plugins/pilothouse_timing.py prints at the end of the last playbook run."""
    lines = (playbook.cluster_dir(cluster) / "logs" / "ansible.log").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("SLOWEST TASKS"))
    tasks = []
    for line in lines[start + 1:]:
        seconds, _, name = line.strip().partition("s  ")
        if name == "total playbook time":
            break
        if name:
            tasks.append({"task": name, "seconds": float(seconds)})
    return tasks


def slowest_checks(lines: list[str]) -> list[dict]:
    """verify()'s result lines (`PASS  <workload>  (<seconds>s)  <reason>`), slowest first."""
    found = []
    for line in lines:
        match = re.match(r"(?:PASS|FAIL)  (.+?)  \((\d+)s\)", line)
        if match:
            found.append({"check": match.group(1), "seconds": int(match.group(2))})
    return sorted(found, key=lambda c: -c["seconds"])


# Component -> (role of the machine it is restarted on, the command that succeeds once it is ready there).
HEALTH = {
    # etcd's own /health on its metrics port: true once the member has a leader and serves reads.
    "etcd": ("master", "curl -sf http://127.0.0.1:2381/health"),
    "kube-apiserver": ("master", "curl -sf --cacert /etc/kubernetes/pki/ca.crt "
                                 "--cert /etc/kubernetes/pki/healthcheck-client.crt "
                                 "--key /etc/kubernetes/pki/healthcheck-client.key https://127.0.0.1:6443/readyz"),
    "kube-controller-manager": ("master", "curl -sfk https://127.0.0.1:10257/healthz"),
    "kube-scheduler": ("master", "curl -sfk https://127.0.0.1:10259/healthz"),
    "containerd": ("worker", "ctr version"),
    "kubelet": ("worker", "curl -sf http://127.0.0.1:10248/healthz"),
    "kube-proxy": ("worker", "curl -sf http://127.0.0.1:10256/healthz"),
}


def restart_to_ready(cluster: str, machines: list[dict], key_file: Path) -> dict[str, float]:
    """Seconds from `systemctl restart` to the component's health check passing, timed on the machine itself."""
    ssh = ["ssh", "-i", str(key_file), *known_hosts.options(playbook.cluster_dir(cluster) / known_hosts.FILE_NAME,
                                                              pinned=True), "-o", "BatchMode=yes"]
    found = {}
    for unit, (role, check) in HEALTH.items():
        address = next(m["address"] for m in machines if role in m["roles"])
        script = (f"s=$(date +%s%N); systemctl restart {unit}; "
                  f"until {check} >/dev/null 2>&1; do sleep 0.05; done; echo $(( $(date +%s%N) - s ))")
        out = subprocess.run([*ssh, f"root@{address}", script], capture_output=True, text=True, timeout=300)
        found[unit] = round(int(out.stdout.strip()) / 1e9, 2)
        time.sleep(5)  # let the cluster settle before the next restart
    return found


def nodes_ready(kubectl: str, kubeconfig: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "get", "nodes", "--no-headers"],
                             capture_output=True, text=True).stdout.split("\n")
        if sum(" Ready " in line for line in out) == count:
            return
        time.sleep(1)
    raise SystemExit(f"nodes not Ready after {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where timeline.json/.png go")
    args = parser.parse_args()
    tl = Timeline()

    began = time.monotonic()
    kubectl = str(artifacts.ensure_all(log=lambda _m: None)[0].file("kubectl"))
    tl.phase("artifacts (warm cache)", began)

    machines_done: list[float] = []

    def on_event(event) -> None:
        outputs = event.res_outputs_event
        if outputs and "LocalMachine" in outputs.metadata.type:
            machines_done.append(time.monotonic())

    with tempfile.TemporaryDirectory(prefix="phbench-state-") as state:
        st = stack.select_stack("bench", program.main, Path(state), config=CONFIG)
        try:
            began = time.monotonic()
            outputs = stack.up(st, on_event=on_event).outputs
            configured = time.monotonic()
            tl.phase("machines SSH-ready (6)", began, max(machines_done))
            kubeconfig = outputs["admin_kubeconfig"].value
            nodes_ready(kubectl, kubeconfig, 5)
            tl.phase("pulumi up done, all nodes Ready", began)
            tl.phase("  after machines: registry, playbook, add-ons, samples", max(machines_done), configured)
            tasks = slowest_tasks(CONFIG["pilothouse:clusterName"])
            for task in tasks[:10]:
                print(f"    {task['seconds']:6.1f} s  {task['task']}")

            began = time.monotonic()
            lines: list[str] = []
            results = workloads.verify(kubeconfig, kubectl=kubectl, ingress_address=outputs["ingress_address"].value,
                                       echo=lines.append)
            tl.phase(f"workloads verified ({sum(r.ok for r in results)}/{len(results)} pass)", began)
            checks = slowest_checks(lines)
            for check in checks[:5]:
                print(f"    {check['seconds']:6.0f} s  {check['check']}")

            key_file = Path(state) / "id_ed25519"
            key_file.write_text(outputs["ssh_private_key"].value)
            key_file.chmod(0o600)
            components = restart_to_ready(CONFIG["pilothouse:clusterName"], outputs["machines"].value, key_file)
            for unit, seconds in components.items():
                print(f"    {seconds:6.2f} s  {unit} restart to ready")

            began = time.monotonic()
            stack.up(st, expect_no_changes=True)
            tl.phase("no-op pulumi up", began)

            began = time.monotonic()
            st.set_config("pilothouse:workers", stack.auto.ConfigValue("3"))
            stack.up(st)
            nodes_ready(kubectl, kubeconfig, 6)
            tl.phase("add one worker (Ready)", began)
        finally:
            began = time.monotonic()
            stack.destroy(st)
            tl.phase("destroy", began)
            st.workspace.remove_stack("bench")
            (stack.REPO / "Pulumi.bench.yaml").unlink(missing_ok=True)

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"when": stamp, "topology": "3 masters (stacked etcd), 2 workers, 1 LB", "phases": tl.phases,
              "slowest_playbook_tasks": tasks, "slowest_checks": checks, "restart_to_ready_s": components}
    (args.out / f"timeline-{stamp}.json").write_text(json.dumps(record, indent=2))
    chart(tl.phases, args.out / f"timeline-{stamp}.png")
    print(f"timeline written to {args.out}/timeline-{stamp}.json and .png")


def chart(phases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 * len(phases) + 1))
    for row, p in enumerate(reversed(phases)):
        ax.barh(row, p["seconds"], left=p["start_s"], color="tab:blue")
        ax.text(p["start_s"] + p["seconds"] + 1, row, f"{p['seconds']:.0f}s", va="center", fontsize=8)
    ax.set_yticks(range(len(phases)), [p["phase"] for p in reversed(phases)], fontsize=8)
    ax.set_xlabel("seconds since start")
    ax.set_title("pilothouse: default topology, warm cache")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
