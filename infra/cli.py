"""What the invoke tasks (tasks.py, infra/day2_tasks.py) share: a stack by name and its outputs, the stack's spec
checked before anything starts, and a failed Pulumi command or day-2 step ending as its message, not a traceback.

The project's modules are imported inside the functions: `invoke deps` must work before the venv is complete.
"""
from __future__ import annotations

import contextlib

from invoke import Exit


def select(name: str):
    """The Pulumi stack `name` of this checkout, running the whole program."""
    from infra import program, stack
    from infra.artifacts import ArtifactError

    try:
        return stack.select_stack(name, program.main, stack.REPO / ".pulumi")
    except (ArtifactError, stack.PassphraseError) as exc:  # the CLI itself is an artifact
        raise Exit(str(exc), code=1) from None


def recover(st):
    """Clear what a killed run left in the stack (its lock, its pending operations) before using it."""
    from infra import recovery, stack

    return recovery.recover(st, stack.REPO / ".pulumi", say=stream)


def checked_spec(stack_name: str):
    """The stack's spec; a bad stack config is refused before building or starting anything, with its problems
    and nothing else (the program checks again, for plain `pulumi up`)."""
    from infra import spec as spec_mod, yamlload
    from infra.playbook import running_cluster_problem
    from infra.stack import REPO

    path = REPO / f"Pulumi.{stack_name}.yaml"
    values = (yamlload.load(path.read_text()) or {}).get("config") or {} if path.exists() else {}
    try:
        spec = spec_mod.from_stack_config(values)
    except spec_mod.SpecError as exc:
        raise Exit(f"{path.name}: {exc}", code=1) from None
    problem = running_cluster_problem(spec)
    if problem:
        raise Exit(f"{path.name}: {problem}", code=1)
    return spec


def stream(line: str) -> None:
    print(line, flush=True)


@contextlib.contextmanager
def pulumi_errors(what: str):
    """A failed Pulumi command has already streamed its output; end with its error lines, not a traceback."""
    from pulumi import automation as auto

    try:
        yield
    except auto.errors.CommandError as exc:
        # Each diagnostic is an `error:` line and the indented lines under it (a spec's problems, a
        # playbook's failed hosts); Pulumi repeats some, so each is kept once.
        blocks: list[list[str]] = []
        open_block = False  # an `error:` line's block lasts until the first unindented or blank line
        for line in str(exc).splitlines():
            if line.lstrip().startswith("error:"):
                blocks.append([line.strip()])
                open_block = True
            elif open_block and line.startswith((" ", "\t")) and line.strip():
                blocks[-1].append("  " + line.strip())
            else:
                open_block = False
        errors = list(dict.fromkeys("\n".join(b) for b in blocks)) or [str(exc)[-2000:]]
        raise Exit(f"{what} failed:\n" + "\n".join(errors), code=1) from None


def outputs(stack_name: str) -> dict:
    """The stack's outputs as plain values; a stack with no cluster yet is refused, saying what to run."""
    found = {k: v.value for k, v in select(stack_name).outputs().items()}
    if "admin_kubeconfig" not in found:
        raise Exit(f"stack {stack_name} has no cluster: run `invoke up --stack {stack_name}` first")
    return found


def etcd_access(stack_outputs: dict):
    """What the etcd and certificate tasks need of the stack (infra.etcd.access), from its outputs."""
    from infra import etcd

    try:
        return etcd.access(stack_outputs)
    except etcd.BackupError as exc:
        raise Exit(str(exc), code=1) from None
