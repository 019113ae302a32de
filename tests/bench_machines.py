"""Benchmark of the local backend: base rootfs build (cold), 6 machines SSH-ready, idle memory per machine.

    .venv/bin/python tests/bench_machines.py [--cold] [--machines 6] [--idle 15]

--cold builds a second base rootfs in a throwaway cache dir (the cached base stays untouched: running
machines use it as their lower layer). Machines go on a bench-only bridge and are destroyed at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.machines import keys, local, rootfs  # noqa: E402  (needs the path above)

BRIDGE = "phbench0"
NETWORK = "10.251.10"


def bench_cold_rootfs() -> None:
    with tempfile.TemporaryDirectory(prefix="pilothouse-bench-") as cache:
        os.environ["PILOTHOUSE_CACHE"] = cache
        try:
            started = time.monotonic()
            path = rootfs.ensure_base_rootfs()
            elapsed = time.monotonic() - started
            size = sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
        finally:
            del os.environ["PILOTHOUSE_CACHE"]
        print(f"base rootfs, cold build:       {elapsed:6.1f} s   ({size / 2**20:.0f} MiB)")


def bench_machines(count: int, idle: float) -> None:
    started = time.monotonic()
    rootfs.ensure_base_rootfs()
    print(f"base rootfs, cached lookup:    {time.monotonic() - started:6.2f} s")
    key = keys.generate_ed25519("pilothouse-bench")
    specs = [local.MachineSpec(f"phb-{i}", f"{NETWORK}.{10 + i}", 24, BRIDGE, key.public_key)
             for i in range(1, count + 1)]
    try:
        started = time.monotonic()

        def create(spec: local.MachineSpec) -> float:
            local.create(spec, key.private_key)
            return time.monotonic() - started

        with ThreadPoolExecutor(max_workers=count) as pool:
            ready = list(pool.map(create, specs))
        print(f"{count} machines SSH-ready:        {max(ready):6.1f} s   "
              f"(each: {', '.join(f'{t:.1f}' for t in ready)} s)")
        time.sleep(idle)
        stats = [local.memory_stats(spec.name) for spec in specs]
        usage = [s["usage"] / 2**20 for s in stats]
        rss = [s["rss"] / 2**20 for s in stats]
        print(f"idle memory per machine after {idle:.0f}s: usage {sum(usage) / count:.1f} MiB "
              f"(rss {sum(rss) / count:.1f} MiB, page cache the rest; min {min(usage):.1f}, max {max(usage):.1f})")
    finally:
        started = time.monotonic()
        for spec in specs:
            local.destroy(spec.name)
        print(f"destroy {count} machines:          {time.monotonic() - started:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="also time a cold base rootfs build")
    parser.add_argument("--machines", type=int, default=6, help="machines to boot at once (default 6)")
    parser.add_argument("--idle", type=float, default=15, help="seconds to let them settle before measuring")
    args = parser.parse_args()
    if args.cold:
        bench_cold_rootfs()
    bench_machines(args.machines, args.idle)


if __name__ == "__main__":
    main()
