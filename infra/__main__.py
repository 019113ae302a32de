"""Entry point for plain `pulumi up` (the CLI's Python language host runs this file).

`invoke up` runs the same program through the Automation API (see infra/stack.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # make `infra` importable as a package

from infra import program  # noqa: E402

program.main()
