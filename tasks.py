"""invoke tasks: the day-to-day commands. `invoke --list` shows them, `invoke --help <task>` explains one."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

from invoke import Collection, Exit, task

# Debian packages beyond what the machines and images install for themselves on first use: the C compiler
# and openssl for the artifacts and the PKI, the ssh client for `invoke ssh`.
TOOL_PACKAGES = ("gcc", "openssl", "openssh-client")


@task(help={"quiet": "print nothing when everything is already installed"})
def deps(c, quiet=False):
    """Install the Debian packages the host needs (apt-get, only what is missing)."""
    if shutil.which("go") is None:
        raise Exit("Go is missing: install Go >= 1.24 (Debian bookworm's golang is too old; use the official "
                   "tarball or backports), or set `source: download` in infra/artifacts/lock.yaml.")
    from infra import debian  # imported late, like _stack
    from infra.artifacts import images
    from infra.machines import host, vm

    wanted = [*TOOL_PACKAGES, *host.HOST_PACKAGES, *vm.HOST_PACKAGES, *images.HOST_PACKAGES.values()]
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


def _stack(name: str):
    from infra import program, stack  # imported late: `invoke deps` must work before the venv is complete
    from infra.artifacts import ArtifactError

    try:
        return stack.select_stack(name, program.main, stack.REPO / ".pulumi")
    except (ArtifactError, stack.PassphraseError) as exc:  # the CLI itself is an artifact
        raise Exit(str(exc), code=1) from None


def _recover(st):
    """Clear what a killed run left in the stack (its lock, its pending operations) before using it."""
    from infra import recovery, stack

    return recovery.recover(st, stack.REPO / ".pulumi", say=_stream)


def _check_spec(stack_name: str):
    """The stack's spec; a bad stack config is refused before building or starting anything, with its problems
    and nothing else (the program checks again, for plain `pulumi up`)."""
    import yaml

    from infra import spec as spec_mod
    from infra.stack import REPO

    path = REPO / f"Pulumi.{stack_name}.yaml"
    values = (yaml.safe_load(path.read_text()) or {}).get("config") or {} if path.exists() else {}
    try:
        spec = spec_mod.from_stack_config(values)
    except spec_mod.SpecError as exc:
        raise Exit(f"{path.name}: {exc}", code=1) from None
    from infra.playbook import running_cluster_problem

    problem = running_cluster_problem(spec)
    if problem:
        raise Exit(f"{path.name}: {problem}", code=1)
    return spec


def _stream(line: str) -> None:
    print(line, flush=True)


@contextlib.contextmanager
def _pulumi_errors(what: str):
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


@task(help={"stack": "Pulumi stack (its config is Pulumi.<stack>.yaml)",
            "refresh": "first refresh the machines and the registry (after a reboot or a lost machine)"})
def up(c, stack="dev", refresh=False):
    """Bring up the cluster described by the stack config (machines, registry, playbook): `pulumi up`."""
    import threading
    import time

    from infra import playbook

    spec = _check_spec(stack)
    artifacts(c, kubernetes=spec.kubernetes_version)  # every build happens here, with progress, before Pulumi
    st = _stack(stack)
    _recover(st)
    with _pulumi_errors("pulumi refresh"):
        if refresh:
            from infra import stack as stack_mod

            stack_mod.refresh_machines(st, on_output=_stream)
    # Pulumi shows a resource only when it finishes; the playbook's phases are followed from its live log.
    stop = threading.Event()
    follower = threading.Thread(target=playbook.follow_runs, daemon=True,
                                args=(playbook.CLUSTERS_ROOT, "*/logs/runs/*/stdout", time.time(), stop, _stream))
    follower.start()
    try:
        with _pulumi_errors("pulumi up"):
            result = st.up(on_output=_stream)
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

    from infra import stack  # imported late, like _stack

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
    spec = _check_spec(stack)
    deps(c, quiet=True)
    _require_artifacts(c, spec.kubernetes_version)
    with _pulumi_errors("pulumi preview"):
        _stack(stack).preview(on_output=_stream)


@task(help={"stack": "Pulumi stack to destroy", "dry_run": "only say what would be destroyed"})
def down(c, stack="dev", dry_run=False):
    """Destroy every machine and the registry of the stack: `pulumi destroy`."""
    from infra.stack import destroy, destroy_plan

    st = _stack(stack)
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
    recovered = _recover(st)
    with _pulumi_errors("pulumi destroy"):
        destroy(st, on_output=_stream)
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

    outputs = _plain_outputs(stack)
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

    outputs = _stack(stack_name).outputs()
    if "admin_kubeconfig" not in outputs:
        raise Exit(f"stack {stack_name} has no cluster: run `invoke up --stack {stack_name}` first")
    report = status.collect(outputs["machines"].value, outputs["ssh_private_key"].value,
                            outputs["admin_kubeconfig"].value)
    return report, outputs["admin_kubeconfig"].value


@task(help={"stack": "Pulumi stack whose machines to configure"})
def playbook(c, stack="dev"):
    """Run the Ansible playbook alone against the stack's machines (what `up` does when roles/ changed)."""
    import json

    from infra import playbook as playbook_mod

    outputs = _stack(stack).outputs()
    if "playbook_vars" not in outputs:
        raise Exit(f"stack {stack} has no cluster: run `invoke up --stack {stack}` first")
    extravars = json.loads(outputs["playbook_vars"].value)
    try:
        result = playbook_mod.run_playbook(json.loads(outputs["inventory"].value), extravars,
                                           outputs["ssh_private_key"].value,
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
    outputs = _stack(stack).outputs()
    if "admin_kubeconfig" not in outputs:
        raise Exit(f"stack {stack} has no cluster: run `invoke up --stack {stack}` first")
    print(outputs["admin_kubeconfig"].value)


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


def _plain_outputs(stack_name: str) -> dict:
    outputs = {k: v.value for k, v in _stack(stack_name).outputs().items()}
    if "admin_kubeconfig" not in outputs:
        raise Exit(f"stack {stack_name} has no cluster: run `invoke up --stack {stack_name}` first")
    return outputs


def _etcd_access(stack_name: str):
    from infra import etcd

    try:
        return etcd.access(_plain_outputs(stack_name))
    except etcd.BackupError as exc:
        raise Exit(str(exc), code=1) from None


@task(name="backup", help={"stack": "Pulumi stack whose etcd to back up",
                           "retention": "how many snapshots to keep in the cluster directory (oldest go first)"})
def etcd_backup(c, stack="dev", retention=5):
    """Save a verified etcd snapshot (+ .sha256, + .json) into the cluster directory's backups/."""
    from infra import etcd

    cluster = _etcd_access(stack)
    try:
        done = etcd.backup(cluster, int(retention))
    except etcd.BackupError as exc:
        raise Exit(f"backup failed: {exc}", code=1) from None
    print(f"{done.path}\n  {done.size / 1e6:.1f} MB, revision {done.revision}, {done.keys} keys, from {done.member}, "
          f"verified, in {done.seconds:.1f}s")


@task(name="list", help={"stack": "Pulumi stack whose backups to list"})
def etcd_list(c, stack="dev"):
    """The etcd snapshots kept in the cluster directory, oldest first."""
    import json

    from infra import etcd

    cluster = _etcd_access(stack)
    found = etcd.snapshots(cluster.backups)
    if not found:
        print(f"no backups in {cluster.backups}: `invoke etcd.backup` takes one")
    for path in found:
        meta_file = path.with_name(path.name + ".json")
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB  revision {meta.get('revision', '?')}  "
              f"{meta.get('taken_at', f'(no {meta_file.name}: not restorable)')}")


