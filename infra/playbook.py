"""The Ansible playbook as a Pulumi resource, and the only place its inputs are built.

The resource's inputs are the inventory, the variables and a digest of everything under roles/, so
`pulumi up` re-runs the playbook exactly when one of them changed, and a no-op `pulumi up` costs no Ansible
run at all. `inventory` and `extravars` below are the whole contract with the roles (roles/README.md lists
the same variables).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ansible_runner
import pulumi
from pulumi import dynamic

from infra import artifacts, known_hosts, yamlload
from infra.machines import remote
from infra.spec_model import API_PORT, ClusterSpec, Machine, SshAccess

ROLES = Path(__file__).resolve().parent.parent / "roles"
# The binaries the roles copy to the machines; the add-ons and the CLI are not theirs, so a rebuilt add-on
# never re-runs the playbook.
ROLE_ARTIFACTS = ("etcd", "etcdutl")  # and the Kubernetes release the spec names
CLUSTERS_ROOT = Path.home() / ".local" / "share" / "pilothouse"
# A run's private data for ansible-runner (inventory, extra vars, the SSH key), in a temporary directory.
PRIVATE_PREFIX = "pilothouse-ansible-"


def cluster_dir(cluster_name: str) -> Path:
    """Where a cluster's PKI, admin kubeconfig, sample keys and playbook logs live on this host, kept across
    runs and removed with the stack."""
    return CLUSTERS_ROOT / cluster_name


# [name, client URL] of each running etcd member as of the last healthy playbook run (roles/etcd/tasks/wait.yml).
ETCD_MEMBERS_RECORD = "etcd-members.json"


def etcd_members_problem(spec: ClusterSpec) -> str | None:
    """Why the spec's etcd members cannot take over from the running ones, or None. Each machine is known by
    name and address: a spec that keeps none of the running members would bootstrap a second, empty etcd (renamed
    masters, a switch between stacked and separate etcd), and a new machine at a running member's address would
    clash with it while both exist. Both are refused before any machine is made; the playbook checks quorum."""
    record = cluster_dir(spec.name) / ETCD_MEMBERS_RECORD
    try:
        running = {name: url.split("//", 1)[-1].rsplit(":", 1)[0] for name, url in json.loads(record.read_text())}
    except (OSError, ValueError, TypeError):
        return None
    if not running:
        return None
    fix = ("change the members in steps that keep most of them running, e.g. add machines in one run and remove "
           "old ones in the next; masterName, etcdName and etcdNodes 0 <-> N cannot change on a running cluster")
    taken = sorted(f"{m.name} at {m.address} (running member {name})" for m in spec.machines
                   for name, address in running.items() if m.address == address and m.name != name)
    if taken:
        return f"new machines would take the addresses of running etcd members: {', '.join(taken)}; {fix}"
    kept = {m.name: m.address for m in spec.etcd}
    if not any(kept.get(name) == address for name, address in running.items()):
        return (f"none of the running etcd members ({', '.join(sorted(running))}) stays among the new etcd machines "
                f"({', '.join(kept)}), so the cluster would start over with an empty etcd; {fix}")
    return None


# The Kubernetes version the cluster runs, as of its last successful playbook run.
VERSION_RECORD = "kubernetes-version"


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("."))


def kubernetes_version_problem(spec: ClusterSpec) -> str | None:
    """Why the running cluster cannot move to the spec's Kubernetes version, or None: upstream supports neither
    downgrades (objects stored by the newer release may not read back) nor skipping a minor release (the
    version skew policy allows one between API servers, and controllers and kubelets follow them)."""
    try:
        running = (cluster_dir(spec.name) / VERSION_RECORD).read_text().strip()
    except OSError:
        return None
    wanted = spec.kubernetes_version
    if not running or running == wanted:
        return None
    if _release(wanted) < _release(running):
        return (f"pilothouse:kubernetesVersion {wanted} is older than the {running} the cluster runs, and "
                f"Kubernetes cannot be downgraded: set it back to {running} (a cluster on {wanted} has to be made "
                "anew)")
    if _release(wanted)[:2] > (_release(running)[0], _release(running)[1] + 1):
        return (f"pilothouse:kubernetesVersion {wanted} skips a minor release: the cluster runs {running}, and "
                f"upgrades go one minor release at a time; upgrade to a pinned v1.{_release(running)[1] + 1} "
                f"release first, then to {wanted}")
    return None


def running_cluster_problem(spec: ClusterSpec) -> str | None:
    """Why the spec cannot take over the running cluster (its etcd members, its Kubernetes version), or None."""
    return etcd_members_problem(spec) or kubernetes_version_problem(spec)


# The host variable holding a machine's pinned host key as its known_hosts line; `run_playbook` writes these
# lines into the cluster's known_hosts file before Ansible connects. The roles never read it.
KNOWN_HOST_VAR = "pilothouse_ssh_known_host"


def connection_vars(machine: dict, known_hosts_file: Path) -> dict:
    """The host variables that say how Ansible logs into a machine (one record of a backend's `machines`
    output): the host key check against the cluster's known_hosts file (strict for a pinned key, the local
    backend's; first use recorded otherwise), and a user, key file, SSH address or jump host where the backend
    gives one. `ansible_host` stays the node's address whatever SSH connects to, because the roles use it as the
    node IP."""
    found: dict = {}
    if machine["ssh_user"] != "root":
        found.update(ansible_user=machine["ssh_user"], ansible_become=True)
    if machine["ssh_key_file"]:
        found["ansible_ssh_private_key_file"] = machine["ssh_key_file"]
    pinned = machine.get("ssh_host_key", "")
    if pinned:
        found[KNOWN_HOST_VAR] = known_hosts.entry(machine["ssh_address"], pinned)
    args = known_hosts.options(known_hosts_file, pinned=bool(pinned))
    if machine["ssh_address"] != machine["address"]:
        args += ["-o", f"HostName={machine['ssh_address']}"]
    proxy = remote.proxy_command(SshAccess(machine["ssh_user"], machine["ssh_key_file"], machine["jump_host"]),
                                 known_hosts_file)
    if proxy:
        args += ["-o", f"ProxyCommand={proxy}"]
    found["ansible_ssh_common_args"] = shlex.join(args)
    return found


def inventory(spec: ClusterSpec, machines: list[dict] | None = None) -> dict:
    """The Ansible inventory (YAML layout): the hosts, the four groups, and the cluster-wide variables.

    `machines` is the backend's `machines` output (infra/machines/__init__.py), which says how to log into each
    machine and its host key; without it (tests that never connect) every machine is a root login on its
    address with ssh's own host key settings.
    """
    records = {m["name"]: m for m in machines or []}
    known = cluster_dir(spec.name) / known_hosts.FILE_NAME
    hosts = {}
    for m in spec.machines:
        host = {"ansible_host": m.address}
        if m.pod_subnet:
            host["pilothouse_pod_subnet"] = m.pod_subnet
        if m.name in records:
            host.update(connection_vars(records[m.name], known))
        hosts[m.name] = host
    cluster_vars = {
        "pilothouse_cluster_name": spec.name,
        "pilothouse_kubernetes_version": spec.kubernetes_version,
        "pilothouse_pod_cidr": str(spec.pod_cidr),
        "pilothouse_service_cidr": str(spec.service_cidr),
        "pilothouse_cluster_dns": spec.cluster_dns,
        "pilothouse_pod_network": spec.pod_network,
        "pilothouse_api_endpoint": spec.api_address,
        "pilothouse_api_port": API_PORT,
        "pilothouse_api_vip": spec.vip or "",
    }
    if spec.etcd_backup_schedule:  # without them the role's default (off) removes a timer an earlier run made
        cluster_vars.update(etcd_backup_timer=True, etcd_backup_schedule=spec.etcd_backup_schedule,
                            etcd_backup_retention=spec.etcd_backup_retention)

    def group(machines: tuple[Machine, ...]) -> dict:
        return {"hosts": {m.name: {} for m in machines}}

    return {"all": {"hosts": hosts, "vars": cluster_vars, "children": {
        "etcd": group(spec.etcd),
        "kube_control_plane": group(spec.masters),
        # Masters run a kubelet too (tainted), so the API server can reach pod IPs (webhooks).
        "kube_node": group(spec.nodes),
        "lb": group(spec.lbs),
    }}}


# The role variables naming an image the project deploys itself, with the role whose default holds its ref.
PINNED_ROLE_IMAGES = {"containerd_sandbox_image": "containerd", "coredns_image": "coredns"}


def role_default(role: str, var: str) -> str:
    return yamlload.load((ROLES / role / "defaults" / "main.yml").read_text())[var]


def pinned_role_images(pinned: dict[str, str]) -> dict[str, str]:
    """The roles' image variables set to their default refs by digest (containerd takes a digest for the
    sandbox image too); {} when nothing is pinned (images from upstream). A default that is not a built
    image cannot be served by the local registry: that stops here, not on the machines."""
    if not pinned:
        return {}
    refs = {var: role_default(role, var) for var, role in PINNED_ROLE_IMAGES.items()}
    unknown = sorted(f"{var}={ref} (roles/{PINNED_ROLE_IMAGES[var]}/defaults/main.yml)"
                     for var, ref in refs.items() if ref not in pinned)
    if unknown:
        raise artifacts.ArtifactError(f"no image in lock.yaml `images:` has the ref of {', '.join(unknown)}: "
                                      "add the ref to the family that builds it, or change the default")
    return {var: pinned[ref] for var, ref in refs.items()}


def extravars(spec: ClusterSpec, registry_mirror: str, pinned_images: dict[str, str] | None = None) -> dict:
    """The variables that are paths on this host or depend on it: the binaries to copy, the registry the
    machines pull from ("" for the upstream registries) and the images pulled by digest from it, and where
    the PKI and the admin kubeconfig are kept."""
    workdir = cluster_dir(spec.name)
    entries = [artifacts.lookup_kubernetes(spec.kubernetes_version), *(artifacts.lookup_go(n) for n in ROLE_ARTIFACTS)]
    return {
        "pilothouse_binaries": artifacts.binaries(entries),
        "pilothouse_binary_digests": artifacts.binary_digests(entries),
        "pilothouse_registry_mirror": registry_mirror,
        **pinned_role_images(pinned_images or {}),
        "pilothouse_pki_dir": str(workdir / "pki"),
        "pilothouse_admin_kubeconfig": str(workdir / "admin.kubeconfig"),
    }


def ansible_env() -> dict[str, str]:
    """The environment of every playbook run: roles/ansible.cfg, and host key checking on, which ansible-runner
    turns off unless told (it would put `StrictHostKeyChecking=no` before the inventory's options, and the first
    value of an ssh option wins)."""
    return {"ANSIBLE_CONFIG": str(ROLES / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(ROLES),
            "ANSIBLE_HOST_KEY_CHECKING": "True"}


class PlaybookError(RuntimeError):
    """The playbook failed; the message names each failed host, its task and Ansible's message."""


