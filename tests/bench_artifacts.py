"""Benchmark: artifact build time (cold and warm) and cache size. Prints figures; asserts nothing.

    .venv/bin/python tests/bench_artifacts.py           # warm: the cache as it is
    .venv/bin/python tests/bench_artifacts.py --cold    # empty artifact cache AND empty Go caches (~30-40 min)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def timed_build(env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "infra.artifacts"], cwd=REPO, env=env, check=True)
    subprocess.run([sys.executable, "-m", "infra.artifacts.images"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="start from empty caches (temporary directories)")
    args = parser.parse_args()
    env = dict(os.environ)
    scratch = None
    if args.cold:
        scratch = tempfile.TemporaryDirectory(prefix="pilothouse-bench-")
        root = Path(scratch.name)
        env.update(PILOTHOUSE_CACHE=str(root / "cache"), GOCACHE=str(root / "gocache"),
                   GOMODCACHE=str(root / "gomod"))
        print(f"cold build: {timed_build(env):.0f}s")
    print(f"warm build: {timed_build(env):.1f}s")
    cache = Path(env.get("PILOTHOUSE_CACHE", Path.home() / ".cache" / "pilothouse"))
    for part in ("artifacts", "images"):
        print(f"cache {part}: {du(cache / part) / 2**20:.0f} MiB")
    if scratch:
        subprocess.run(["chmod", "-R", "u+w", scratch.name])  # the Go module cache is read-only
        scratch.cleanup()


if __name__ == "__main__":
    main()
