"""What `invoke artifacts` builds, in which order, and how many at once.

Go artifacts build `jobs` at a time, the longest first, so no long one is left running alone at the end. The
rest is one lane beside them, one step at a time and mostly downloads and unpacking: the machines' base rootfs,
then the image families (they share the .deb cache), each after its base image and the Go artifact it wraps.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from .store import ArtifactError

HEARTBEAT = 30.0  # seconds between "still building" lines while long builds run
# A Go build of Kubernetes or of the Pulumi provider peaks at about 4 GiB.
GIB_PER_JOB = 5
# The longest cold builds, longest first (measured two at a time on 2 cores: 13.8, 13.4, 10.9, 6.8, 6.4 and
# 5.4 minutes); started first, so the last builds running are short ones.
LONGEST = ("pulumi-kubernetes", "traefik", "kubernetes", "pulumi", "metallb", "coredns")


def default_jobs() -> int:
    """2 when memory allows: Go uses both cores inside one build, and a second build fills them while the
    first one downloads modules, generates code or links (each single-threaded)."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1, min(2, memory // (GIB_PER_JOB << 30)))


@dataclass
class Step:
    kind: str  # go, rootfs or image
    name: str
    version: str
    after: list[str] = field(default_factory=list)  # keys of the steps this one needs first

    @property
    def in_lane(self) -> bool:
        """Not counted against `jobs`: the lane's steps run one at a time beside the Go builds."""
        return self.kind != "go"

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name} {self.version}"


def _rank(name: str) -> int:
    # Another pinned Kubernetes release (cached as kubernetes-<version>) builds as long as the default one.
    name = "kubernetes" if name.startswith("kubernetes-") else name
    return LONGEST.index(name) if name in LONGEST else len(LONGEST)


def plan(go: dict, families: dict, rootfs_suite: str) -> list[Step]:
    """The steps for the lock's `go:` artifacts and image `families`, in the order they should start."""
    names = sorted(go, key=_rank)
    steps = [Step("go", name, go[name]["version"]) for name in names]
    lane = [Step("rootfs", "machine base", rootfs_suite)]
    for name in sorted(families, key=lambda n: "artifact" in families[n]):  # stable: lock order otherwise
        family = families[name]
        after = [lane[-1].key] + ([f"image:{family['base']}"] if family.get("base") else [])
        if "artifact" in family:
            after.append(f"go:{family['artifact']['name']}")
        lane.append(Step("image", name, family["version"], after))
    return steps + lane


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def run(steps: list[Step], build: Callable[[Step, Callable[[str], None]], object], jobs: int,
        say: Callable[[str], None], errors: tuple = (ArtifactError,)) -> dict[str, object]:
    """Run `build(step, log)` for every step, up to `jobs` Go builds at once beside the lane, each once what it
    needs is done; print
    [done/total] with each step's time and a heartbeat naming what still builds. After a failure nothing new
    starts; the builds already running finish (the cache keeps them), then ArtifactError names what failed.
    Returns each step's result by key."""
    pending = list(steps)
    running: dict[Future, tuple[Step, float, list]] = {}
    finished: dict[str, object] = {}
    failed: list[str] = []
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT):
            now = time.monotonic()
            busy = ", ".join(f"{s.name} {s.version} ({minutes(now - t)})" for s, t, _ in list(running.values()))
            if busy:
                say(f"  ... still building {busy}")

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        with ThreadPoolExecutor(max_workers=jobs + 1) as pool:
            while pending or running:
                while not failed:
                    busy = sum(not s.in_lane for s, _, _ in running.values())
                    ready = next((s for s in pending if all(a in finished for a in s.after)
                                  and (s.in_lane or busy < jobs)), None)
                    if ready is None:
                        break
                    pending.remove(ready)
                    built: list[str] = []  # a builder logs only when it builds something

                    def log(msg: str, built: list[str] = built) -> None:
                        built.append(msg)
                        say(f"  {msg}")

                    running[pool.submit(build, ready, log)] = (ready, time.monotonic(), built)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    step, since, built = running.pop(future)
                    try:
                        finished[step.key] = future.result()
                    except errors as exc:
                        failed.append(step.label)
                        say(f"error: {step.label}: {exc}")
                        if running:
                            say("  letting the builds already running finish (the cache keeps them)")
                        continue
                    state = f"built in {minutes(time.monotonic() - since)}" if built else "cached"
                    say(f"[{len(finished)}/{len(steps)}] {step.label}: {state}")
    finally:
        stop.set()
    if failed:
        raise ArtifactError(f"not built: {', '.join(failed)}; the error above says why")
    return finished
