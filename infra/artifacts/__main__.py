"""`python -m infra.artifacts [--list] [--export DIR] [--missing] [--jobs N] [--kubernetes VERSION]`: build or
fetch every pinned artifact, every image and the local machines' base rootfs (and another pinned Kubernetes
release when asked), up to N at a time (infra/artifacts/buildplan.py), saying which ones are building, for how
long, and how many are done."""
import argparse
import sys
import time
from pathlib import Path

from infra.machines import rootfs
from infra.machines.errors import MachineError

from . import (ArtifactError, buildplan, ensure_go, ensure_kubernetes, export_bundle, images, kubernetes_release,
               load_lock, missing)


def _say(msg: str) -> None:
    sys.stderr.write(msg + "\n")  # one write per line: builds running side by side log from their own threads
    sys.stderr.flush()


def build_all(jobs: int, kubernetes: str = "") -> list:
    """Every step of the plan, with the Kubernetes release `kubernetes` among the Go builds when it is not the
    default one; returns the lock's `go:` entries in lock order."""
    lock, spec = load_lock(), images.load_spec()
    go = dict(lock["go"])
    if kubernetes:
        name, recipe = kubernetes_release(kubernetes, lock)
        go.setdefault(name, recipe)

    def build(step: buildplan.Step, log) -> object:
        if step.kind == "go" and step.name not in lock["go"]:
            return ensure_kubernetes(step.version, lock, log=log)
        if step.kind == "go":
            return ensure_go(step.name, lock, log=log)
        if step.kind == "image":
            return images.ensure_images([step.name], spec, log=log)
        if not rootfs.base_rootfs_path().is_dir():
            log("debootstrap of the machines' base (about 1 minute)")
            rootfs.ensure_base_rootfs()
        return None

    steps = buildplan.plan(go, spec["families"], rootfs.SUITE)
    done = buildplan.run(steps, build, jobs, _say, errors=(ArtifactError, MachineError))
    return [done[f"go:{name}"] for name in lock["go"]]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.artifacts", description=__doc__)
    parser.add_argument("--list", action="store_true", help="print name, version, sha256 and path of each file")
    parser.add_argument("--export", type=Path, metavar="DIR", help="also copy everything into DIR for offline use")
    parser.add_argument("--missing", action="store_true",
                        help="build nothing: print what is not built yet and exit 1 if anything is")
    parser.add_argument("--jobs", type=int, default=buildplan.default_jobs(), metavar="N",
                        help="builds side by side (default here: %(default)s, from the memory)")
    parser.add_argument("--kubernetes", default="", metavar="VERSION",
                        help="also build this Kubernetes release of lock.yaml `kubernetes_releases:` (for upgrades)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be 1 or more")
    if args.kubernetes:
        try:
            kubernetes_release(args.kubernetes)
        except ArtifactError as exc:
            parser.error(str(exc))
    if args.missing:
        absent = missing(kubernetes=args.kubernetes) + images.missing()
        if not rootfs.base_rootfs_path().is_dir():
            absent.append(f"rootfs machine base {rootfs.SUITE}")
        for what in absent:
            print(what)
        return 1 if absent else 0
    started = time.monotonic()
    try:
        entries = build_all(args.jobs, args.kubernetes)
    except (ArtifactError, MachineError) as exc:
        _say(f"error: {exc}")
        return 1
    if args.list:
        for entry in entries:
            for name, digest in entry.files.items():
                print(f"{name:<26} {entry.version:<10} {digest}  {entry.file(name)}")
    if args.export:
        _say(f"bundle written to {export_bundle(entries, args.export)}")
    _say(f"artifacts ready in {buildplan.minutes(time.monotonic() - started)}")
    return 0


sys.exit(main())
