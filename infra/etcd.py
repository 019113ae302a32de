"""etcd snapshots of a running cluster, taken and restored from this host: `invoke etcd.backup` and
`invoke etcd.restore`.

A backup is three files in the cluster directory's `backups/`: the snapshot (`etcd-<cluster>-<UTC time>.db`,
as etcdctl streamed it from a healthy member over TLS with the API servers' etcd client certificate), its
`.sha256` (sha256sum's format) and its `.json` (which cluster and etcd CA it came from, its revision and key
count). A snapshot is kept only once it checks out: etcd's own sha256 trailer matches its content and etcdutl
reads it. The newest `retention` are kept.

A restore refuses a snapshot whose checksum does not match or that another cluster (another etcd CA) took
before it touches anything, then runs roles/etcd_restore.yml (every API server stopped, every member restored
into a fresh data dir under a new cluster token, all started together) and waits for /readyz through the LB.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infra import artifacts, playbook
from infra.kube import ApiNotReady, wait_readyz

DEFAULT_RETENTION = 5
TRAILER = 32  # etcd appends the sha256 of the database to a snapshot it streams
CLIENT_CERT = "apiserver-etcd-client"  # the API servers' etcd client certificate (pki role)
READY_TIMEOUT = 300.0


class BackupError(RuntimeError):
    """A backup or restore that cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class ClusterAccess:
    """What a backup or restore needs from the stack's outputs."""

    name: str
    members: tuple[tuple[str, str], ...]  # (name, address) of each etcd member
    inventory: dict
    extravars: dict
    ssh_private_key: str
    kubeconfig: str

    @property
    def dir(self) -> Path:
        return playbook.cluster_dir(self.name)

    @property
    def pki(self) -> Path:
        return Path(self.extravars["pilothouse_pki_dir"])

    @property
    def backups(self) -> Path:
        return self.dir / "backups"


def access(outputs: dict) -> ClusterAccess:
    """From a stack's outputs (plain values): raises BackupError when the stack has no cluster."""
    if "inventory" not in outputs or "admin_kubeconfig" not in outputs:
        raise BackupError("the stack has no cluster: bring it up first (`invoke up`)")
    inventory = json.loads(outputs["inventory"])
    hosts = inventory["all"]["hosts"]
    members = tuple((n, hosts[n]["ansible_host"]) for n in inventory["all"]["children"]["etcd"]["hosts"])
    return ClusterAccess(inventory["all"]["vars"]["pilothouse_cluster_name"], members, inventory,
                         json.loads(outputs["playbook_vars"]), outputs["ssh_private_key"], outputs["admin_kubeconfig"])


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int
    seconds: float
    revision: int
    keys: int
    member: str


def _tool(name: str) -> str:
    """etcdctl (from the etcd artifact) or etcdutl (an artifact of its own)."""
    return str(artifacts.lookup_go("etcdutl" if name == "etcdutl" else "etcd").file(name))


def _etcdctl(cluster: ClusterAccess, endpoint: str) -> list[str]:
    return [_tool("etcdctl"), f"--endpoints={endpoint}", f"--cacert={cluster.pki / 'etcd-ca.crt'}",
            f"--cert={cluster.pki / (CLIENT_CERT + '.crt')}", f"--key={cluster.pki / (CLIENT_CERT + '.key')}",
            "--dial-timeout=3s"]


