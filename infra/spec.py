"""The cluster spec: one typed, validated description of the cluster, built from the stack config.

Everything downstream (machine backends, the Ansible inventory, the workloads) reads this object and
nothing else, so every check runs here, before any resource is created: this module reads and types the
keys and builds the spec; the data types live in spec_model, the network, count, name, VIP and aws checks in
spec_checks, the existing backend's host list in spec_hosts. `from_config` takes a plain dict (the
`pilothouse:*` keys without their namespace) so it can be tested without Pulumi. The machine, pod and service
CIDRs are private (RFC 1918 or 100.64.0.0/10) unless allowPublicCidrs says otherwise.
"""
from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping

from infra.spec_checks import (
    check_aws, check_backup_schedule, check_counts, check_libvirt, check_name_lengths, check_scope, check_vip, libvirt_machines, machines_by_role, network,
)
from infra.spec_hosts import existing_hosts
from infra.spec_model import (
    BACKENDS, DNS_1123_LABEL, EXISTING_KEYS, KEYS, LB_RANGE, MAX_SERVICE_PREFIX, MIN_MACHINE_PREFIX, MIN_SERVICE_PREFIX,
    NODE_POD_PREFIX, POD_NETWORKS, POD_SLOTS, AwsOptions, ClusterSpec, LibvirtOptions, Machine, SpecError, SshAccess,
    known_kubernetes_versions,
)



def from_pulumi_config() -> ClusterSpec:
    """Build the spec from the `pilothouse` namespace of the running Pulumi program's stack config."""
    import pulumi  # only here, so the rest of this module is usable without a Pulumi engine
    from pulumi.runtime import config as runtime_config

    config = pulumi.Config("pilothouse")
    # A list is kept as JSON in the config; get_object parses it (and reports unparsable text as an error).
    raw: dict[str, object] = {key: config.get_object(key) if KEYS[key].type is list else config.get(key)
                              for key in KEYS}
    # Pulumi type-checks the keys Pulumi.yaml declares but passes undeclared ones through silently, so a
    # misspelt key would be ignored; the runtime's config holds every stack key, and _typed reports strays.
    for full in {*runtime_config.get_config_env(), *runtime_config.CONFIG.get()}:
        namespace, _, key = full.partition(":")
        if namespace == "pilothouse" and key not in KEYS:
            raw[key] = runtime_config.get_config(full)
    return from_stack_config(raw)


def from_stack_config(values: Mapping[str, object]) -> ClusterSpec:
    """Build the spec from a stack's config as Pulumi keeps it: the `config` block of Pulumi.<stack>.yaml,
    or the Automation API's `Stack.get_all_config()` (every value a string); keys with or without their
    `pilothouse:` namespace, other namespaces ignored. Strings are read as pulumi.Config reads them
    (get_bool, get_int), so `invoke` can check a stack before starting Pulumi and refuse exactly what the
    program would."""
    cfg: dict[str, object] = {}
    problems: list[str] = []
    for full, value in values.items():
        namespace, _, key = full.rpartition(":")
        if namespace not in ("", "pilothouse") or value is None:
            continue
        if isinstance(value, Mapping) and "secure" in value:
            continue  # encrypted in the stack file; the program checks it once Pulumi has decrypted it
        declared = KEYS.get(key)
        if declared is None or declared.type is str or not isinstance(value, str):
            cfg[key] = value  # unknown keys and wrong types are reported by _typed
            continue
        parsed = _parse(declared.type, value)
        if parsed is None:
            fix = (f"`pulumi config set --path 'pilothouse:{key}[0]' <value>`" if declared.type is list else
                   f"`pulumi config set --type {_pulumi_type(declared.type)} pilothouse:{key} <value>`")
            problems.append(f"pilothouse:{key} must be {_type_name(declared.type)}, not {value!r}; fix it with {fix}")
        else:
            cfg[key] = parsed
    return _build(cfg, problems)


def _parse(t: type, text: str) -> bool | int | list | None:
    """A config string as pulumi.Config.get_bool / get_int / get_object read it; None when they would refuse it."""
    if t is list:
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        return parsed if isinstance(parsed, list) else None
    if t is bool:
        return {"true": True, "True": True, "false": False, "False": False}.get(text)
    try:
        return int(text)
    except ValueError:
        return None


def from_config(cfg: Mapping[str, object]) -> ClusterSpec:
    """Build the spec from a plain dict of config keys (no namespace); raises SpecError listing every problem."""
    return _build(cfg, [])


def load() -> ClusterSpec:
    """The spec of the running Pulumi program, for its entry point. A refused spec ends the program with
    its problems and nothing else: the SDK's runtimes (the language host's exec script and the Automation
    API's inline server) log a pulumi.RunError's message alone, but print any other exception with its
    traceback."""
    import pulumi

    from infra.playbook import running_cluster_problem  # imports Pulumi and Ansible; the rest of this module does not

    try:
        spec = from_pulumi_config()
    except SpecError as exc:
        raise pulumi.RunError(str(exc)) from None
    problem = running_cluster_problem(spec)
    if problem:
        raise pulumi.RunError(problem)
    return spec


