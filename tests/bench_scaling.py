"""How bring-up time and memory grow with the workers: 3 masters (stacked etcd) and 1 LB with 2, 5 and 10
workers, each brought up from nothing with the add-ons (no samples), timed to every node Ready, its memory read
after it settles, then destroyed. Prints a table, writes scaling-<stamp>.json and .png. No asserts.

    .venv/bin/pip install -e '.[bench]'   # matplotlib, for the chart
    .venv/bin/python tests/bench_scaling.py [--workers 2 5 10] [--settle 60] [--out DIR]

It uses its own stack and network (cluster `phscale`, 10.70.0.0/24), so it never touches the `dev` stack.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_cluster import nodes_ready, slowest_tasks  # noqa: E402

from infra import artifacts, program, spec as spec_mod, stack  # noqa: E402
from infra.machines import local  # noqa: E402

STACK = "scaling"
SETTINGS = {"clusterName": "phscale", "machineCidr": "10.70.0.0/24", "masters": 3, "lbs": 1}


def measure(workers: int, kubectl: str, settle: float) -> dict:
    settings = {**SETTINGS, "workers": workers}
    spec = spec_mod.from_config(settings)
    config = {f"pilothouse:{key}": str(value) for key, value in settings.items()}
    with tempfile.TemporaryDirectory(prefix="phscale-state-") as state, \
            tempfile.TemporaryDirectory(prefix="phscale-samples-") as no_samples:
        st = stack.select_stack(STACK, lambda: program.build(spec_mod.from_pulumi_config(),
                                                             manifests_dir=Path(no_samples)),
                                Path(state), config=config)
        try:
            began = time.monotonic()
            outputs = stack.up(st).outputs
            nodes_ready(kubectl, outputs["admin_kubeconfig"].value, len(spec.nodes))
            up = time.monotonic() - began
            tasks = slowest_tasks(spec.name)
            time.sleep(settle)
            memory = {m.name: local.memory_stats(m.name) for m in spec.machines}
        finally:
            began = time.monotonic()
            stack.destroy(st)
            down = time.monotonic() - began
            st.workspace.remove_stack(STACK)
            (stack.REPO / f"Pulumi.{STACK}.yaml").unlink(missing_ok=True)
    mib = 2 ** 20
    row = {"workers": workers, "machines": len(spec.machines), "up_to_ready_s": round(up, 1),
           "destroy_s": round(down, 1),
           "rss_mib": round(sum(m["rss"] for m in memory.values()) / mib),
           "usage_mib": round(sum(m["usage"] for m in memory.values()) / mib),
           "rss_per_role_mib": {role: round(sum(memory[m.name]["rss"] for m in spec.machines if role in m.roles)
                                            / mib / max(1, sum(role in m.roles for m in spec.machines)))
                                for role in ("master", "worker", "lb")},
           "slowest_playbook_tasks": tasks[:5]}
    print(f"{workers:>7} {row['machines']:>8} {row['up_to_ready_s']:>9.1f} {row['destroy_s']:>9.1f} "
          f"{row['rss_mib']:>8} {row['usage_mib']:>9}   {row['rss_per_role_mib']}", flush=True)
    return row


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [r["workers"] for r in rows]
    panels = [("seconds", {"up_to_ready_s": "up to every node Ready", "destroy_s": "destroy"}),
              ("MiB, all machines", {"rss_mib": "RSS", "usage_mib": "usage (RSS + page cache)"})]
    fig, axes = plt.subplots(1, len(panels), figsize=(9, 3.5))
    for ax, (unit, series) in zip(axes, panels):
        for key, label in series.items():
            ax.plot(workers, [r[key] for r in rows], marker="o", label=label)
        ax.set_xticks(workers)
        ax.set_xlabel("workers (3 masters, 1 LB)")
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    fig.suptitle("pilothouse: cost by workers, warm cache, add-ons without samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 5, 10], help="worker counts to bring up")
    parser.add_argument("--settle", type=float, default=60, help="seconds to wait before reading memory")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where scaling-*.json/.png go")
    args = parser.parse_args()
    kubectl = str(artifacts.ensure_all(log=lambda _m: None)[0].file("kubectl"))
    print(f"{'workers':>7} {'machines':>8} {'up+Ready':>9} {'destroy':>9} {'RSS MiB':>8} {'usage MiB':>9}   "
          "RSS per machine by role (MiB)")
    rows = [measure(n, kubectl, args.settle) for n in args.workers]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"scaling-{stamp}.json").write_text(json.dumps({"when": stamp, "rows": rows}, indent=2))
    chart(rows, args.out / f"scaling-{stamp}.png")
    print(f"written to {args.out}/scaling-{stamp}.json and .png")


if __name__ == "__main__":
    main()
