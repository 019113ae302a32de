"""`python -m infra.artifacts [--list] [--export DIR] [--missing]`: build or fetch every pinned artifact, every
image and the local machines' base rootfs, one at a time, saying which one is building, for how long, and
how many are done."""
import argparse
import sys
import threading
import time
from pathlib import Path

from infra.machines import rootfs
from infra.machines.errors import MachineError

from . import ArtifactError, ensure_go, export_bundle, images, load_lock, missing

HEARTBEAT = 30.0  # seconds between "still building" lines while one long build runs


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def build_all() -> list:
    """Every Go artifact, then every image family, with a [done/total] count and a heartbeat."""
    lock = load_lock()
    spec = images.load_spec()
    steps = [("go", name, lock["go"][name]["version"]) for name in lock["go"]]
    steps += [("image", name, spec["families"][name]["version"]) for name in spec["families"]]
    steps.append(("rootfs", "machine base", rootfs.SUITE))
    entries = []
    current = {"what": "", "since": time.monotonic()}
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT):
            _say(f"  ... still building {current['what']} ({_minutes(time.monotonic() - current['since'])})")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        for number, (kind, name, version) in enumerate(steps, start=1):
            current.update(what=f"{name} {version}", since=time.monotonic())
            built = []  # a builder logs only when it builds something

            def log(msg: str) -> None:
                built.append(msg)
                _say(f"  {msg}")

            if kind == "go":
                entries.append(ensure_go(name, lock, log=log))
            elif kind == "image":
                images.ensure_images([name], spec, log=log)
            elif not rootfs.base_rootfs_path().is_dir():
                log("debootstrap of the machines' base (about 2 minutes)")
                rootfs.ensure_base_rootfs()
            took = time.monotonic() - current["since"]
            state = f"built in {_minutes(took)}" if built else "cached"
            _say(f"[{number}/{len(steps)}] {kind} {name} {version}: {state}")
    finally:
        stop.set()
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.artifacts", description=__doc__)
    parser.add_argument("--list", action="store_true", help="print name, version, sha256 and path of each file")
    parser.add_argument("--export", type=Path, metavar="DIR", help="also copy everything into DIR for offline use")
    parser.add_argument("--missing", action="store_true",
                        help="build nothing: print what is not built yet and exit 1 if anything is")
    args = parser.parse_args()
    if args.missing:
        absent = missing() + images.missing()
        if not rootfs.base_rootfs_path().is_dir():
            absent.append(f"rootfs machine base {rootfs.SUITE}")
        for what in absent:
            print(what)
        return 1 if absent else 0
    started = time.monotonic()
    try:
        entries = build_all()
    except (ArtifactError, MachineError) as exc:
        _say(f"error: {exc}")
        return 1
    if args.list:
        for entry in entries:
            for name, digest in entry.files.items():
                print(f"{name:<26} {entry.version:<10} {digest}  {entry.file(name)}")
    if args.export:
        _say(f"bundle written to {export_bundle(entries, args.export)}")
    _say(f"artifacts ready in {_minutes(time.monotonic() - started)}")
    return 0


sys.exit(main())