def healthy_member(cluster: ClusterAccess) -> tuple[str, str]:
    """(name, client URL) of the first member that answers and sees a leader; BackupError when none does."""
    said = []
    for name, address in cluster.members:
        endpoint = f"https://{address}:2379"
        proc = subprocess.run([*_etcdctl(cluster, endpoint), "--command-timeout=5s", "endpoint", "status",
                               "-w", "json"], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            status = json.loads(proc.stdout)[0]["Status"]
            if status.get("leader"):
                return name, endpoint
            said.append(f"{name}: no leader")
        else:
            said.append(f"{name}: {(proc.stderr.strip().splitlines() or ['no answer'])[-1][:200]}")
    raise BackupError(f"no etcd member of {cluster.name} is healthy, so there is nothing to back up from "
                      f"({'; '.join(said)}). Is the cluster up? `invoke status` shows what is down; "
                      "`invoke up --refresh` starts stopped machines.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trailer_matches(path: Path) -> bool:
    """Whether the sha256 etcd appended to the snapshot matches the database before it."""
    size = path.stat().st_size
    if size <= TRAILER or size % 512 != TRAILER:  # the database is whole pages; the trailer is what is left
        return False
    digest = hashlib.sha256()
    with path.open("rb") as f:
        remaining = size - TRAILER
        while remaining:
            block = f.read(min(1 << 20, remaining))
            digest.update(block)
            remaining -= len(block)
        return digest.digest() == f.read(TRAILER)


def snapshot_status(path: Path) -> dict:
    """etcdutl's reading of the snapshot (hash, revision, totalKey, totalSize); BackupError if it cannot."""
    proc = subprocess.run([_tool("etcdutl"), "snapshot", "status", "-w", "json", str(path)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BackupError(f"{path.name}: etcdutl cannot read it: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout)


def ca_fingerprint(pki: Path) -> str:
    return sha256(pki / "etcd-ca.crt")


def backup(cluster: ClusterAccess, retention: int = DEFAULT_RETENTION, log: Callable[[str], None] = print) -> Backup:
    """Save, verify and keep one snapshot; delete the oldest past `retention`."""
    if retention < 1:
        raise BackupError(f"retention must keep at least 1 snapshot (got {retention})")
    started = time.monotonic()
    member, endpoint = healthy_member(cluster)
    cluster.backups.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"etcd-{cluster.name}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S%fZ}.db"
    final, part = cluster.backups / name, cluster.backups / f".{name}.part"
    log(f"etcd: saving a snapshot from {member} ({endpoint})")
    try:
        proc = subprocess.run([*_etcdctl(cluster, endpoint), "--command-timeout=300s", "snapshot", "save",
                               str(part)], capture_output=True, text=True, timeout=330)
        if proc.returncode != 0:
            raise BackupError(f"etcdctl snapshot save from {member} failed: {proc.stderr.strip()[-400:]}")
        log(f"etcd: checking the snapshot ({part.stat().st_size / 1e6:.1f} MB, "
            f"{time.monotonic() - started:.1f}s)")
        if not trailer_matches(part):
            raise BackupError(f"the snapshot from {member} does not match its own sha256 trailer (cut short?); "
                              "take another one")
        status = snapshot_status(part)
        digest = sha256(part)
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    final.with_name(name + ".sha256").write_text(f"{digest}  {name}\n")
    final.with_name(name + ".json").write_text(json.dumps({
        "cluster": cluster.name, "etcd_ca_sha256": ca_fingerprint(cluster.pki), "member": member,
        "taken_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "revision": status["revision"], "total_keys": status["totalKey"], "sha256": digest,
    }, indent=2) + "\n")
    for old in snapshots(cluster.backups)[:-retention]:
        log(f"etcd: removing {old.name} (keeping the newest {retention})")
        for path in (old, old.with_name(old.name + ".sha256"), old.with_name(old.name + ".json")):
            path.unlink(missing_ok=True)
    return Backup(final, final.stat().st_size, time.monotonic() - started, status["revision"], status["totalKey"],
                  member)


def snapshots(directory: Path) -> list[Path]:
    """The snapshots in `directory`, oldest first (their names carry the UTC time they were taken)."""
    return sorted(directory.glob("etcd-*.db")) if directory.is_dir() else []


def check_snapshot(path: Path, cluster: ClusterAccess) -> dict:
    """The snapshot's recorded metadata, once its checksum and origin are right; BackupError naming the fix
    otherwise. Reads files on this host only."""
    if not path.is_file():
        raise BackupError(f"{path}: no such snapshot; `invoke etcd.list` shows the backups of {cluster.name}")
    sums, meta_file = path.with_name(path.name + ".sha256"), path.with_name(path.name + ".json")
    if not sums.is_file() or not meta_file.is_file():
        raise BackupError(f"{path.name}: {sums.name} or {meta_file.name} is missing beside it; restore only "
                          "snapshots taken by `invoke etcd.backup`, with the files it wrote next to them")
    recorded = sums.read_text().split()[0] if sums.read_text().split() else ""
    actual = sha256(path)
    if actual != recorded:
        raise BackupError(f"{path.name}: its sha256 is {actual}, but {sums.name} records {recorded}: the file "
                          "changed or was cut short since the backup. Nothing was touched; restore another backup "
                          "(`invoke etcd.list`) or copy this one again from where you keep backups.")
    meta = json.loads(meta_file.read_text())
    if meta.get("cluster") != cluster.name or meta.get("etcd_ca_sha256") != ca_fingerprint(cluster.pki):
        raise BackupError(f"{path.name} was taken from cluster {meta.get('cluster')!r} with another etcd CA, not "
                          f"from {cluster.name} ({cluster.pki / 'etcd-ca.crt'}); its data (encrypted Secrets, "
                          "service-account tokens) belongs to that cluster. Nothing was touched; restore a "
                          f"snapshot of {cluster.name} (`invoke etcd.list`).")
    if not trailer_matches(path):
        raise BackupError(f"{path.name} does not match its own sha256 trailer; nothing was touched, restore "
                          "another backup")
    snapshot_status(path)
    return meta


def restore(cluster: ClusterAccess, path: Path, log: Callable[[str], None] = print) -> float:
    """Restore every member from `path` and wait for /readyz through the LB; returns the seconds it took."""
    meta = check_snapshot(path, cluster)
    started = time.monotonic()
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"
    log(f"etcd: restoring {path.name} (revision {meta['revision']}, {meta['total_keys']} keys, taken "
        f"{meta['taken_at']}) on {', '.join(n for n, _ in cluster.members)}; every API server stops meanwhile")
    result = playbook.run_playbook(cluster.inventory, {
        **cluster.extravars, "pilothouse_etcd_restore_snapshot": str(path.resolve()),
        "pilothouse_etcd_restore_token": f"{cluster.name}-etcd-{stamp}", "pilothouse_etcd_restore_stamp": stamp,
    }, cluster.ssh_private_key, cluster.dir / "logs", quiet=False, playbook="etcd_restore.yml")
    log(f"etcd: members restored and healthy ({result.seconds:.0f}s); waiting for /readyz through the load "
        "balancer")
    wait_ready(cluster.kubeconfig)
    return time.monotonic() - started


def wait_ready(kubeconfig: str, timeout: float = READY_TIMEOUT) -> None:
    """Until the API answers /readyz through the load balancer (the admin kubeconfig's server)."""
    try:
        wait_readyz(kubeconfig, timeout)
    except ApiNotReady as e:
        raise BackupError(str(e)) from None