def _type_name(t: type) -> str:
    return {bool: "a boolean (true or false)", int: "a whole number", str: "a string", list: "a list of strings"}[t]


def _pulumi_type(t: type) -> str:
    return {bool: "bool", int: "int", str: "string"}[t]


def _typed(cfg: Mapping[str, object], problems: list[str]) -> tuple[dict, set[str]]:
    """Values of the right type (defaults filled in) and the keys whose given value was unusable."""
    values: dict = {}
    bad: set[str] = set()
    for key in cfg:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the known keys are {', '.join(KEYS)}."
            problems.append(
                f"unknown config key pilothouse:{key}; {hint} Rename or remove it (Pulumi.yaml declares every key)"
            )
    for key, declared in KEYS.items():
        value = cfg.get(key, declared.default)
        # bool is an int in Python; a count given as true/false is a mistake, not 1/0.
        ok = isinstance(value, declared.type) and (declared.type is bool or not isinstance(value, bool))
        if ok and declared.type is list:
            ok = all(isinstance(item, str) for item in value)
        if not ok:
            if declared.type is list:
                hint = (f"got {value!r}; write one string per item, e.g. `pulumi config set --path "
                        f"'pilothouse:{key}[0]' '<item>'`")
            elif declared.type is bool and isinstance(value, str) and value.lower() in ("true", "false"):
                hint = f"the string {value!r} is not a boolean; write {value.lower()} without quotes"
            else:
                hint = (f"got {type(value).__name__} {value!r}; set it with "
                        f"`pulumi config set --type {_pulumi_type(declared.type)} pilothouse:{key} <value>`")
            problems.append(f"pilothouse:{key} must be {_type_name(declared.type)}: {hint}")
            bad.add(key)
        values[key] = value
    return values, bad