def roles_digest(root: Path = ROLES) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def remove_dead_runs_data(tmp: Path) -> None:
    """Remove the private data directories run_playbook left in `tmp` whose run's process is gone (a killed run
    leaves its inventory and the machines' SSH key there); a live run's stays."""
    for path in tmp.glob(f"{PRIVATE_PREFIX}*"):
        pid = path.name.removeprefix(PRIVATE_PREFIX).split("-")[0]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class RunResult:
    changed: int
    seconds: float
    log: Path


def failures(events) -> list[str]:
    """One line per failed or unreachable host from ansible-runner's events: host, task and Ansible's own
    message, which is what a person needs to fix it (the full log has the rest)."""
    lines = []
    for event in events:
        if event.get("event") not in ("runner_on_failed", "runner_on_unreachable"):
            continue
        data = event.get("event_data", {})
        if data.get("ignore_errors"):
            continue
        res = data.get("res") or {}
        message = res.get("msg") or res.get("stderr") or res.get("message") or "no message"
        if isinstance(message, str) and res.get("stderr") and res.get("msg") and res["stderr"] not in message:
            message = f"{message}: {res['stderr']}"
        if "Host key verification failed" in str(message):
            message = ("its SSH host key is not the one recorded in the cluster's known_hosts file, so nothing was "
                       "sent to it: another machine may answer at its address. If the host was reinstalled, remove "
                       f"its line (`ssh-keygen -R <address> -f <cluster dir>/known_hosts`) and run again. ssh said: {message}")
        what = "unreachable" if event["event"] == "runner_on_unreachable" else f"task '{data.get('task', '?')}'"
        lines.append(f"{data.get('host', '?')}: {what}: {' '.join(str(message).split())[:600]}")
    return lines


