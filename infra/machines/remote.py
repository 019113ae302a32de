"""Hosts the stack did not create (backend existing), reached over SSH: check them before anything changes,
claim them for a cluster, and reset them to what they were when the cluster goes.

Plain functions over the `ssh` client, so the Pulumi side (`existing.py`), the tests and a person debugging
a host all run the same commands. Every remote script runs as root (through `sudo -n` for another user).

- `check(...)` changes nothing: one problem per host that cannot take its roles, naming the host and the fix.
- `claim(...)` writes /var/lib/pilothouse-host on the host: the cluster it belongs to, a copy of every file
  the roles would overwrite, and the state of the units they would change.
- `reset(...)` stops and removes what the roles installed (units, binaries, configs, etcd and kubelet data,
  the pods' containers and images, CNI state, kube-proxy's and CNI's iptables chains, the pod network
  devices), puts the copies back, restores the units' state and forgets the claim. The machine stays.
"""
from __future__ import annotations

import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from infra import known_hosts as known_hosts_mod
from infra.spec_model import SshAccess

STATE_DIR = "/var/lib/pilothouse-host"
CONNECT_TIMEOUT = 10
# Smallest memory (MiB) per role: kubeadm's preflight asks 1700 MB of a control-plane node; a node needs room
# for kubelet, containerd and a few pods; etcd and haproxy alone are small.
MIN_MEMORY_MIB = {"master": 1700, "worker": 1024, "etcd": 512, "lb": 256}
# TCP ports the roles' services listen on (roles/*/defaults and the components' defaults).
PORTS = {"lb": (6443,), "master": (6443, 10257, 10259), "etcd": (2379, 2380, 2381),
         "node": (10248, 10249, 10250, 10256)}
# Debian packages the roles configure but do not install (the local backend's image has them; lock.yaml pins
# the tested versions), and the tools Ansible and the node components call.
PACKAGES = {"all": ("python3", "iproute2", "iptables"),
            "node": ("containerd", "runc", "containernetworking-plugins", "conntrack"),
            "lb": ("haproxy",), "vip": ("keepalived",)}
# What the roles write, as the reset removes it. Files that existed before the claim are copied aside by
# `claim` and put back by `reset`, so a package's own config (haproxy.cfg, ...) comes back as it was.
BINARIES = ("etcd", "etcdctl", "etcdctl-pilothouse", "etcdutl", "etcd-backup-pilothouse", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
            "kubelet", "kube-proxy", "kubectl")
OWN_UNITS = ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd",
             "pilothouse-pod-routes", "pilothouse-pod-masquerade", "pilothouse-cgroup-rw", "etcd-backup")
# The etcd role's optional snapshot timer (etcd_backup_timer), stopped before its service.
OWN_TIMERS = ("etcd-backup.timer",)
PACKAGE_UNITS = ("containerd", "haproxy", "keepalived")
RESET_PATHS = (
    *(f"/usr/local/bin/{b}" for b in BINARIES), "/usr/local/sbin/pilothouse-cgroup-rw",
    "/usr/local/sbin/haproxy-server-pilothouse",
    *(f"/etc/systemd/system/{u}.service" for u in OWN_UNITS), *(f"/etc/systemd/system/{t}" for t in OWN_TIMERS),
    "/etc/kubernetes", "/etc/etcd", "/var/lib/etcd", "/var/lib/etcd.before-restore-*", "/var/lib/etcd-backups",
    "/var/lib/kubelet", "/var/log/pods", "/var/log/containers",
    "/etc/cni/net.d/10-pilothouse.conflist", "/var/lib/cni", "/etc/sysctl.d/90-pilothouse-cni.conf",
    "/etc/containerd/config.toml", "/etc/containerd/certs.d", "/opt/containerd",
    "/etc/haproxy/haproxy.cfg", "/etc/haproxy/pki", "/etc/keepalived/keepalived.conf",
    "/opt/local-path-provisioner",  # the local-path add-on's volumes (infra/addons/manifests/local-path.yaml)
    "/usr/libexec/kubernetes",  # kubelet's volume plugin directory, which it creates
    "/var/lib/haproxy/dev/log",  # the log socket haproxy binds in its chroot
    "/var/lib/pilothouse",  # the sha256 record of the binaries (roles/library/pilothouse_binaries.py)
)
# Directories the roles may create around those paths: removed by the reset when the claim found them absent.
PARENT_DIRS = ("/etc/cni/net.d", "/etc/cni", "/etc/containerd", "/etc/haproxy", "/etc/keepalived")
# Left by another cluster (or an earlier one not reset): taking the host over would mix two clusters' state.
FOREIGN_STATE = ("/etc/kubernetes", "/var/lib/etcd/member", "/var/lib/kubelet", "/etc/etcd")
# The pod network's devices (roles/cni defaults).
POD_DEVICES = ("cni0", "ph-vxlan")
# The system user (and its group) the etcd role runs etcd as, creating it when missing (roles/etcd etcd_user).
ETCD_USER = "etcd"


