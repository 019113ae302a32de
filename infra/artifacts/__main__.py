"""`python -m infra.artifacts [--list] [--export DIR]`: build or fetch every pinned artifact."""
import argparse
import sys
import time
from pathlib import Path

from . import ArtifactError, ensure_all, export_bundle


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.artifacts", description=__doc__)
    parser.add_argument("--list", action="store_true", help="print name, version, sha256 and path of each file")
    parser.add_argument("--export", type=Path, metavar="DIR", help="also copy everything into DIR for offline use")
    args = parser.parse_args()
    started = time.monotonic()
    try:
        entries = ensure_all(log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.list:
        for entry in entries:
            for name, digest in entry.files.items():
                print(f"{name:<26} {entry.version:<10} {digest}  {entry.file(name)}")
    if args.export:
        print(f"bundle written to {export_bundle(entries, args.export)}", file=sys.stderr)
    print(f"artifacts ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


sys.exit(main())
