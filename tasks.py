"""invoke tasks: the day-to-day commands. `invoke --list` shows them, `invoke --help <task>` explains one."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

from invoke import Collection, Exit, task

from infra import cli, day2_tasks

# Debian packages beyond what the machines and images install for themselves on first use: the C compiler
# and openssl for the artifacts and the PKI, the ssh client for `invoke ssh`.
TOOL_PACKAGES = ("gcc", "openssl", "openssh-client")


@task(help={"quiet": "print nothing when everything is already installed"})
def deps(c, quiet=False):
    """Install the Debian packages the host needs (apt-get, only what is missing)."""
    if shutil.which("go") is None:
        raise Exit("Go is missing: install Go >= 1.24 (Debian bookworm's golang is too old; use the official "
                   "tarball or backports), or set `source: download` in infra/artifacts/lock.yaml.")
    from infra import debian  # imported late: `invoke deps` must work before the venv is complete
    from infra.artifacts import image_recipes
    from infra.machines import host, vm

    wanted = [*TOOL_PACKAGES, *host.HOST_PACKAGES, *vm.HOST_PACKAGES, *image_recipes.HOST_PACKAGES.values()]
    try:
        installed = debian.ensure(wanted, RuntimeError, log=print)
    except RuntimeError as exc:
        raise Exit(str(exc), code=1) from exc
    if not installed and not quiet:
        print("host packages: all present")


@task(help={"list": "print name, version, sha256 and path of every artifact",
            "export": "also copy the whole set into this directory (for an offline site)",
            "missing": "build nothing: list what is not built yet (exit 1 if anything is)",
            "jobs": "builds side by side (default: 2 when memory allows, else 1)",
            "kubernetes": "also build this other pinned Kubernetes release (lock.yaml `kubernetes_releases:`)"})
def artifacts(c, list=False, export=None, missing=False, jobs=0,  # noqa: A002 - `--list` is the flag users expect
              kubernetes=""):
    """Build (or fetch, per infra/artifacts/lock.yaml) every pinned binary and image, and the machines' base
    rootfs, into ~/.cache/pilothouse, two at a time, printing [done/total], what is building and for how long.

    The first run compiles Kubernetes, etcd, CoreDNS, the Pulumi CLI, the kubernetes provider and the add-ons
    from Go modules (about 25 minutes on 2 cores); later runs reuse the cache and take seconds. `up`, `test`
    and `ci-up` run this first (`up` also builds the other Kubernetes release its stack names); `preview` never
    builds."""
    deps(c, quiet=True)
    flags = (" --list" if list else "") + (f" --export {export}" if export else "") + (" --missing" if missing else "")
    flags += (f" --jobs {jobs}" if jobs else "") + (f" --kubernetes {kubernetes}" if kubernetes else "")
    result = c.run(f"{sys.executable} -m infra.artifacts{flags}", warn=True, pty=False)
    if result.failed:
        raise Exit("some artifacts are not built yet: run `invoke artifacts`" if missing else
                   "building the artifacts failed; the message above says what to fix", code=1)


def _require_artifacts(c, kubernetes: str = "") -> None:
    """Stop with the list of what is missing instead of building (for commands that promise to touch nothing)."""
    flags = f" --kubernetes {kubernetes}" if kubernetes else ""
    result = c.run(f"{sys.executable} -m infra.artifacts --missing{flags}", warn=True, hide=True, pty=False)
    if result.failed:
        absent = result.stdout.strip().replace("\n", ", ")
        raise Exit(f"not built yet: {absent}.\nRun `invoke artifacts{flags}` first (it builds them with progress; "
                   "about 25 minutes on 2 cores when nothing is cached).", code=1)


@task(help={"stack": "Pulumi stack (its config is Pulumi.<stack>.yaml)",
            "refresh": "first refresh the machines and the registry (after a reboot or a lost machine)"})
def up(c, stack="dev", refresh=False):
    """Bring up the cluster described by the stack config (machines, registry, playbook): `pulumi up`."""
    import threading
    import time

    from infra import playbook, stack as stack_mod

    spec = cli.checked_spec(stack)
    artifacts(c, kubernetes=spec.kubernetes_version)  # every build happens here, with progress, before Pulumi
    st = cli.select(stack)
    cli.recover(st)
    with cli.pulumi_errors("pulumi refresh"):
        if refresh:
            stack_mod.refresh_machines(st, on_output=cli.stream)
    # Pulumi shows a resource only when it finishes; the playbook's phases are followed from its live log.
    stop = threading.Event()
    follower = threading.Thread(target=playbook.follow_runs, daemon=True,
                                args=(playbook.CLUSTERS_ROOT, "*/logs/runs/*/stdout", time.time(), stop, cli.stream))
    follower.start()
    try:
        with cli.pulumi_errors("pulumi up"):
            result = stack_mod.up(st, on_output=cli.stream)
    finally:
        stop.set()
        follower.join()
    print(f"\nadmin kubeconfig: {result.outputs['admin_kubeconfig'].value}")


@task
def env(c):
    """Print shell exports for running the `pulumi` CLI itself: `eval "$(.venv/bin/invoke env)"; pulumi up`.

    They put the built CLI and language host first on PATH and point it at this checkout's file backend
    (.pulumi/), offline, with the venv's Python running the program and its dynamic providers. The
    artifacts are built first (their progress goes to stderr, so `eval` sees only the exports)."""
    import shlex

    from infra import stack  # imported late: `invoke deps` must work before the venv is complete

    with contextlib.redirect_stdout(sys.stderr):
        artifacts(c)
        try:
            exports = stack.pulumi_env(stack.REPO / ".pulumi")
        except stack.PassphraseError as exc:
            raise Exit(str(exc), code=1) from None
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(value)}")


@task(help={"stack": "Pulumi stack to check"})
def preview(c, stack="dev"):
    """Show what `up` would change, touching nothing (and building nothing: it names what is not built yet)."""
    spec = cli.checked_spec(stack)
    deps(c, quiet=True)
    _require_artifacts(c, spec.kubernetes_version)
    with cli.pulumi_errors("pulumi preview"):
        cli.select(stack).preview(on_output=cli.stream)


@task(help={"stack": "Pulumi stack to destroy", "dry_run": "only say what would be destroyed"})
def down(c, stack="dev", dry_run=False):
    """Destroy every machine and the registry of the stack: `pulumi destroy`."""
    from infra.stack import destroy, destroy_plan

    st = cli.select(stack)
    if dry_run:
        outputs = {k: v.value for k, v in st.outputs().items()}
        backend = st.get_all_config().get("pilothouse:backend")
        resources = st.export_stack().deployment.get("resources", [])
        print(f"`invoke down --stack {stack}` would:")
        from infra.machines import vm

        vms = [name for name, _ in vm.list_vms()]
        for line in destroy_plan(outputs, backend.value if backend else "local", len(resources), vms):
            print(f"  {line}")
        return
    recovered = cli.recover(st)
    with cli.pulumi_errors("pulumi destroy"):
        destroy(st, on_output=cli.stream)
    if recovered.cut_off_machines:
        from infra.machines import local, vm

        for name in recovered.cut_off_machines:  # made by the interrupted run, never recorded in the state
            (vm.destroy if vm.status(name) != "absent" else local.destroy)(name)
            print(f"deleted machine {name}, whose creation had been interrupted")


@task
def machines(c):
    """List the machines on this host, local machines and libvirt VMs: name, kind, state, address."""
    from infra.machines import local, vm

    for m in local.list_machines():
        print(f"{m.name:<28} {'local':<8} {m.status:<8} {m.address}")
    for name, address in vm.list_vms():
        print(f"{name:<28} {'vm':<8} {vm.status(name):<8} {address}")


@task(help={"name": "machine name (see `invoke status`)", "stack": "Pulumi stack that owns it"})
def ssh(c, name, stack="dev"):
    """Open a root shell on one machine, with the stack's SSH key, checking the machine's pinned host key."""
    import shlex

    from infra import known_hosts

    outputs = cli.outputs(stack)
    found = [m for m in outputs.get("machines", []) if m["name"] == name]
    if not found or not found[0].get("ssh_host_key"):
        raise Exit(f"stack {stack} has no machine named {name} with a pinned host key; `invoke status --stack "
                   f"{stack}` lists its machines")
    machine = found[0]
    workdir = Path(outputs["admin_kubeconfig"]).parent
    keyfile = workdir / "ssh_key"
    keyfile.write_text(outputs["ssh_private_key"])
    keyfile.chmod(0o600)
    known = workdir / known_hosts.FILE_NAME
    known_hosts.write(known, [known_hosts.entry(machine["ssh_address"], machine["ssh_host_key"])])
    c.run(shlex.join(["ssh", "-i", str(keyfile), *known_hosts.options(known, pinned=True),
                      f"{machine['ssh_user']}@{machine['ssh_address']}"]), pty=True)


def _report(stack_name: str):
    from infra import status

    outputs = cli.outputs(stack_name)
    report = status.collect(outputs["machines"], outputs["ssh_private_key"], outputs["admin_kubeconfig"])
    return report, outputs["admin_kubeconfig"]


@task(help={"stack": "Pulumi stack whose machines to configure"})
def playbook(c, stack="dev"):
    """Run the Ansible playbook alone against the stack's machines (what `up` does when roles/ changed)."""
    import json

    from infra import playbook as playbook_mod

    outputs = cli.outputs(stack)
    extravars = json.loads(outputs["playbook_vars"])
    try:
        result = playbook_mod.run_playbook(json.loads(outputs["inventory"]), extravars, outputs["ssh_private_key"],
                                           Path(extravars["pilothouse_admin_kubeconfig"]).parent / "logs", quiet=False)
    except playbook_mod.PlaybookError as exc:
        raise Exit(str(exc), code=1)
    print(f"playbook: changed={result.changed} in {result.seconds:.0f}s (log: {result.log})")