def _build(cfg: Mapping[str, object], problems: list[str]) -> ClusterSpec:
    v, bad = _typed(cfg, problems)

    def usable(*keys: str) -> bool:
        return not bad.intersection(keys)

    # Names.
    for key in ("clusterName", "masterName", "workerName", "lbName", "etcdName"):
        if usable(key) and not DNS_1123_LABEL.match(v[key]):
            problems.append(
                f"pilothouse:{key} {v[key]!r} is not a DNS-1123 label; use lower-case letters, digits and "
                "'-', starting and ending with a letter or digit"
            )

    backend = v["backend"]
    if usable("backend") and backend not in BACKENDS:
        problems.append(f"pilothouse:backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if usable("podNetwork") and v["podNetwork"] not in POD_NETWORKS:
        problems.append(
            f"pilothouse:podNetwork {v['podNetwork']!r} is unknown; choose one of {', '.join(POD_NETWORKS)}"
        )

    known_versions = known_kubernetes_versions()
    version = v["kubernetesVersion"] or known_versions[0]
    if usable("kubernetesVersion") and version not in known_versions:
        problems.append(
            f"pilothouse:kubernetesVersion {version!r} is not pinned in infra/artifacts/lock.yaml; "
            f"known: {', '.join(known_versions)} (or leave it empty for the pinned one)"
        )

    # Counts.
    counts_ok = True
    for key in ("masters", "workers", "lbs", "etcdNodes"):
        if not usable(key):
            counts_ok = False
        elif v[key] < 0:
            problems.append(f"pilothouse:{key} is {v[key]}; a count must be 0 or more")
            counts_ok = False
    existing = usable("backend") and backend == "existing"

    def given(key: str) -> bool:
        # Pulumi hands the program every declared key with its default filled in: only another value was given.
        return usable(key) and v[key] != KEYS[key].default

    if existing:
        for key in ("masters", "workers", "lbs", "etcdNodes", "masterName", "workerName", "lbName", "etcdName"):
            if given(key):
                problems.append(f"pilothouse:{key} does not apply to backend existing: the roles in pilothouse:hosts "
                                f"say what each host runs; remove it (`pulumi config rm pilothouse:{key}`)")
    elif usable("backend"):
        for key in EXISTING_KEYS:
            if given(key):
                problems.append(f"pilothouse:{key} is for backend existing only; backend {backend} makes its own "
                                f"machines: remove it (`pulumi config rm pilothouse:{key}`)")
    if counts_ok and not existing:
        check_counts(v, usable("ha"), problems)

    # Networks: each valid and routable, then no two overlapping (routing would be ambiguous).
    allow_public = v["allowPublicCidrs"] if usable("allowPublicCidrs") else None
    nets = {}
    for key in ("machineCidr", "podCidr", "serviceCidr"):
        if usable(key):
            net = network(key, v[key], problems)
            if net is not None:
                check_scope(key, net, allow_public, problems)
                nets[key] = net
    names = list(nets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if nets[a].overlaps(nets[b]):
                problems.append(
                    f"pilothouse:{a} {nets[a]} overlaps pilothouse:{b} {nets[b]}; every pair of machine, pod "
                    "and service CIDRs must be disjoint (e.g. 10.77.0.0/24, 10.244.0.0/16, 10.96.0.0/12)"
                )
    # Networks too small for what is laid out in them: (key, smallest prefix, what needs the room).
    for key, smallest, why in (
        ("machineCidr", MIN_MACHINE_PREFIX,
         "machines are laid out by role up to .220: load balancers .10, masters .20, external etcd .30, workers "
         f".40-.{LB_RANGE[0] - 1}, then MetalLB's LoadBalancer addresses .{LB_RANGE[0]}-.{LB_RANGE[1]}"),
        ("serviceCidr", MIN_SERVICE_PREFIX,
         "every Service takes one and the first and 10th are reserved for the API and DNS"),
    ):
        net = nets.get(key)
        if net is not None and net.prefixlen > smallest:
            problems.append(f"pilothouse:{key} {net} has only {net.num_addresses} addresses, but {why}; use a "
                            f"/{smallest} or larger, e.g. {net.supernet(new_prefix=smallest)}")
            if key == "machineCidr":
                del nets[key]  # no layout to check machines against
    machine_net = nets.get("machineCidr")
    service = nets.get("serviceCidr")
    if service is not None and service.prefixlen < MAX_SERVICE_PREFIX:
        problems.append(
            f"pilothouse:serviceCidr {service} is larger than kube-apiserver accepts; use a "
            f"/{MAX_SERVICE_PREFIX} or smaller (e.g. 10.96.0.0/12)"
        )
    pod = nets.get("podCidr")
    # The subnets the layout uses: masters by slot from the first, workers from POD_SLOTS["worker"] (existing
    # hosts take them in line order, and existing_hosts reports a host left without a subnet).
    slots_used = 0
    if counts_ok and not existing:
        slots_used = POD_SLOTS["worker"] + v["workers"] if v["workers"] else v["masters"]
    if pod is not None and pod.prefixlen > NODE_POD_PREFIX:
        problems.append(
            f"pilothouse:podCidr {pod} is smaller than the /{NODE_POD_PREFIX} each node needs; "
            "use e.g. 10.244.0.0/16"
        )
    elif pod is not None and slots_used > 2 ** (NODE_POD_PREFIX - pod.prefixlen):
        needed = NODE_POD_PREFIX - math.ceil(math.log2(slots_used))
        problems.append(
            f"pilothouse:podCidr {pod} holds {2 ** (NODE_POD_PREFIX - pod.prefixlen)} node subnets of "
            f"/{NODE_POD_PREFIX} but the layout needs {slots_used}: "
            + (f"the first {POD_SLOTS['worker']} are kept for masters (so adding one moves no worker's pods) and "
               f"the {v['workers']} workers take the ones after" if v["workers"] else "one per master")
            + f"; use a larger podCidr, a /{needed} or larger (e.g. 10.244.0.0/16)"
        )

    machines: tuple[Machine, ...] = ()
    ssh_access: tuple[tuple[str, SshAccess], ...] = ()
    names_ok = usable("clusterName", "masterName", "workerName", "lbName", "etcdName")
    if existing:
        if machine_net is not None and usable("hosts", "sshUser", "sshKeyPath", "jumpHost", "ha"):
            machines, ssh_access = existing_hosts(v, machine_net, pod, problems)
    elif machine_net is not None and counts_ok and names_ok:
        machines = machines_by_role(v, machine_net, pod, problems)
        if usable("backend"):
            check_name_lengths(v, machines, problems)

    vip = v["vip"] or None
    if existing and usable("vip") and machines:
        check_vip(vip, len([m for m in machines if "lb" in m.roles]), machine_net, machines, problems)
    elif not existing and usable("vip", "lbs") and counts_ok:
        check_vip(vip, v["lbs"], machine_net, machines, problems)

    if usable("etcdBackupSchedule", "etcdBackupRetention"):
        check_backup_schedule(v["etcdBackupSchedule"], v["etcdBackupRetention"], problems)
    if usable("backend") and backend == "aws":
        check_aws(v, usable, problems)
    if usable("backend") and backend == "libvirt":
        check_libvirt(v, usable, problems, machines)

    if problems:
        raise SpecError(problems)
    return ClusterSpec(
        name=v["clusterName"],
        backend=backend,
        ha=v["ha"],
        kubernetes_version=version,
        machine_cidr=nets["machineCidr"],
        pod_cidr=nets["podCidr"],
        service_cidr=nets["serviceCidr"],
        pod_network=v["podNetwork"],
        vip=vip,
        machines=machines,
        aws=AwsOptions(operator_cidr=v["operatorCidr"], instance_type=v["awsInstanceType"]),
        libvirt=LibvirtOptions(uri=v["libvirtUri"], pool=v["libvirtPool"], machines=libvirt_machines(v["libvirtMachines"]),
                               accel=v["libvirtAccel"]),
        ssh_access=ssh_access,
        etcd_backup_schedule=v["etcdBackupSchedule"],
        etcd_backup_retention=v["etcdBackupRetention"],
    )