def added_workers(old_inventory: dict, new_inventory: dict) -> list[str]:
    """The hosts `new_inventory` adds to `old_inventory` as plain workers, when that is all it changes;
    otherwise [] (anything else needs the whole of site.yml)."""
    old, new = old_inventory["all"], new_inventory["all"]
    added = sorted(set(new["hosts"]) - set(old["hosts"]))
    if not added or old["vars"] != new["vars"] or any(new["hosts"].get(h) != v for h, v in old["hosts"].items()):
        return []
    for group in set(old["children"]) | set(new["children"]):
        before = set(old["children"].get(group, {}).get("hosts", {}))
        after = set(new["children"].get(group, {}).get("hosts", {}))
        if after != before | (set(added) if group == "kube_node" else set()):
            return []
    return added


# Groups whose change is a change of members of the control plane: etcd members joining or leaving, API servers
# behind the LB (their shared certificate lists every master).
MEMBER_GROUPS = ("etcd", "kube_control_plane", "lb")


def members_changed(old_inventory: dict, new_inventory: dict) -> bool:
    """True when the inventories differ in who is an etcd member, master or LB: such a run restarts the API
    servers and LBs (new certificate, new backends), so it takes them one machine at a time."""
    def hosts(inventory, group):
        return set(inventory["all"]["children"].get(group, {}).get("hosts", {}))
    return any(hosts(old_inventory, g) != hosts(new_inventory, g) for g in MEMBER_GROUPS)