@dataclass(frozen=True)
class Host:
    """One host as the remote operations need it."""

    name: str
    address: str
    roles: tuple[str, ...]
    access: SshAccess
    known_hosts: str = ""  # the cluster's known_hosts file (keys recorded on first use); "" leaves ssh's own

    @property
    def is_node(self) -> bool:
        return "master" in self.roles or "worker" in self.roles


def _ssh_options(access: SshAccess, known_hosts: Path | str = "") -> list[str]:
    # Without a key file, ssh uses what it would by itself: the user's agent or keys in ~/.ssh.
    key = ["-i", str(access.key_path), "-o", "IdentitiesOnly=yes"] if access.key_path else []
    # These hosts' keys are not known beforehand: the first one seen is recorded, a different one refused later.
    checked = known_hosts_mod.options(known_hosts, pinned=False) if known_hosts else []
    return [*key, "-o", "BatchMode=yes", *checked, "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]


def proxy_command(access: SshAccess, known_hosts: Path | str = "") -> str:
    """The ssh ProxyCommand that reaches a host through its jump host ('' without one): the same key, and the
    host's user unless the jump host names its own; the jump host's key is recorded in `known_hosts` too."""
    if not access.jump_host:
        return ""
    target, _, port = access.jump_host.partition(":")
    if "@" not in target:
        target = f"{access.user}@{target}"
    return shlex.join(["ssh", *_ssh_options(access, known_hosts), *(["-p", port] if port else []), "-W", "%h:%p",
                       target])


def ssh_args(host: Host) -> list[str]:
    """The ssh command line that logs into `host` (append the remote command)."""
    proxy = proxy_command(host.access, host.known_hosts)
    return ["ssh", *_ssh_options(host.access, host.known_hosts), *(["-o", f"ProxyCommand={proxy}"] if proxy else []),
            f"{host.access.user}@{host.address}"]


def run_script(host: Host, script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a POSIX shell script on the host as root; its text goes over stdin."""
    shell = "sh -s" if host.access.user == "root" else "sudo -n sh -s"
    return subprocess.run([*ssh_args(host), shell], input=script, capture_output=True, text=True, timeout=timeout)


def _connection_problem(host: Host, stderr: str) -> str:
    where = f"host {host.name} ({host.access.user}@{host.address}"
    where += f" through {host.access.jump_host})" if host.access.jump_host else ")"
    text = " ".join(stderr.split())
    if "Permission denied" in text:
        return (f"{where}: SSH refused the key {host.access.key_path} (Permission denied); add its public half to "
                f"~{host.access.user}/.ssh/authorized_keys on the host, or point key= / pilothouse:sshKeyPath at "
                "the key that logs in")
    if "Load key" in text or "invalid format" in text or "bad permissions" in text:
        return f"{where}: ssh cannot use the key file {host.access.key_path} ({text}); give a readable private key"
    return (f"{where}: unreachable over SSH ({text or 'no answer'}); check the address, that sshd listens on port 22 "
            "and that this host can reach it" + (" through the jump host" if host.access.jump_host else ""))


PROBE = r"""
echo "uid=$(id -u)"
if [ "$(id -u)" != 0 ]; then if sudo -n true 2>/dev/null; then echo sudo=yes; else echo sudo=no; fi; fi
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-}"; echo "os_like=${ID_LIKE:-}"; echo "os_name=${PRETTY_NAME:-unknown}"
if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi
awk '/^MemTotal:/ {print "mem_kib=" $2}' /proc/meminfo
# A container's memory is its cgroup's limit when that is below what the kernel has.
awk '/^hierarchical_memory_limit / {print "cgroup_limit=" $2}' /sys/fs/cgroup/memory/memory.stat 2>/dev/null
[ -r /sys/fs/cgroup/memory.max ] && echo "cgroup_max=$(cat /sys/fs/cgroup/memory.max)"
echo "listening=$(ss -Hltn 2>/dev/null | awk '{n = split($4, a, ":"); print a[n]}' | sort -un | tr '\n' ' ')"
for p in %(foreign)s; do [ -e "$p" ] && echo "foreign=$p"; done
[ -r %(state)s/cluster ] && echo "claimed=$(cat %(state)s/cluster)"
for p in %(packages)s; do dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "missing=$p"; done
true
"""


PROBE_SHELL = 'if [ "$(id -u)" != 0 ] && sudo -n true 2>/dev/null; then exec sudo -n sh -s; else exec sh -s; fi'


def _parse(output: str) -> dict[str, list[str]]:
    facts: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            facts.setdefault(key, []).append(value)
    return facts


def _memory_mib(facts: dict[str, list[str]]) -> int:
    sizes = [int(facts["mem_kib"][0]) * 1024]
    for key in ("cgroup_limit", "cgroup_max"):
        value = facts.get(key, ["max"])[0]
        if value.isdigit():
            sizes.append(int(value))
    return min(sizes) >> 20


def packages_for(host: Host, with_vip: bool) -> tuple[str, ...]:
    wanted = list(PACKAGES["all"])
    if host.is_node:
        wanted += PACKAGES["node"]
    if "lb" in host.roles:
        wanted += PACKAGES["lb"] + (PACKAGES["vip"] if with_vip else ())
    return tuple(wanted)


def ports_for(host: Host) -> list[int]:
    groups = [*host.roles, *(["node"] if host.is_node else [])]
    return sorted({p for g in groups if g != "worker" for p in PORTS[g]})


def problems_from_facts(host: Host, cluster: str, facts: dict[str, list[str]], with_vip: bool) -> list[str]:
    """What keeps the host from taking its roles, from the probe's output; [] when nothing does."""
    where = f"host {host.name} ({host.address})"
    if facts.get("sudo") == ["no"]:
        return [f"{where}: {host.access.user} cannot run sudo without a password; allow it (e.g. "
                f"'{host.access.user} ALL=(ALL) NOPASSWD:ALL' in /etc/sudoers.d/) or log in as root with user=root"]
    problems = []
    os_id, os_like = facts.get("os_id", [""])[0], facts.get("os_like", [""])[0]
    if os_id not in ("debian", "ubuntu") and "debian" not in os_like.split():
        problems.append(f"{where}: runs {facts.get('os_name', ['an unknown system'])[0]}; the roles need Debian or "
                        "Ubuntu (apt, Debian's package names and paths): use such a host")
    if facts.get("systemd") != ["yes"]:
        problems.append(f"{where}: is not running systemd (no /run/systemd/system); every component runs as a "
                        "systemd unit: boot the host with systemd as init")
    needed = max(MIN_MEMORY_MIB[r] for r in host.roles)
    if "mem_kib" in facts and _memory_mib(facts) < needed:
        problems.append(f"{where}: has {_memory_mib(facts)} MiB of memory; a {'/'.join(host.roles)} host needs at "
                        f"least {needed} MiB: give it more memory or another role")
    missing = [p for p in facts.get("missing", []) if p in packages_for(host, with_vip)]
    if missing:
        problems.append(f"{where}: lacks the Debian packages {', '.join(missing)}; install them first "
                        f"(`apt-get install {' '.join(missing)}`)")
    claimed = facts.get("claimed", [""])[0]
    if claimed and claimed != cluster:
        problems.append(f"{where}: belongs to pilothouse cluster {claimed!r}; destroy that stack (which resets the "
                        "host) or pick another host")
    if claimed != cluster:
        # Ports and state of this cluster's own services are expected on a host it already claimed.
        listening = {int(p) for p in facts.get("listening", [""])[0].split() if p.isdigit()}
        busy = [p for p in ports_for(host) if p in listening]
        if busy:
            problems.append(f"{where}: TCP port(s) {', '.join(map(str, busy))} already in use, and its roles need "
                            f"them: stop what listens there (`ss -ltnp` on the host shows it) or pick another host")
        for path in facts.get("foreign", []):
            problems.append(f"{where}: {path} exists: the host is or was part of another Kubernetes cluster; reset "
                            "it first (remove that state) or pick another host")
    return problems


def check_host(host: Host, cluster: str, with_vip: bool) -> list[str]:
    script = PROBE % {"foreign": " ".join(FOREIGN_STATE), "state": STATE_DIR,
                      "packages": " ".join(packages_for(host, with_vip))}
    try:
        # As root where sudo works (root-only paths are then visible); else as the user, and the probe says
        # that sudo does not work.
        proc = subprocess.run([*ssh_args(host), PROBE_SHELL], input=script, capture_output=True, text=True,
                              timeout=CONNECT_TIMEOUT * 3)
    except subprocess.TimeoutExpired:
        return [_connection_problem(host, f"no answer within {CONNECT_TIMEOUT * 3}s")]
    if proc.returncode == 255 or "uid=" not in proc.stdout:
        return [_connection_problem(host, proc.stderr)]
    return problems_from_facts(host, cluster, _parse(proc.stdout), with_vip)


def check(hosts: list[Host], cluster: str, with_vip: bool) -> list[str]:
    """Every problem of every host, in host order, checked in parallel; nothing on a host is changed."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda h: check_host(h, cluster, with_vip), hosts))
    return [p for problems in found for p in problems]


CLAIM = r"""set -eu
state=%(state)s
if [ -r "$state/cluster" ]; then exit 0; fi   # claimed before: the copies already hold the original files
# Built aside and moved into place last, so a failed claim leaves nothing behind.
new="$state.new"
rm -rf "$new"; trap 'rm -rf "$new"' EXIT
mkdir -p "$new/original"
for p in %(paths)s; do
  if [ -e "$p" ] || [ -L "$p" ]; then mkdir -p "$new/original$(dirname "$p")"; cp -a "$p" "$new/original$p"; fi
done
for u in %(units)s; do
  enabled=$(systemctl is-enabled "$u" 2>/dev/null) || true
  active=$(systemctl is-active "$u" 2>/dev/null) || true
  echo "$u ${enabled:-none} ${active:-none}"
done > "$new/units"
for d in %(dirs)s; do [ -e "$d" ] || echo "$d"; done > "$new/new-dirs"
# No such user or group yet: the etcd role will make them, and the reset removes them.
getent passwd %(etcd_user)s >/dev/null || touch "$new/etcd-user-new"
getent group %(etcd_user)s >/dev/null || touch "$new/etcd-group-new"
# containerd never used here: the reset may empty its directory instead of picking the cluster's data out.
if [ -z "$(ls -A /var/lib/containerd 2>/dev/null)" ]; then touch "$new/containerd-fresh"; fi
echo %(cluster)s > "$new/cluster"
mv "$new" "$state"
"""


def claim(host: Host, cluster: str) -> None:
    """Record the host's state before the roles touch it (idempotent)."""
    script = CLAIM % {"state": STATE_DIR, "paths": " ".join(RESET_PATHS), "dirs": " ".join(PARENT_DIRS),
                      "etcd_user": ETCD_USER,
                      "units": " ".join((*OWN_TIMERS, *OWN_UNITS, *PACKAGE_UNITS)), "cluster": shlex.quote(cluster)}
    proc = run_script(host, script, timeout=120)
    if proc.returncode != 0:
        raise RemoteError(f"host {host.name} ({host.address}): claiming it failed ({proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip()[-1000:]}")


RESET = r"""set -u
state=%(state)s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
systemctl stop kubelet 2>/dev/null
# The pods' containers and images, through containerd while it still runs with the cluster's config.
if command -v ctr >/dev/null && [ -e /etc/containerd/config.toml ]; then
  systemctl start containerd 2>/dev/null
  for id in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks kill -s SIGKILL "$id" 2>/dev/null; done
  sleep 1
  for id in $(ctr -n k8s.io containers ls -q 2>/dev/null); do
    ctr -n k8s.io tasks rm -f "$id" >/dev/null 2>&1; ctr -n k8s.io containers rm "$id" >/dev/null 2>&1
  done
  ctr -n k8s.io images ls -q 2>/dev/null | xargs -r ctr -n k8s.io images rm >/dev/null 2>&1
  ctr namespaces rm k8s.io >/dev/null 2>&1
fi
[ -x /usr/local/bin/kube-proxy ] && /usr/local/bin/kube-proxy --cleanup >/dev/null 2>&1
for u in %(units)s; do systemctl disable --now "$u" >/dev/null 2>&1; done
# Whatever a stopped unit left: pod volume mounts, network namespaces, shims of unit-less containers.
awk '$2 ~ "^(/var/lib/kubelet/|/run/netns/|/run/containerd/)" {print $2}' /proc/self/mounts | sort -r |
  while read -r m; do umount -l "$m"; done
rm -rf /run/netns/cni-* /run/containerd
for d in %(devices)s; do ip link delete "$d" 2>/dev/null; done
# kube-proxy's, kubelet's and the CNI plugins' iptables chains, and the pod masquerade rule.
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null || continue
  for t in filter nat mangle; do
    "$ipt-save" -t "$t" 2>/dev/null | grep -E '^-A [A-Z]+ (.* )?(-j (KUBE|CNI)-|--comment "?pilothouse-)' |
      sed 's/^-A /-D /' | while read -r rule; do eval "$ipt -t $t $rule" 2>/dev/null; done
    chains=$("$ipt-save" -t "$t" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\) .*/\1/p')
    for c in $chains; do "$ipt" -t "$t" -F "$c" 2>/dev/null; done
    for c in $chains; do "$ipt" -t "$t" -X "$c" 2>/dev/null; done
  done
done
rm -rf %(paths)s
# The etcd user and group, only when the claim found none (the roles made them); its processes are stopped.
if [ -e "$state/etcd-user-new" ]; then userdel %(etcd_user)s 2>/dev/null; fi
if [ -e "$state/etcd-group-new" ]; then groupdel %(etcd_user)s 2>/dev/null; fi
if [ -e "$state/containerd-fresh" ]; then find /var/lib/containerd -mindepth 1 -delete 2>/dev/null; fi
if [ -r "$state/new-dirs" ]; then while read -r d; do rmdir "$d" 2>/dev/null; done < "$state/new-dirs"; fi
if [ -d "$state/original" ]; then cp -a "$state/original/." /; fi
systemctl daemon-reload
if [ -r "$state/units" ]; then
  while read -r u enabled active; do
    case "$enabled" in enabled) systemctl enable "$u" >/dev/null 2>&1;; esac
    case "$active" in active) systemctl start "$u" >/dev/null 2>&1;; esac
  done < "$state/units"
fi
rm -rf "$state"
echo reset-done
"""


class RemoteError(RuntimeError):
    """A remote step failed; the message names the host."""


def reset(host: Host) -> None:
    """Undo what the roles did on the host (idempotent: a reset host resets to itself)."""
    script = RESET % {"state": STATE_DIR, "paths": " ".join(RESET_PATHS), "devices": " ".join(POD_DEVICES),
                      "etcd_user": ETCD_USER,
                      "units": " ".join((*OWN_TIMERS, *OWN_UNITS, *PACKAGE_UNITS))}
    proc = run_script(host, script, timeout=300)
    if proc.returncode != 0 or "reset-done" not in proc.stdout:
        raise RemoteError(f"host {host.name} ({host.address}): the reset failed ({proc.returncode}): "
                          f"{proc.stderr.strip()[-1000:]}; it can be run again with `pulumi destroy`")