@task(help={"stack": "Pulumi stack to inspect"})
def status(c, stack="dev"):
    """Table of machines and their services, etcd members and leader, lease holders, node readiness."""
    from infra import status as status_mod

    report, _ = _report(stack)
    print(status_mod.render(report))
    if not report.healthy:
        raise Exit(code=1)


@task(help={"stack": "Pulumi stack whose admin kubeconfig to print"})
def kubeconfig(c, stack="dev"):
    """Print the path of the admin kubeconfig (server: the load balancer), for `export KUBECONFIG=...`."""
    print(cli.outputs(stack)["admin_kubeconfig"])


@task(name="ci-up", help={"stack": "Pulumi stack to bring up (config: Pulumi.<stack>.yaml, else the defaults)"})
def ci_up(c, stack="dev"):
    """For CI: bring the cluster up, check it, print the kubeconfig path; exit non-zero naming what is unhealthy."""
    from infra import status as status_mod

    up(c, stack=stack)
    report, path = _report(stack)
    print(status_mod.render(report))
    if not report.healthy:
        raise Exit("cluster is not healthy: " + "; ".join(report.problems), code=1)
    print(path)


DRILLS = ("master", "etcd-leader", "lb", "worker")


@task(help={"name": f"which drill: {', '.join(DRILLS)}", "stack": "Pulumi stack to drill on"})
def drill(c, name, stack="dev"):
    """Failure drill on a live local or libvirt cluster: pull the plug on one machine while requests run through
    the load balancer, print what clients saw and how long the cluster took to notice, bring the machine back
    with `up --refresh` and wait until the cluster is healthy. master: the controller-manager lease holder;
    etcd-leader: the etcd leader's machine; lb: the load balancer holding the virtual address (2+ lbs);
    worker: the worker running the most pods."""
    from infra import drill as drill_mod
    from infra.machines import local, vm

    if name not in DRILLS:
        raise Exit(f"unknown drill {name!r}; available: {', '.join(DRILLS)}")
    backend = cli.select(stack).get_all_config().get("pilothouse:backend")
    if backend and backend.value not in ("local", "libvirt"):
        raise Exit(f"drills pull the plug on this host's machines and VMs; stack {stack} uses backend "
                   f"{backend.value}, whose machines this host cannot power off", code=1)

    def pull_plug(machine: str) -> None:
        (vm.pull_plug if vm.status(machine) != "absent" else local.pull_plug)(machine)

    outputs = cli.outputs(stack)
    try:
        result = drill_mod.run(name, outputs["machines"], outputs["ssh_private_key"], outputs["admin_kubeconfig"],
                               kill=pull_plug, bring_back=lambda: up(c, stack=stack, refresh=True))
    except drill_mod.DrillError as exc:
        raise Exit(f"drill {name}: {exc}", code=1) from None
    print(result.render())


@task(help={"k": "only run tests matching this pytest -k expression",
            "fast": "only the unit tests (no artifacts, no machines)"})
def test(c, k=None, fast=False):
    """Run the test suite: unit tests, then the real binaries, machines and cluster tests."""
    deps(c, quiet=True)
    args = ["-m", "not artifacts and not machines"] if fast else []
    if not fast:
        # The whole suite upgrades the shared cluster to the next pinned release (tests/test_upgrade.py): that
        # build joins the others here, two at a time, rather than running alone in the middle of the test.
        from infra.spec_model import known_kubernetes_versions

        releases = known_kubernetes_versions()
        artifacts(c, kubernetes=releases[1] if len(releases) > 1 and not k else "")
    if k:
        args += ["-k", k]
    # The slowest steps at the end, so a run shows where CI's time budget goes.
    code = subprocess.call([sys.executable, "-m", "pytest", "-v", "-rs", "--durations=25", *args])
    if code:
        raise Exit(code=code)


ns = Collection(deps, artifacts, env, up, preview, down, playbook, status, kubeconfig, ci_up, machines, ssh, test,
               drill, day2_tasks.cis, day2_tasks.certs, day2_tasks.workloads, day2_tasks.etcd)
