"""Entry point for `pulumi up` run by the Pulumi CLI's Python language host, where one is installed.

Offline, `invoke up` runs the same program through the Automation API (see infra/stack.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # make `infra` importable as a package

from infra import program  # noqa: E402

program.main()
