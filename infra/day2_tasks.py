"""The day-2 invoke tasks: etcd snapshots (etcd.backup, etcd.list, etcd.restore), the PKI (certs.list,
certs.rotate), the CIS benchmark (cis) and the samples' checks (workloads.verify). tasks.py adds them to its
collection; `invoke --help <task>` explains each."""
from __future__ import annotations

from pathlib import Path

from invoke import Collection, Exit, task

from infra import cli


@task(name="backup", help={"stack": "Pulumi stack whose etcd to back up",
                           "retention": "how many snapshots to keep in the cluster directory (oldest go first)"})
def etcd_backup(c, stack="dev", retention=5):
    """Save a verified etcd snapshot (+ .sha256, + .json) into the cluster directory's backups/."""
    from infra import etcd

    cluster = cli.etcd_access(cli.outputs(stack))
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

    cluster = cli.etcd_access(cli.outputs(stack))
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

    cluster = cli.etcd_access(cli.outputs(stack))
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

    outputs = cli.outputs(stack)
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
    from infra import drill as drill_mod, playbook as playbook_mod, rotation

    outputs = cli.outputs(stack)
    cluster = cli.etcd_access(outputs)
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


@task(help={"stack": "Pulumi stack to check"})
def cis(c, stack="dev"):
    """CIS Kubernetes Benchmark: run kube-bench on the first master, an external etcd member if any and the first
    worker; print PASS/FAIL/WARN/INFO per machine, then every FAIL and WARN with its remediation. kube-bench is
    built from its Go module the first time (about 2 minutes). Exits non-zero on any FAIL."""
    from infra import cis as cis_mod, playbook as playbook_mod
    from infra.artifacts import ArtifactError

    try:
        found = cis_mod.run(cli.outputs(stack))
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

    outputs = cli.select(stack).outputs()
    if "ingress_address" not in outputs:
        raise Exit(f"stack {stack} has no workloads: run `invoke up --stack {stack}` first")
    results = wl.verify(outputs["admin_kubeconfig"].value, ingress_address=outputs["ingress_address"].value,
                        only=set(only.split(",")) if only else None)
    failed = [r.workload for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise Exit(code=1)


etcd = Collection("etcd", etcd_backup, etcd_restore, etcd_list)
certs = Collection("certs", certs_list, certs_rotate)
workloads = Collection("workloads", verify_workloads)
