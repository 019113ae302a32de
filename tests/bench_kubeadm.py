"""pilothouse and kubeadm side by side, on the same machines with the same binaries; prints figures and the ratio.
No asserts.

    .venv/bin/python tests/bench_kubeadm.py [--runs 1] [--settle 30] [--only pilothouse|kubeadm] [--keep] [--out DIR]

Each installer gets six fresh local machines of the default topology (3 masters with stacked etcd, 1 LB, 2
workers) on a bench-only network (cluster `phpeer`, 10.74.0.0/24), the same registry and the same images, and is
timed from machines SSH-ready over the same spans: every node Ready, then CoreDNS answering a query for
kubernetes.default at the cluster DNS address from a worker (through kube-proxy). Then, after `--settle` seconds,
the sum of the machines' RSS. pilothouse's playbook then runs again on the finished cluster: its no-op time and
changed count.

- pilothouse: roles/site.yml as `pulumi up` runs it (the add-ons and samples Pulumi deploys afterwards are not
  part of the spans).
- kubeadm: tests/peer/kubeadm.yml: kubeadm's documented HA setup (kubeadm from the same module and version,
  its images built from the same binaries by tests/peer/images.yaml, the same haproxy in front), with
  pilothouse's containerd and pod network roles for what kubeadm leaves to its user.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_cluster import slowest_tasks  # noqa: E402

from infra import artifacts, known_hosts, playbook, spec as spec_mod  # noqa: E402
from infra.artifacts import images, registry  # noqa: E402
from infra.machines import host, keys, local  # noqa: E402
from infra.machines.provider import machine_record  # noqa: E402
from infra.program import registry_endpoint  # noqa: E402

PEER = Path(__file__).resolve().parent / "peer"
SETTINGS = {"clusterName": "phpeer", "machineCidr": "10.74.0.0/24", "masters": 3, "lbs": 1, "workers": 2}
INSTALLERS = ("pilothouse", "kubeadm")

# One UDP query a second (0.5 s timeout) for kubernetes.default's A record at the cluster DNS address, run on a
# worker with its own python3; prints the wall clock of the first answer with records (machines share the
# host's clock).
DNS_PROBE = r"""
import socket, struct, sys, time
server, name = sys.argv[1], sys.argv[2]
query = struct.pack(">HHHHHH", 0x5048, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        s.sendto(query, (server, 53))
        reply = s.recv(512)
        if reply[:2] == query[:2] and reply[3] & 0x0F == 0 and struct.unpack(">H", reply[6:8])[0] > 0:
            print(time.time())
            break
    except OSError:
        pass
    finally:
        s.close()
    time.sleep(0.5)
"""


class Watch:
    """From the start of the install: when every node is Ready (kubectl from this host once the admin
    kubeconfig exists, every 0.5 s) and when CoreDNS answers (DNS_PROBE on a worker, over one SSH session)."""

    def __init__(self, kubectl: str, kubeconfig: Path, nodes: int, ssh: list[str], worker: str, dns: str):
        self.began = time.time()
        self.ready_at: float | None = None
        self.dns_at: float | None = None
        self._stop = threading.Event()
        self._probe = subprocess.Popen([*ssh, f"root@{worker}", "python3", "-c", shlex.quote(DNS_PROBE), dns,
                                        "kubernetes.default.svc.cluster.local"],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._nodes = threading.Thread(target=self._watch_nodes, args=(kubectl, kubeconfig, nodes), daemon=True)
        self._nodes.start()

    def _watch_nodes(self, kubectl: str, kubeconfig: Path, count: int) -> None:
        template = '{range .items[*]}{range .status.conditions[?(@.type=="Ready")]}{.status}{"\\n"}{end}{end}'
        while not self._stop.is_set():
            if kubeconfig.exists():
                out = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "get", "nodes",
                                      "--request-timeout=2s", "-o", f"jsonpath={template}"],
                                     capture_output=True, text=True).stdout.split()
                if len(out) == count and all(s == "True" for s in out):
                    self.ready_at = time.time()
                    return
            time.sleep(0.5)

    def wait(self, timeout: float) -> None:
        self._nodes.join(timeout)
        try:
            out, _ = self._probe.communicate(timeout=max(1.0, self.began + timeout - time.time()))
            self.dns_at = float(out.strip()) if out.strip() else None
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        self._stop.set()
        if self._probe.poll() is None:
            self._probe.kill()
            self._probe.wait()


def families() -> list[images.ImageFamily]:
    """Every image either installer pulls: lock.yaml's and the peer's control-plane images."""
    return [*images.ensure_images(build=False),
            *images.ensure_images(spec=images.load_spec(PEER / "images.yaml"), log=lambda _m: None)]


def machines_up(spec: spec_mod.ClusterSpec, key: keys.KeyPair) -> list[dict]:
    def create(m) -> dict:
        state = local.create(local.MachineSpec(m.name, m.address, spec.machine_cidr.prefixlen,
                                               local.bridge_name(spec.name), key.public_key), key.private_key)
        return machine_record(m, state.ssh_host_key)

    with ThreadPoolExecutor(max_workers=len(spec.machines)) as pool:
        return list(pool.map(create, spec.machines))


def machines_down(spec: spec_mod.ClusterSpec) -> None:
    registry.stop(listen=registry_endpoint(spec))
    with ThreadPoolExecutor(max_workers=len(spec.machines)) as pool:
        list(pool.map(local.destroy, [m.name for m in spec.machines]))
    host.remove_bridge_if_unused(local.bridge_name(spec.name))


def install(installer: str, spec: spec_mod.ClusterSpec, kubectl: str, kubeadm: str,
            built: list[images.ImageFamily], settle: float) -> dict:
    workdir = playbook.cluster_dir(spec.name)
    shutil.rmtree(workdir, ignore_errors=True)
    key = keys.generate_ed25519(f"pilothouse-{spec.name}")
    began = time.monotonic()
    records = machines_up(spec, key)
    machines_s = time.monotonic() - began
    # On the machines' bridge, which exists once they do (as the program starts it after them).
    handle = registry.start([registry_endpoint(spec)], readonly=True)
    registry.publish(handle.home, built, log=lambda _m: None)
    inventory = playbook.inventory(spec, records)
    extravars = playbook.extravars(spec, f"http://{registry_endpoint(spec)}", registry.pinned_refs(built))
    book, kubeconfig = "site.yml", workdir / "admin.kubeconfig"
    if installer == "kubeadm":
        kubeconfig = workdir / "kubeadm-admin.conf"
        book = str(PEER / "kubeadm.yml")
        extravars.update(
            peer_kubeadm=kubeadm,
            peer_token=f"{secrets.token_hex(3)}.{secrets.token_hex(8)}", peer_certificate_key=secrets.token_hex(32),
            peer_admin_kubeconfig=str(kubeconfig), peer_etcd_tag=_tag(built, "registry.k8s.io/etcd:"),
            peer_coredns_tag=_tag(built, "registry.k8s.io/coredns/coredns:"))
    with tempfile.NamedTemporaryFile("w", prefix="phpeer-key-") as key_file:
        key_file.write(key.private_key)
        key_file.flush()
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        known_hosts.write(workdir / known_hosts.FILE_NAME,
                          [h[playbook.KNOWN_HOST_VAR] for h in inventory["all"]["hosts"].values()])
        ssh = ["ssh", "-i", key_file.name, *known_hosts.options(workdir / known_hosts.FILE_NAME, pinned=True),
               "-o", "BatchMode=yes"]
        worker = next(m.address for m in spec.workers)
        watch = Watch(kubectl, kubeconfig, len(spec.nodes), ssh, worker, spec.cluster_dns)
        try:
            started = time.monotonic()
            result = playbook.run_playbook(inventory, extravars, key.private_key, workdir / "logs", playbook=book)
            playbook_s = time.monotonic() - started
            watch.wait(timeout=300)
        finally:
            watch.close()
    if watch.ready_at is None or watch.dns_at is None:
        raise RuntimeError(f"{installer}: nodes Ready at {watch.ready_at}, CoreDNS answering at {watch.dns_at} "
                           f"(None: not within 300 s); log: {result.log}")
    time.sleep(settle)
    rss = sum(local.memory_stats(m.name)["rss"] for m in spec.machines)
    row = {"installer": installer, "machines_ssh_ready_s": round(machines_s, 1),
           "nodes_ready_s": round(watch.ready_at - watch.began, 1),
           "coredns_answering_s": round(watch.dns_at - watch.began, 1),
           "playbook_s": round(playbook_s, 1), "rss_mib": round(rss / 2 ** 20),
           "slowest_tasks": slowest_tasks(spec.name)[:10]}
    if installer == "pilothouse":
        # The same playbook again on the finished cluster: what a no-op run costs, and that it changes nothing.
        again = playbook.run_playbook(inventory, extravars, key.private_key, workdir / "logs", playbook=book)
        row.update(noop_playbook_s=round(again.seconds, 1), noop_playbook_changed=again.changed)
    return row


def _tag(built: list[images.ImageFamily], prefix: str) -> str:
    """The tag of the one built image whose ref starts with `prefix`."""
    return next(ref[len(prefix):] for family in built for t in family.tags for ref in t.refs
                if ref.startswith(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="bring-ups of each installer (alternating)")
    parser.add_argument("--settle", type=float, default=30, help="seconds to wait before reading memory")
    parser.add_argument("--only", choices=INSTALLERS, help="time one installer alone")
    parser.add_argument("--keep", action="store_true", help="leave the last cluster running (to look at it)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where peer-*.json goes")
    args = parser.parse_args()
    # ansible-playbook sits beside this Python (the project's venv), which need not be on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    # ansible-runner puts its own callback directory first; roles/site.yml finds the timing callback beside it,
    # the peer's playbook through this.
    os.environ["ANSIBLE_CALLBACK_PLUGINS"] = str(playbook.ROLES / "callback_plugins")
    spec = spec_mod.from_config(SETTINGS)
    kubectl = str(artifacts.ensure_all(log=lambda _m: None)[0].file("kubectl"))
    kubeadm = str(artifacts.ensure_tool("kubeadm").file("kubeadm"))
    built = families()
    installers = [args.only] if args.only else list(INSTALLERS)
    rows = []
    print(f"{'installer':<11} {'machines':>9} {'nodes Ready':>12} {'CoreDNS':>8} {'playbook':>9} {'RSS MiB':>8}")
    try:
        for run in range(args.runs):
            for installer in installers:
                last = run == args.runs - 1 and installer == installers[-1]
                try:
                    row = install(installer, spec, kubectl, kubeadm, built, args.settle)
                finally:
                    if not (args.keep and last):
                        machines_down(spec)
                rows.append(row)
                print(f"{installer:<11} {row['machines_ssh_ready_s']:>8.1f}s {row['nodes_ready_s']:>11.1f}s "
                      f"{row['coredns_answering_s']:>7.1f}s {row['playbook_s']:>8.1f}s {row['rss_mib']:>8}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(playbook.cluster_dir(spec.name), ignore_errors=True)
    summary = {}
    for span in ("nodes_ready_s", "coredns_answering_s", "rss_mib"):
        means = {i: sum(r[span] for r in rows if r["installer"] == i) / max(1, sum(r["installer"] == i for r in rows))
                 for i in installers}
        summary[span] = means
        if len(installers) == 2 and means["pilothouse"]:
            print(f"{span:<20} kubeadm / pilothouse = {means['kubeadm'] / means['pilothouse']:.2f}")
    for row in rows:
        if "noop_playbook_s" in row:
            print(f"{row['installer']}: playbook again on the finished cluster {row['noop_playbook_s']:.1f} s, "
                  f"changed={row['noop_playbook_changed']}")
    for row in rows:
        print(f"\n{row['installer']}: slowest tasks")
        for task in row["slowest_tasks"]:
            print(f"  {task['seconds']:6.1f} s  {task['task']}")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"peer-{stamp}.json").write_text(json.dumps({"when": stamp, "rows": rows, "means": summary},
                                                            indent=2))
    print(f"written to {args.out}/peer-{stamp}.json")


if __name__ == "__main__":
    main()
