"""Drive the real Pulumi CLI offline: a file backend, no update check, no plugin downloads.

`invoke up` runs the program through the Automation API as an *inline* program (the Python process serves
it to the CLI). Plain `pulumi up` runs the same program (infra/__main__.py) through the Python language host;
both keep their state in the same backend, so either sees what the other did. Python dynamic providers run
through the SDK's `pulumi-resource-pulumi-python` script.
"""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Collection, Mapping

import pulumi.log
from pulumi import automation as auto

from infra import artifacts, playbook
from infra.artifacts import store

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE_VARS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
# What the operator set, read before select_stack() puts this backend's choice into os.environ (a second
# backend in the same process, e.g. a test cluster's, must not inherit the first one's file).
OPERATOR_PASSPHRASE = {k: os.environ[k] for k in PASSPHRASE_VARS if k in os.environ}
# The default of earlier versions: a backend holding stacks but no passphrase file was made with it.
OLD_DEFAULT_PASSPHRASE = "pilothouse-local"


class PassphraseError(RuntimeError):
    """No passphrase for a backend that already holds stacks; the message names the fix."""


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) if needed and make it 0700: it holds state or credentials."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def passphrase_env(state_dir: Path) -> dict[str, str]:
    """The variable that gives the CLI the passphrase encrypting the stack's secrets (the machines' SSH key,
    the kubeconfig): the operator's PULUMI_CONFIG_PASSPHRASE(_FILE) if set, else a random passphrase made
    once for this backend and kept in <state_dir>/passphrase (0600, beside the state it unlocks; `.pulumi/`
    is not in git). Losing that file makes the stack's secrets unreadable: `pulumi destroy` then fails too."""
    if OPERATOR_PASSPHRASE:
        return dict(OPERATOR_PASSPHRASE)
    path = private_dir(state_dir) / "passphrase"
    if not path.exists():
        stacks = state_dir / ".pulumi" / "stacks"
        if stacks.is_dir() and any(stacks.rglob("*.json*")):
            raise PassphraseError(
                f"{state_dir} holds stacks but no passphrase file ({path}). If they were made by an earlier "
                f"version, whose default passphrase was {OLD_DEFAULT_PASSPHRASE!r}, keep using it with "
                f"`printf {OLD_DEFAULT_PASSPHRASE} > {path} && chmod 600 {path}` (change it later with "
                "`pulumi stack change-secrets-provider passphrase`), or set PULUMI_CONFIG_PASSPHRASE.")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    path.chmod(0o600)
    return {"PULUMI_CONFIG_PASSPHRASE_FILE": str(path)}