def version_changed(old_inventory: dict, new_inventory: dict) -> bool:
    """True when the run moves the cluster to another Kubernetes version (kubernetes_version_problem has made
    sure it is the next patch or minor release)."""
    def version(inventory):
        return inventory["all"]["vars"]["pilothouse_kubernetes_version"]
    return version(old_inventory) != version(new_inventory)


def run_playbook(inventory: dict, extravars: dict, ssh_private_key: str, log_dir: Path,
                 quiet: bool = True, scale_nodes: list[str] | None = None, playbook: str = "site.yml") -> RunResult:
    """Run roles/site.yml (or another playbook of roles/) against the inventory, or roles/scale.yml when only
    `scale_nodes` (new workers) need configuring; raise PlaybookError naming the failed hosts.

    The run happens in a new interpreter: ansible-runner forks through pexpect, which is unsafe in a process
    holding gRPC threads (the provider's server, the Automation API's client in invoke and the tests). Seen
    here: the forked child lost its file descriptors and the run ended with no exit code. A new interpreter
    has no threads to inherit. Its result comes back through a pipe of its own, so `quiet=False` can stream
    Ansible's output."""
    read_end, write_end = os.pipe()
    job = json.dumps({"inventory": inventory, "extravars": extravars, "ssh_private_key": ssh_private_key,
                      "log_dir": str(log_dir.resolve()), "quiet": quiet, "scale_nodes": scale_nodes or [],
                      "playbook": playbook, "result_fd": write_end, "clusters_root": str(CLUSTERS_ROOT)})
    # ansible-runner starts ansible-playbook from PATH: the one installed beside this interpreter.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    started = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        try:
            child = subprocess.Popen([sys.executable, "-m", "infra.playbook"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL if quiet else None, stderr=stderr,
                                     pass_fds=(write_end,), cwd=ROLES.parent, env=env, text=True)
        finally:
            os.close(write_end)
        with os.fdopen(read_end) as results:
            child.stdin.write(job)
            child.stdin.close()
            said = results.read()  # until the child exits (only it holds the write end now)
        child.wait()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace").strip()
    try:
        out = json.loads(said)
    except ValueError:
        raise PlaybookError(f"the playbook runner exited with {child.returncode}: {errors[-2000:]}") from None
    if "error" in out:
        raise PlaybookError(out["error"])
    return RunResult(out["changed"], time.monotonic() - started, Path(out["log"]))


def key_envvars(private: Path, key: str) -> dict[str, str]:
    """Ansible's environment for logging in with the generated key: the key as a file (0600) in the run's
    private directory, and no agent, so that key alone is offered (a user's agent holding several keys could
    use up the machines' authentication attempts). Not ansible-runner's ssh_key: that starts an ssh-agent
    whose socket directory in /tmp outlives a killed run, where this directory is removed by
    remove_dead_runs_data."""
    path = private / "ssh_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key if key.endswith("\n") else key + "\n")   # ssh refuses a key without its last newline
    return {"ANSIBLE_PRIVATE_KEY_FILE": str(path), "SSH_AUTH_SOCK": ""}


def _run_here(inventory: dict, extravars: dict, ssh_private_key: str, log_dir: Path, quiet: bool,
              scale_nodes: list[str], playbook: str) -> RunResult:
    """run_playbook's work, in the new interpreter."""
    # log_dir sits in the cluster's directory, which will hold its PKI and admin kubeconfig: private from the start.
    for private in (log_dir.parent, log_dir):
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        private.chmod(0o700)
    # The pinned host keys go into the file the inventory's ssh options check (machines made anew replace theirs).
    known_hosts.write(cluster_dir(inventory["all"]["vars"]["pilothouse_cluster_name"]) / known_hosts.FILE_NAME,
                      [h[KNOWN_HOST_VAR] for h in inventory["all"]["hosts"].values() if KNOWN_HOST_VAR in h])
    started = time.monotonic()
    if scale_nodes:
        playbook, extravars = "scale.yml", {**extravars, "pilothouse_scale_nodes": scale_nodes}
    # The pid in the name tells remove_dead_runs_data whether a left directory's run is still going.
    with tempfile.TemporaryDirectory(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-") as private:
        envvars = {**ansible_env(), **(key_envvars(Path(private), ssh_private_key) if ssh_private_key else {})}
        result = ansible_runner.run(
            private_data_dir=private, playbook=str(ROLES / playbook), inventory=inventory,
            extravars=extravars, envvars=envvars, quiet=quiet,
            project_dir=str(ROLES), artifact_dir=str(log_dir / "runs"), rotate_artifacts=5,
        )
        stdout = result.stdout.read()
    log = log_dir / "ansible.log"
    log.write_text(stdout)
    stats = result.stats or {}
    if result.rc != 0 or stats.get("failures") or stats.get("dark"):
        lines = failures(result.events) or [f"ansible-playbook exited with {result.rc} before any host failed"]
        raise PlaybookError(f"the playbook ({playbook}) failed:\n" + "\n".join(f"  {line}" for line in lines)
                            + f"\nfull log: {log}")
    cluster_vars = inventory["all"]["vars"]
    (cluster_dir(cluster_vars["pilothouse_cluster_name"]) / VERSION_RECORD).write_text(
        cluster_vars["pilothouse_kubernetes_version"] + "\n")
    return RunResult(sum(stats.get("changed", {}).values()), time.monotonic() - started, log)


FOLLOWED = ("PLAY [", "TASK [", "RUNNING HANDLER [", "fatal:", "failed:")


def follow_runs(root: Path, pattern: str, since: float, stop: threading.Event, echo=print,
                prefixes: tuple[str, ...] = FOLLOWED) -> None:
    """Echo the lines starting with one of `prefixes` (by default PLAY, TASK and failure lines) of every
    playbook run under `root` (its stdout files matching `pattern`) that starts after `since`, as ansible-runner
    writes them, so a long `pulumi up` says which phase Ansible is in (and on which hosts it failed) instead of
    going silent. Meant for a background thread; returns when `stop` is set."""
    seen: dict[Path, int] = {}
    while not stop.wait(1.0):
        for out in root.glob(pattern):
            if out.stat().st_mtime < since:
                continue
            with out.open(errors="replace") as f:
                f.seek(seen.get(out, 0))
                chunk = f.read()
                # Only whole lines; a partial one is read again next time.
                done = chunk.rfind("\n") + 1
                seen[out] = seen.get(out, 0) + len(chunk[:done].encode())
            for line in chunk[:done].splitlines():
                if line.startswith(prefixes):
                    echo(f"  ansible +{time.time() - since:4.0f}s  {line.rstrip(' *')}")


# The inputs whose change re-runs the playbook.
RUN_INPUTS = ("inventory", "extravars", "roles_digest", "ssh_private_key")


class _PlaybookProvider(dynamic.ResourceProvider):
    def _run(self, props: dict, scale_nodes: list[str] | None = None) -> dict:
        result = run_playbook(json.loads(props["inventory"]), json.loads(props["extravars"]),
                              props["ssh_private_key"], Path(props["log_dir"]), scale_nodes=scale_nodes)
        return {**props, "changed": result.changed, "log": str(result.log)}

    def create(self, props):
        return dynamic.CreateResult(id_=props["log_dir"], outs=self._run(props))

    def diff(self, id_, olds, news):
        changed = [k for k in RUN_INPUTS if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, id_, olds, news):
        # New workers and nothing else (the common "add a node"): configure just them and the pod routes.
        same = all(olds.get(k) == news.get(k) for k in RUN_INPUTS if k != "inventory")
        old_inventory, new_inventory = json.loads(olds["inventory"]), json.loads(news["inventory"])
        workers = added_workers(old_inventory, new_inventory) if same else []
        run, rolling = news, {}
        if version_changed(old_inventory, new_inventory):
            # An upgrade: every component restarts on its new binary, one machine at a time, and each node is
            # drained before its kubelet is replaced (roles/kubelet/tasks/drain.yml).
            rolling = {"pilothouse_rolling": True, "pilothouse_rolling_nodes": True}
        elif members_changed(old_inventory, new_inventory):
            # Masters, etcd members or LBs come or go: one machine at a time, so the API keeps answering. The
            # kubelets do not restart for that, so the node play still takes them all at once.
            rolling = {"pilothouse_rolling": True, "pilothouse_rolling_nodes": False}
        if rolling:
            run = {**news, "extravars": json.dumps({**json.loads(news["extravars"]), **rolling})}
        return dynamic.UpdateResult(outs={**self._run(run, workers), "extravars": news["extravars"]})

    def delete(self, id_, props):
        # Nothing to undo on the machines: they are destroyed with the stack. The cluster's directory on this
        # host (PKI, admin kubeconfig, these logs) goes too, so a destroyed stack leaves nothing behind; the
        # Kubernetes objects that needed the kubeconfig are deleted before this resource.
        shutil.rmtree(Path(props["log_dir"]).parent, ignore_errors=True)


class Playbook(dynamic.Resource):
    changed: pulumi.Output[int]
    log: pulumi.Output[str]

    def __init__(self, name: str, inventory: pulumi.Input[str], extravars: pulumi.Input[str],
                 ssh_private_key: pulumi.Input[str], log_dir: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__(_PlaybookProvider(), name, {
            "inventory": inventory, "extravars": extravars, "ssh_private_key": ssh_private_key,
            "log_dir": log_dir, "roles_digest": roles_digest(), "changed": None, "log": None,
        }, opts)



if __name__ == "__main__":
    # One run for run_playbook: the job as JSON on stdin, the result as JSON on the file descriptor it names.
    job = json.load(sys.stdin)
    CLUSTERS_ROOT = Path(job.pop("clusters_root"))  # the caller's, which tests point elsewhere
    result_fd = job.pop("result_fd")
    # Not for Ansible's own children: an ssh ControlPersist master holding it would keep the caller reading.
    os.set_inheritable(result_fd, False)
    with os.fdopen(result_fd, "w") as result_out:
        try:
            done = _run_here(**{**job, "log_dir": Path(job["log_dir"])})
        except PlaybookError as exc:
            json.dump({"error": str(exc)}, result_out)
            sys.exit(1)
        json.dump({"changed": done.changed, "log": str(done.log)}, result_out)