@task(name="restore", help={"snapshot": "the snapshot file (a path, or a name in the cluster's backups/)",
                            "stack": "Pulumi stack whose etcd to restore",
                            "dry_run": "check the snapshot and say what would happen, touching nothing"})
def etcd_restore(c, snapshot, stack="dev", dry_run=False):
    """Restore every etcd member from a snapshot `invoke etcd.backup` took (the API is down meanwhile)."""
    from infra import etcd, playbook as playbook_mod

    cluster = _etcd_access(stack)
    path = Path(snapshot)
    if not path.exists() and (cluster.backups / snapshot).exists():
        path = cluster.backups / snapshot
    try:
        if dry_run:
            meta = etcd.check_snapshot(path, cluster)
            print(f"{path.name}: checksum and origin ({meta['cluster']}) check out, revision {meta['revision']}.\n"
                  f"would stop every API server, controller-manager and scheduler, stop and restore etcd on "
                  f"{', '.join(n for n, _ in cluster.members)} (old data dirs moved aside), start them together, "
                  "then the control plane")
            return
        seconds = etcd.restore(cluster, path)
    except (etcd.BackupError, playbook_mod.PlaybookError) as exc:
        raise Exit(f"restore failed: {exc}", code=1) from None
    print(f"restored {path.name}; the API answers /readyz through the load balancer ({seconds:.0f}s in all)")


@task(name="list", default=True, help={"stack": "Pulumi stack whose certificates to list"})
def certs_list(c, stack="dev"):
    """Every certificate of the cluster's PKI: file, subject, issuer, expiry, days left (soonest first).
    `invoke certs` runs this."""
    from infra import certs as certs_mod

    outputs = _plain_outputs(stack)
    pki = Path(outputs["admin_kubeconfig"]).parent / "pki"
    found = certs_mod.scan(pki)
    print(f"{pki}:\n{certs_mod.render(found)}")
    for line in certs_mod.warnings(found):
        print(f"WARNING: {line}")