def pulumi_tools() -> Path:
    """One directory holding the CLI with its language host beside it, the layout of upstream's archive.

    The CLI runs its Python language host only from its own directory ("bundled") or, with a warning on
    every command, from PATH; the two are separate artifacts, so they are hard-linked together here.
    """
    entries = [artifacts.lookup_go(name) for name in ("pulumi", "pulumi-language-python")]
    tools = store.cache_root() / "pulumi-tools" / "-".join(e.path.name for e in entries)
    if not tools.is_dir():
        staging = tools.with_name(tools.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for entry in entries:
            for name in entry.files:
                os.link(entry.file(name), staging / name)
        staging.rename(tools)
        for stale in tools.parent.iterdir():  # an older pin's links would keep its files on disk
            if stale != tools and ".tmp" not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
    return tools


def no_automatic_log(home: Path) -> None:
    """Turn off the CLI's automatic log in the Pulumi home `home`. Every command writes a debug log of each
    resource's properties there (logs/, gzipped and encrypted, kept up to 7 days and 500 MB): measured on the
    dev stack, 43% of the engine's CPU in a no-op `up`, and 266 MB in a day of runs. The CLI has no switch for
    it and skips it when it cannot make that directory, so an empty file takes its place (a directory an
    earlier run left is removed). `pulumi -v=9 --logtostderr` still logs as before."""
    logs = home / "logs"
    if logs.is_dir():
        shutil.rmtree(logs)
    logs.touch()


def pulumi_env(state_dir: Path) -> dict[str, str]:
    """Environment for an offline CLI: file backend, no update check, no plugin downloads."""
    tools = pulumi_tools()
    private_dir(state_dir)
    home = private_dir(state_dir / "home")
    no_automatic_log(home)
    env = {
        "PATH": os.pathsep.join([str(tools), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": f"file://{state_dir}",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        # The state holds the machines' SSH keys as secrets, encrypted with a passphrase (none is built in).
        **passphrase_env(state_dir),
        # Dynamic providers run in this venv's Python, and unpickle classes from `infra` by module name.
        "PULUMI_PYTHON_CMD": sys.executable,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        # The CLI and its plugins make their temporary files in the state's own private directory rather than
        # in /tmp: the pulumi-kubernetes provider writes the admin kubeconfig it is given to a new file there
        # every time it starts (for Helm, which this program does not use) and never removes it.
        "TMPDIR": str(private_dir(state_dir / "tmp")),
    }
    install_kubernetes_plugin(env)
    return env


def sweep_temporary_files(tmp: Path) -> None:
    """Remove what runs left in `tmp` (see pulumi_env): the pulumi-kubernetes provider's kubeconfig copies, and
    the private data (inventory, SSH key) of playbook runs whose process is gone, as a killed run leaves it."""
    for path in tmp.glob("kubeconfig*"):
        path.unlink(missing_ok=True)
    playbook.remove_dead_runs_data(tmp)


def install_kubernetes_plugin(env: dict[str, str]) -> None:
    """Put the built pulumi-kubernetes provider where the CLI looks, since it may not download it."""
    lock = artifacts.load_lock()
    release = lock["go"]["pulumi-kubernetes"]["release"]
    if (Path(env["PULUMI_HOME"]) / "plugins" / f"resource-kubernetes-v{release}").is_dir():
        return
    provider = artifacts.lookup_go("pulumi-kubernetes", lock).file("pulumi-resource-kubernetes")
    subprocess.run(["pulumi", "plugin", "install", "resource", "kubernetes", release, "--file", str(provider)],
                   env=dict(os.environ, **env), check=True, capture_output=True)


def _no_debug(*args, **kwargs) -> None:
    """pulumi.log.debug for the inline program's runs (select_stack)."""


def select_stack(stack: str, program: Callable[[], None], state_dir: Path,
                 work_dir: Path = REPO, config: dict[str, str] | None = None) -> auto.Stack:
    env = pulumi_env(state_dir)
    # The CLI is found on PATH (the artifact directory comes first), and the dynamic providers it spawns
    # inherit this environment. TMPDIR reaches only the CLI, through the workspace: this process keeps its own.
    os.environ.update({k: v for k, v in env.items() if k != "TMPDIR"})
    tmp = Path(env["TMPDIR"])
    sweep_temporary_files(tmp)  # what a plain `pulumi up` or a killed run left
    atexit.register(sweep_temporary_files, tmp)
    command = auto.PulumiCommand()
    workspace = auto.LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=env, pulumi_command=command,
                                           pulumi_home=env["PULUMI_HOME"])
    # The inline program runs in this process, where the SDK sends each of its debug lines (about four per
    # resource) to the engine as a blocking call on the program's event loop; the CLI then drops them, as these
    # runs never pass --debug. They are not sent from here (a plain `pulumi up --debug` still shows them). No-op
    # `up` of the default cluster, four runs each, alternating: median 5.34 s with them, 4.92 s without.
    pulumi.log.debug = _no_debug
    stack_obj = auto.create_or_select_stack(stack_name=stack, project_name="pilothouse", program=program,
                                            opts=workspace)
    for key, value in (config or {}).items():
        stack_obj.set_config(key, auto.ConfigValue(value=value))
    return stack_obj


def up(st: auto.Stack, **kwargs) -> auto.UpResult:
    """`pulumi up` without decrypted config in the result's summary, which nothing here reads: the Automation API
    follows every update with `pulumi stack history`, and with --show-secrets the CLI first derives the passphrase
    key (0.44 s a call here, 0.21 s without)."""
    return st.up(show_secrets=False, **kwargs)


def destroy(st: auto.Stack, **kwargs) -> auto.DestroyResult:
    """`pulumi destroy`, saving the state once at the end instead of after every step. Each step rewrites the
    whole state file, and a cluster with the samples is some 150 steps (the Kubernetes objects are skipped with
    deletedWith but still recorded): measured 15.6 s with the checkpoints, 5.9 s without. It is safe because every
    delete here is idempotent (machines, registry, cluster directory): a destroy cut short leaves the state as it
    was, and the next one deletes what is left."""
    saved = dict(st.workspace.env_vars)
    st.workspace.env_vars.update(PULUMI_SKIP_CHECKPOINTS="true", PULUMI_EXPERIMENTAL="true")
    try:
        return st.destroy(**kwargs)
    finally:
        st.workspace.env_vars.clear()
        st.workspace.env_vars.update(saved)


# What `pulumi destroy` does to the machines of each backend: the backends that made them delete them; the
# existing backend never deletes a host it did not create, it resets it.
DESTROY_ACTIONS = {"local": "delete machine", "libvirt": "delete VM and its disks", "aws": "terminate instance",
                   "existing": "reset host (the host stays)"}


def destroy_plan(outputs: Mapping[str, object], backend: str, resources: int,
                 vms: Collection[str] = ()) -> list[str]:
    """The lines `invoke down --dry-run` prints: each machine and what destroying the stack does to it, the
    cluster directory removed with it, and how many resources the state holds. `vms`: the machines of a
    libvirt stack that are VMs (the others are local machines)."""
    machines = outputs.get("machines") or []
    if not machines:
        return [f"the stack has no machines; destroying it removes its state ({resources} resources)"]
    def action(name: str) -> str:
        if backend == "libvirt" and name not in vms:
            return DESTROY_ACTIONS["local"]
        return DESTROY_ACTIONS.get(backend, "delete machine")

    lines = [f"{m['name']:<28} {m['address']:<15} {','.join(m['roles']):<11} {action(m['name'])}" for m in machines]
    kubeconfig = outputs.get("admin_kubeconfig")
    if kubeconfig:
        lines.append(f"remove {Path(str(kubeconfig)).parent} (PKI, admin kubeconfig, etcd backups, logs)")
    lines.append(f"{resources} resources in the state in all (machines, playbook, add-ons, workloads)")
    return lines


def refresh_machines(st: auto.Stack, on_output: Callable[[str], None] | None = None) -> int:
    """`pulumi refresh` of what lives outside the cluster (machines, the registry, cloud resources), leaving out
    the Kubernetes objects: after a host reboot no API server answers yet, and pulumi-kubernetes fails a refresh
    it cannot read, while those objects live in etcd and come back with it. Returns how many were refreshed."""
    targets = outside_the_cluster(st.export_stack().deployment.get("resources", []))
    if targets:
        st.refresh(target=targets, on_output=on_output)
    return len(targets)


def outside_the_cluster(resources: list[dict]) -> list[str]:
    """URNs of the state's resources that are not Kubernetes objects (nor providers, nor components)."""
    return [r["urn"] for r in resources
            if r.get("custom") and not r["type"].startswith(("kubernetes:", "pulumi:providers:"))]