@task(name="rotate", help={"stack": "Pulumi stack whose certificates to rotate",
                           "dry_run": "only say what would be renewed and restarted, in which order"})
def certs_rotate(c, stack="dev", dry_run=False):
    """Renew every leaf certificate with a new key (the CAs stay) and roll the components one machine at a time
    behind the load balancer: etcd members, load balancers, masters (each API server drained first), nodes.
    A request loop runs through the load balancer meanwhile; its figures are printed at the end."""
    from infra import drill as drill_mod, etcd, playbook as playbook_mod, rotation

    outputs = _plain_outputs(stack)
    try:
        cluster = etcd.access(outputs)
    except etcd.BackupError as exc:
        raise Exit(str(exc), code=1) from None
    if dry_run:
        print(f"`invoke certs.rotate --stack {stack}` would:")
        for line in rotation.plan(cluster.pki, outputs["machines"]):
            print(f"  {line}")
        return
    try:
        result = rotation.rotate(cluster, outputs["machines"])
    except (rotation.RotationError, playbook_mod.PlaybookError, drill_mod.DrillError) as exc:
        raise Exit(f"certificate rotation: {exc}", code=1) from None
    print(result.render())


DRILLS = ("master", "etcd-leader", "lb", "worker")


@task(help={"name": f"which drill: {', '.join(DRILLS)}", "stack": "Pulumi stack to drill on"})
def drill(c, name, stack="dev"):
    """Failure drill on a live local or libvirt cluster: pull the plug on one machine while requests run through the load
    balancer, print what clients saw and how long the cluster took to notice, bring the machine back with
    `up --refresh` and wait until the cluster is healthy. master: the controller-manager lease holder;
    etcd-leader: the etcd leader's machine; lb: the load balancer holding the virtual address (2+ lbs);
    worker: the worker running the most pods."""
    from infra import drill as drill_mod
    from infra.machines import local, vm

    if name not in DRILLS:
        raise Exit(f"unknown drill {name!r}; available: {', '.join(DRILLS)}")
    backend = _stack(stack).get_all_config().get("pilothouse:backend")
    if backend and backend.value not in ("local", "libvirt"):
        raise Exit(f"drills pull the plug on this host's machines and VMs; stack {stack} uses backend "
                   f"{backend.value}, whose machines this host cannot power off", code=1)

    def pull_plug(machine: str) -> None:
        (vm.pull_plug if vm.status(machine) != "absent" else local.pull_plug)(machine)

    outputs = _plain_outputs(stack)
    try:
        result = drill_mod.run(name, outputs["machines"], outputs["ssh_private_key"], outputs["admin_kubeconfig"],
                               kill=pull_plug, bring_back=lambda: up(c, stack=stack, refresh=True))
    except drill_mod.DrillError as exc:
        raise Exit(f"drill {name}: {exc}", code=1) from None
    print(result.render())


@task(help={"stack": "Pulumi stack to check"})
def cis(c, stack="dev"):
    """CIS Kubernetes Benchmark: run kube-bench on the first master, an external etcd member if any and the first
    worker; print PASS/FAIL/WARN/INFO per machine, then every FAIL and WARN with its remediation. kube-bench is
    built from its Go module the first time (about 2 minutes). Exits non-zero on any FAIL."""
    from infra import cis as cis_mod, playbook as playbook_mod
    from infra.artifacts import ArtifactError

    try:
        found = cis_mod.run(_plain_outputs(stack))
    except (ArtifactError, cis_mod.CisError, playbook_mod.PlaybookError) as exc:
        raise Exit(f"cis: {exc}", code=1) from None
    print(cis_mod.render(found))
    if any(f.status == "FAIL" for f in found):
        raise Exit(code=1)


@task(name="verify", help={"stack": "Pulumi stack whose workloads to check",
                           "only": "comma-separated sample ids to check (e.g. W13,W57); default: all"})
def verify_workloads(c, stack="dev", only=None):
    """Check every sample workload behaves as the notes say; one PASS/FAIL line each, non-zero exit on a failure."""
    from infra import workloads as wl

    outputs = _stack(stack).outputs()
    if "ingress_address" not in outputs:
        raise Exit(f"stack {stack} has no workloads: run `invoke up --stack {stack}` first")
    results = wl.verify(outputs["admin_kubeconfig"].value, ingress_address=outputs["ingress_address"].value,
                        only=set(only.split(",")) if only else None)
    failed = [r.workload for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise Exit(code=1)


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
               drill, cis, Collection("certs", certs_list, certs_rotate), Collection("workloads", verify_workloads),
               Collection("etcd", etcd_backup, etcd_restore, etcd_list))
