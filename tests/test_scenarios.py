"""The notes' kubectl scenarios (rows K01-K76 of the workload catalog, section 4), typed against the live shared
cluster in their corrected form, each checked for the result the notes describe.

Every row is either run by a test below (`@rows(...)` names the rows it covers) or listed in NOT_APPLICABLE with
the reason this cluster cannot honour it; test_every_row_is_run_or_listed checks the two cover K01-K76 exactly.
The objects the commands act on are created once, in namespaces of this module's own (tests/scenarios/
objects.yaml and the notes' own `kubectl run/create` commands), and removed at the end; the samples are only
read. Node labels the notes add (K18, K26) are removed again. Ports the notes forward to (8080, 50101, 8001,
8443) are loopback ports picked free on this host instead, so parallel runs do not collide.
"""
from __future__ import annotations

import base64
import importlib
import re
import subprocess
import time
from typing import Callable, Iterator

import pytest
import yaml
from scenario_support import (CATALOG, DATA, NOT_APPLICABLE, ROWS, RUN, Cli, eventually, fill_namespace,
                              free_port, get, live, rows)

from infra.artifacts import images, registry

NS = "scenarios"
NS_CUSTOM = "scenarios-custom-namespace"     # K21
NS_DELETE = "scenarios-delete-all"           # K23, K25
# ---- without a cluster ---------------------------------------------------------------------------------------

def test_every_row_is_run_or_listed_with_a_reason():
    importlib.import_module("test_scenarios_config")   # registers the rows it runs
    run, skipped = set(RUN), set(NOT_APPLICABLE)
    assert not run & skipped, f"both run and listed as not applicable: {sorted(run & skipped)}"
    assert sorted(run | skipped) == ROWS, f"missing {sorted(set(ROWS) - run - skipped)}, " \
                                          f"unknown {sorted((run | skipped) - set(ROWS))}"
    assert all(len(reason) > 40 for reason in NOT_APPLICABLE.values())


def test_the_catalog_lists_exactly_rows_k01_to_k76():
    if not CATALOG.exists():
        pytest.skip(f"{CATALOG} is not beside this checkout")
    section = CATALOG.read_text().split("## 4.", 1)[1].split("\n## 5.", 1)[0]
    assert re.findall(r"^\| (K\d\d) \|", section, re.M) == ROWS


@pytest.fixture(scope="module")
def cli(shared_cluster) -> Iterator[Cli]:
    """NS with the objects of scenarios/objects.yaml and the pods the notes' `kubectl run` makes, all Ready."""
    cli = Cli(shared_cluster, NS)
    for ns in (NS_CUSTOM, NS_DELETE):   # a killed run's
        cli("delete", "namespace", ns, "--ignore-not-found", "--wait=true", ns=None, timeout=300)
    fill_namespace(cli, "objects.yaml")
    # K02, K45 as the notes (corrected) type them.
    cli("run", "nginx", "--image=nginx")
    cli("run", "dnsutils", "--image=tutum/dnsutils", "--command", "--", "sleep", "infinity")
    cli("wait", "--for=condition=Ready", "pod/nginx", "pod/dnsutils", "--timeout=120s", timeout=140)
    yield cli
    for ns in (NS, NS_CUSTOM, NS_DELETE):
        cli("delete", "namespace", ns, "--ignore-not-found", "--wait=false", ns=None)


# ---- first the cluster itself --------------------------------------------------------------------------------

@rows("K01")
def test_cluster_info_names_the_control_plane_and_coredns(cli):
    out = cli("cluster-info", ns=None)
    api = cli.live.spec.api_address
    assert re.search(rf"Kubernetes control plane.* is running at .*https://{re.escape(api)}:6443", out), out
    assert re.search(r"CoreDNS.* is running at .*/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy", out), out
    view = yaml.safe_load(cli("config", "view", ns=None))
    assert view["clusters"][0]["cluster"]["server"] == f"https://{api}:6443"
    assert view["users"][0]["user"]["client-certificate-data"] == "DATA+OMITTED"


@live
def test_kubectl_top_shows_figures_for_every_node_and_pod(cli):
    def top(*args: str) -> list[list[str]]:
        lines = cli("top", *args, ns=None).splitlines()
        return [line.split() for line in lines[1:]]

    names = {n["metadata"]["name"] for n in cli.json("get", "nodes", ns=None)["items"]}

    def nodes() -> None:
        rows = top("nodes")
        assert {row[0] for row in rows} == names, rows
        assert all(re.fullmatch(r"\d+m", row[1]) and re.fullmatch(r"\d+Mi", row[3]) for row in rows), rows

    def pods() -> None:
        rows = top("pods", "-A")
        assert {"kube-system", NS} <= {row[0] for row in rows}, rows
        assert all(re.fullmatch(r"\d+m", row[2]) and re.fullmatch(r"\d+Mi", row[3]) for row in rows), rows

    eventually(nodes, 120, 5)
    eventually(pods, 120, 5)


@rows("K20", "K68", "K69", "K72", "K75")
def test_the_system_namespaces_components_and_leases(cli):
    assert {"default", "kube-node-lease", "kube-public", "kube-system"} <= set(cli("get", "ns", ns=None).split())
    assert "readyz check passed" in cli("get", "--raw=/readyz?verbose", ns=None)
    cs = cli.proc("get", "componentstatuses", ns=None)
    assert cs.returncode == 0 and "deprecated" in cs.stderr and "etcd-0" in cs.stdout, cs.stderr
    columns = cli("get", "po", "-o", "custom-columns=POD:metadata.name,NODE:spec.nodeName", "--sort-by",
                  "spec.nodeName", "-n", "kube-system", ns=None).splitlines()
    assert columns[0].split() == ["POD", "NODE"] and any(line.startswith("coredns-") for line in columns)
    # The control plane runs as systemd units here, not static pods; kube-proxy too, so no DaemonSet.
    deploys = cli("get", "deploy,ds", "-n", "kube-system", ns=None)
    assert "deployment.apps/coredns" in deploys and "deployment.apps/metrics-server" in deploys
    masters = {m.name for m in cli.live.spec.masters}
    leases = cli.json("get", "lease", "kube-controller-manager", "kube-scheduler", ns="kube-system")["items"]
    for lease in leases:
        assert lease["spec"]["holderIdentity"].split("_")[0] in masters, lease["spec"]
    before = leases[0]["spec"]["renewTime"]
    eventually(lambda: _renewed(cli, before), 30)


def _renewed(cli: Cli, before: str) -> None:
    after = cli.json("get", "lease", "kube-controller-manager", ns="kube-system")["spec"]["renewTime"]
    assert after != before, "renewTime did not advance"


@rows("K13")
def test_explain_describes_a_field(cli):
    out = cli("explain", "pod.spec.containers", ns=None)
    assert "FIELD: containers <[]Container>" in out and "DESCRIPTION:" in out


@rows("K70")
def test_etcd_holds_the_pods_under_registry_with_the_v3_api(cli):
    master = cli.live.spec.masters[0].name
    out = cli.live.ssh(master, f"ETCDCTL_API=3 etcdctl-pilothouse get /registry/pods/{NS} --prefix --keys-only").stdout
    assert f"/registry/pods/{NS}/nginx" in out.split(), out


@rows("K74")
def test_every_pod_has_a_pause_sandbox_on_its_node(cli):
    pod = cli.json("get", "pod", "nginx")
    node = pod["spec"]["nodeName"]
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    # crictl (cri-tools) is not in Debian bookworm; containerd's own client lists the same CRI containers, here
    # those of this pod (its sandbox and its container carry the pod's name and namespace as labels).
    labels = f"labels.\"io.kubernetes.pod.name\"==nginx,labels.\"io.kubernetes.pod.namespace\"=={NS}"
    host, out = cli.live.ssh(node, f"hostname; ctr -n k8s.io containers list '{labels}'").stdout.split("\n", 1)
    assert host == node
    listed = dict(line.split()[:2] for line in out.splitlines()[1:])
    # The sandbox image is pinned by the digest of the local pause build. The container's image is named by
    # whichever nginx tag that node pulled first: the local registry serves the notes' nginx tags from one build.
    pause = registry.pinned_refs(images.ensure_images(["pause"], build=False))["registry.k8s.io/pause:3.10.1"]
    assert container in listed and listed[container].startswith("docker.io/library/nginx:"), out
    assert sorted(image for cid, image in listed.items() if cid != container) == [pause], out


# ---- pods ------------------------------------------------------------------------------------------------------

@rows("K02", "K03", "K06")
def test_run_apply_and_a_dry_run_yaml(cli):
    pod = cli.json("get", "pod", "nginx")
    assert pod["metadata"]["labels"] == {"run": "nginx"} and pod["status"]["phase"] == "Running"
    assert re.search(r"^nginx\s+1/1\s+Running", cli("get", "pod", "nginx"), re.M)
    dry = yaml.safe_load(cli("run", "nginx", "--image=nginx", "--dry-run=client", "-o", "yaml"))
    assert dry["kind"] == "Pod" and dry["spec"]["containers"][0]["image"] == "nginx"
    manifest = cli.work / "pod.yaml"
    manifest.write_text(yaml.safe_dump({**dry, "metadata": {"name": "applied", "labels": {"run": "applied"}}}))
    wrong = cli.proc("apply", "--f", str(manifest))
    assert wrong.returncode != 0 and "unknown flag: --f" in wrong.stderr
    assert cli("apply", "-f", str(manifest)).strip() == "pod/applied created"


@rows("K04")
def test_describe_logs_port_forward_edit_exec_and_delete_a_pod(cli):
    assert re.search(r"^Status:\s+Running", cli("describe", "pod", "nginx"), re.M)
    port = free_port()
    with cli.background("port-forward", "nginx", f"{port}:80", ready="Forwarding from"):
        assert "Welcome to nginx!" in get(f"http://127.0.0.1:{port}/")
    assert '"GET / HTTP/1.1" 200' in cli("logs", "nginx")
    cli.edit("pod/nginx", "s/^    run: nginx$/    run: nginx\\n    edited: by-hand/")
    assert cli.json("get", "pod", "nginx")["metadata"]["labels"]["edited"] == "by-hand"
    assert cli("exec", "-i", "nginx", "--", "/bin/sh", input="cat /etc/hostname\n").strip() == "nginx"
    assert cli("delete", "pod", "applied").startswith('pod "applied" deleted')


@rows("K05")
def test_logs_and_exec_pick_a_container_with_c(cli):
    assert cli("logs", "two", "side").strip() == "side-car started"   # the positional form still works
    assert cli("logs", "two", "-c", "side").strip() == "side-car started"
    old = cli.proc("exec", "two", "side", "hostname")
    assert old.returncode != 0
    assert cli("exec", "-i", "two", "-c", "side", "--", "sh", "-c", "ls /bin/busybox").strip() == "/bin/busybox"


@rows("K16", "K22")
def test_labels_are_listed_selected_and_deleted_by(cli):
    shown = cli("get", "po", "--show-labels")
    assert re.search(r"^lines-sample .*creation_method=manual,env=prod", shown, re.M), shown
    assert "unknown flag: --show-label" in cli.proc("get", "po", "-l", "env", "--show-label").stderr
    columns = cli("get", "po", "-L", "creation_method,env").splitlines()
    assert columns[0].split()[-2:] == ["CREATION_METHOD", "ENV"]
    assert re.search(r"^lines-sample .* manual\s+prod$", "\n".join(columns), re.M)

    def names(*selector: str) -> set[str]:
        return set(cli("get", "po", *selector, "-o", "jsonpath={.items[*].metadata.name}").split())

    assert names("-l", "creation_method=manual") == {"lines-sample", "kubia-manual"}
    assert names("-l", "env") == {"lines-sample"}
    assert "lines-sample" not in names("-l", "!env") and "kubia-manual" in names("-l", "!env")
    typo = cli.proc("delete", "po", "-l", "create_method=manual")   # the notes' typo deletes nothing
    assert "No resources found" in typo.stdout + typo.stderr
    out = cli("delete", "po", "-l", "creation_method=manual")
    assert 'pod "lines-sample" deleted' in out and 'pod "kubia-manual" deleted' in out


@rows("K18", "K26")
def test_a_node_label_selects_the_node_and_places_a_daemonset_pod(cli):
    labelled = {n["metadata"]["name"] for n in cli.json("get", "nodes", "-l", "disk=ssd", ns=None)["items"]}
    node = next(w.name for w in cli.live.spec.workers if w.name not in labelled)
    assert "unknown command \"lebel\"" in cli.typo("lebel", "node", node, "disk=ssd").stderr
    try:
        cli("label", "node", node, "test=true", ns=None)
        assert f"node/{node}" in cli("get", "node", "-l", "test=true", "-o", "name", ns=None).split()
        table = cli("get", "nodes", "-L", "test", ns=None)
        assert re.search(rf"^{node} .*\strue$", table, re.M), table
        cli("label", "node", node, "disk=ssd", ns=None)

        def placed() -> None:
            on = {p["spec"]["nodeName"] for p in cli.json("get", "po", "-l", "app=ssd-monitor")["items"]
                  if p["status"].get("phase") == "Running"}
            assert on == labelled | {node}, on
        eventually(placed, 90)
    finally:
        cli("label", "node", node, "disk-", "test-", ns=None)
    eventually(lambda: _no_pod_on(cli, node), 90)


def _no_pod_on(cli: Cli, node: str) -> None:
    on = [p["spec"]["nodeName"] for p in cli.json("get", "po", "-l", "app=ssd-monitor")["items"]]
    assert node not in on, on


@rows("K44")
def test_a_readiness_probe_holds_a_pod_back_until_it_passes(cli):
    pod = cli.pod("app=kubia-readiness")
    assert cli("get", "po", pod, "-o", "jsonpath={.status.containerStatuses[0].ready}") == "false"
    cli("exec", pod, "--", "touch", "/var/ready")
    cli("wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=30s")


@rows("K71", "K73")
def test_watching_pods_and_events_streams_the_changes(cli):
    with cli.background("get", "pods", "--watch", "--output-watch-events") as pods, \
            cli.background("get", "events", "--watch") as events:
        time.sleep(2)
        cli("run", "watched", "--image=busybox", "--restart=Never", "--", "true")
        cli("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/watched", "--timeout=60s")
        cli("delete", "pod", "watched")
        time.sleep(2)
    watched = [line.split()[:2] for line in pods.stdout.read().splitlines() if "watched" in line]
    assert {"ADDED", "MODIFIED", "DELETED"} <= {event for event, _ in watched}, watched
    assert re.search(r"(Scheduled|Pulled|Created|Started)\s+pod/watched", events.stdout.read())


# ---- controllers and jobs -------------------------------------------------------------------------------------

@rows("K07", "K76")
def test_a_replicaset_scales_from_its_file_and_by_name(cli):
    rs = next(d for d in yaml.safe_load_all((DATA / "objects.yaml").read_text()) if d and d["kind"] == "ReplicaSet")
    manifest = cli.work / "replica-set.yaml"
    manifest.write_text(yaml.safe_dump(rs))
    assert "myapp-replica" in cli("get", "rs")
    assert re.search(r"^Replicas:\s+2 current / 2 desired", cli("describe", "rs", "myapp-replica"), re.M)
    cli("scale", "--replicas=3", "-f", str(manifest))
    cli("scale", "--replicas=6", "replicaset", "myapp-replica")
    eventually(lambda: _ready_replicas(cli, "myapp-replica", 6), 120)
    assert cli("delete", "rs", "myapp-replica").startswith('replicaset.apps "myapp-replica" deleted')


def _ready_replicas(cli: Cli, rs: str, wanted: int) -> None:
    assert cli("get", "rs", rs, "-o", "jsonpath={.status.readyReplicas}") == str(wanted)


@rows("K23", "K25")
def test_deleting_pods_of_a_replicaset_brings_them_back_and_delete_all_removes_everything(cli):
    cli("create", "namespace", NS_DELETE, ns=None)
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "kubia"},
          "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "kubia"}},
                   "template": {"metadata": {"labels": {"app": "kubia"}},
                                "spec": {"containers": [{"name": "c", "image": "busybox",
                                                         "command": ["sleep", "3600"]}]}}}}
    other = {**rs, "metadata": {"name": "other"},
             "spec": {**rs["spec"], "selector": {"matchLabels": {"app": "other"}},
                      "template": {**rs["spec"]["template"], "metadata": {"labels": {"app": "other"}}}}}
    cli("apply", "-f", "-", ns=NS_DELETE, input=yaml.safe_dump_all([rs, other]))
    cli("wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s", ns=NS_DELETE)
    assert cli("delete", "rs", "kubia", ns=NS_DELETE).startswith('replicaset.apps "kubia" deleted')
    eventually(lambda: _pods(cli, NS_DELETE, "app=kubia", 0), 60)
    before = _pods(cli, NS_DELETE, "app=other", 2)
    assert "unknown shorthand flag: 'a' in -all" in cli.proc("delete", "all", "-all", ns=NS_DELETE).stderr
    cli("delete", "po", "--all", "--wait=false", ns=NS_DELETE)
    eventually(lambda: _new_pods(cli, before), 60)
    out = cli("delete", "all", "--all", ns=NS_DELETE)
    assert 'replicaset.apps "other" deleted' in out
    eventually(lambda: _pods(cli, NS_DELETE, "app=other", 0), 60)


def _pods(cli: Cli, ns: str, selector: str, count: int) -> set[str]:
    live = {p["metadata"]["name"] for p in cli.json("get", "po", "-l", selector, ns=ns)["items"]
            if not p["metadata"].get("deletionTimestamp")}
    assert len(live) == count, live
    return live


def _new_pods(cli: Cli, before: set[str]) -> None:
    now = _pods(cli, NS_DELETE, "app=other", 2)
    assert not now & before, f"still the old pods {now & before}"


@rows("K12", "K14", "K19", "K24")
def test_a_deployment_as_yaml_json_logs_annotations_and_revisions(cli):
    name = "lines-admin-nextjs-deployment"
    assert yaml.safe_load(cli("get", "deployment", name, "-o", "yaml"))["spec"]["replicas"] == 2
    assert cli.json("get", "deployment", name)["kind"] == "Deployment"
    logs = cli.proc("logs", f"deploy/{name}")   # one of its pods' log; the stand-in writes none
    assert logs.returncode == 0, logs.stderr
    bad = cli.proc("logs", "lines-admin-nextjs", "-c", "lines-cluster")
    assert bad.returncode != 0 and "container lines-cluster is not valid" in bad.stderr
    cli("logs", "lines-admin-nextjs", "-c", "lines-admin-nextjs")
    cli("annotate", "deployment", name, "lines/admin-annotation=dream come true")
    assert re.search(r"lines/admin-annotation: dream come true", cli("describe", "deployment", name))
    cli("set", "env", f"deployment/{name}", "REVISION=2")
    cli("rollout", "status", f"deployment/{name}", "--timeout=120s", timeout=130)
    sets = [r for r in cli.json("get", "rs", "-l", "app=lines-admin")["items"]]
    assert len(sets) == 2, [r["metadata"]["name"] for r in sets]
    notes = {r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: r["metadata"]["annotations"]
             for r in sets}
    assert set(notes) == {"1", "2"}
    assert notes["2"]["deployment.kubernetes.io/desired-replicas"] == "2"
    assert notes["2"]["deployment.kubernetes.io/max-replicas"] == "3"


@rows("K27")
def test_the_pi_job_logs_2000_digits_of_pi(cli):
    cli("wait", "--for=condition=complete", "job/pi", "--timeout=300s", timeout=310)
    assert re.search(r"^pi\s+(Complete\s+)?1/1", cli("get", "jobs"), re.M)
    out = cli("logs", "job/pi")
    pi = out.rstrip("\n")
    assert out.count("\n") == 1 and len(pi) == 2001, (len(pi), out[-80:])
    assert pi.startswith("3.14159265358979323846") and pi.endswith("4780275901")


@rows("K28")
def test_a_job_runs_more_pods_at_once_after_its_parallelism_is_patched(cli):
    job = "multi-completion-batch-job"
    assert cli.proc("scale", "job", job, "--replicas", "3").returncode != 0   # a Job has no scale subresource
    cli("patch", "job", job, "--type=merge", "-p", '{"spec":{"parallelism":3}}')

    def three() -> None:
        assert cli("get", "job", job, "-o", "jsonpath={.status.active}") == "3"
    eventually(three, 90)


@rows("K29")
def test_a_cronjob_is_created_listed_and_deleted(cli):
    manifest = cli.work / "cron_jobs_sample.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "hello"},
        "spec": {"schedule": "*/1 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{
                "name": "hello", "image": "busybox:1.28",
                "command": ["/bin/sh", "-c", "date; echo Hello from the Kubernetes cluster"]}]}}}}}}))
    assert cli("create", "-f", str(manifest)).strip() == "cronjob.batch/hello created"
    assert re.search(r"^hello\s+\*/1 \* \* \* \*", cli("get", "cronjob"), re.M)
    assert cli("delete", "cronjob.batch/hello").startswith('cronjob.batch "hello" deleted')


@rows("K64", "K65")
def test_a_deployment_rolls_out_back_and_pauses(cli):
    assert 'unknown command "rolling-update"' in cli.typo("rolling-update", "kubia-v1", "kubia-v2",
                                                          "--image=luksa/kubia:v2").stderr
    name = "deployment/kubia-rollout"

    def answer() -> str:
        pod = cli.pod("app=kubia-rollout")
        return cli("exec", pod, "--", "curl", "-s", "-m", "5", "http://127.0.0.1:8080")

    assert answer().startswith("This is v1 running in pod")
    cli("set", "image", name, "nodejs=luksa/kubia:v2")
    cli("rollout", "status", name, "--timeout=120s", timeout=130)
    assert cli.json("get", name)["spec"]["template"]["spec"]["containers"][0]["image"] == "luksa/kubia:v2"
    history = cli("rollout", "history", name)
    assert re.search(r"^1\s", history, re.M) and re.search(r"^2\s", history, re.M), history
    cli("rollout", "undo", name)
    cli("rollout", "status", name, "--timeout=120s", timeout=130)
    assert cli.json("get", name)["spec"]["template"]["spec"]["containers"][0]["image"] == "luksa/kubia:v1"
    # The notes' typo `rollout und`: kubectl reads the flags of `rollout` itself first, so the flag is what fails.
    typo = cli.proc("rollout", "und", name, "--to-revision=1")
    assert typo.returncode != 0 and "unknown flag: --to-revision" in typo.stderr, typo.stderr
    cli("rollout", "undo", name, "--to-revision=2")
    cli("rollout", "status", name, "--timeout=120s", timeout=130)
    cli("set", "image", name, "nodejs=luksa/kubia:v4")
    cli("rollout", "pause", name)
    assert cli.json("get", name)["spec"]["paused"] is True
    cli("rollout", "resume", name)
    cli("rollout", "status", name, "--timeout=120s", timeout=130)
    eventually(lambda: _answers(answer, "This is v4 running in pod"), 30)


def _answers(fetch: Callable[[], str], prefix: str) -> None:
    got = fetch()
    assert got.startswith(prefix), got


@rows("K67")
def test_a_statefulset_pod_gets_its_name_and_claim(cli):
    pod = cli.json("get", "po", "kubia-0")
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
    claims = {c["metadata"]["name"]: c["status"]["phase"] for c in cli.json("get", "pvc")["items"]}
    assert claims == {"data-kubia-0": "Bound"}


# ---- services, DNS and ingress ----------------------------------------------------------------------------

@rows("K15", "K31", "K36")
def test_a_service_lists_its_endpoints_and_forwards_a_port(cli):
    def listed() -> None:
        svc = cli("get", "svc")
        assert re.search(r"^lines-admin-nextjs-service\s+LoadBalancer\s+\S+\s+[\d.]+\s+3000:\d+/TCP", svc, re.M), svc
    eventually(listed, 60)
    assert re.search(r"^kubernetes\s+ClusterIP\s+\S+\s+<none>\s+443/TCP", cli("get", "svc", ns="default"), re.M)
    described = cli("describe", "svc", "lines-admin-nextjs-service")
    assert re.search(r"^Selector:\s+app=lines-admin$", described, re.M), described
    def endpoints() -> None:
        ips = {p["status"]["podIP"] for p in cli.json("get", "po", "-l", "app=lines-admin")["items"]
               if not p["metadata"].get("deletionTimestamp")}
        listed = cli("get", "endpoints", "lines-admin-nextjs-service")
        assert len(ips) == 2 and {f"{ip}:3000" for ip in ips} == set(listed.splitlines()[1].split()[1].split(",")), \
            (ips, listed)
    eventually(endpoints, 60)
    port = free_port()
    with cli.background("port-forward", "service/lines-admin-nextjs-service", f"{port}:3000", ready="Forwarding from"):
        get(f"http://127.0.0.1:{port}/")   # any 200 is the app's answer; urlopen raises on others


@rows("K30", "K38")
def test_expose_makes_a_load_balancer_service_for_a_pod(cli):
    cli("expose", "pod", "lines-admin-nextjs", "--type=LoadBalancer", "--name", "lines-admin-front-http",
        "--port=8080")
    svc = cli.json("get", "svc", "lines-admin-front-http")
    assert svc["spec"]["selector"] == {"app": "lines-admin-front", "scn": "up"}

    def external_ip() -> str:
        line = cli("get", "svc", "lines-admin-front-http").splitlines()[1].split()
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", line[3]), line
        return line[3]
    eventually(external_ip, 60)


@rows("K32", "K33", "K34", "K35")
def test_a_pod_reaches_a_service_by_cluster_ip_and_by_name(cli):
    pod = cli.pod("app=kubia")
    ip = cli("get", "svc", "kubia", "-o", "jsonpath={.spec.clusterIP}")
    assert cli("exec", pod, "--", "curl", "-s", f"http://{ip}").startswith("You've hit kubia-")
    missing = cli.proc("exec", pod, "env")
    assert missing.returncode != 0 and "exec [POD] [COMMAND] is not supported anymore" in missing.stderr
    env = dict(line.split("=", 1) for line in cli("exec", pod, "--", "env").splitlines() if "=" in line)
    assert env["KUBIA_SERVICE_HOST"] == ip and env["KUBIA_SERVICE_PORT"] == "80"
    for url in (f"http://kubia.{NS}.svc.cluster.local", f"http://kubia.{NS}", "http://kubia"):
        assert cli("exec", "-i", pod, "--", "bash", input=f"curl -s {url}\n").startswith("You've hit kubia-"), url
    resolv = cli("exec", pod, "--", "cat", "/etc/resolv.conf")
    dns = cli("get", "svc", "kube-dns", "-o", "jsonpath={.spec.clusterIP}", ns="kube-system")
    assert f"search {NS}.svc.cluster.local svc.cluster.local cluster.local" in resolv
    assert f"nameserver {dns}" in resolv and "options ndots:5" in resolv
    ping = cli.proc("exec", pod, "--", "ping", "-c", "1", "-W", "2", "kubia")
    assert ping.returncode != 0 and "1 packets transmitted, 0 packets received" in ping.stdout, ping.stdout
    node = cli.live.spec.workers[0].name
    assert "mode: iptables" in cli.live.ssh(node, "cat /etc/kubernetes/kube-proxy-config.yaml").stdout


@rows("K45")
def test_a_headless_service_resolves_to_the_pod_ips(cli):
    assert "unknown flag: --generator" in cli.proc("run", "dnsutils2", "--image=tutum/dnsutils",
                                                   "--generator=run-pod/v1", "--command", "--", "sleep",
                                                   "infinity").stderr
    ips = {p["status"]["podIP"] for p in cli.json("get", "po", "-l", "app=kubia")["items"]}
    headless = cli("exec", "dnsutils", "--", "nslookup", "kubia-headless")
    assert set(re.findall(r"Address: (\d+\.\d+\.\d+\.\d+)", headless)) == ips, headless
    plain = cli("exec", "dnsutils", "--", "nslookup", "kubia")
    ip = cli("get", "svc", "kubia", "-o", "jsonpath={.spec.clusterIP}")
    assert re.findall(r"Address: (\d+\.\d+\.\d+\.\d+)", plain) == [ip], plain


@rows("K40", "K41", "K43")
def test_an_ingress_with_a_tls_secret_from_openssl_serves_https(cli):
    work = cli.work
    subprocess.run(["openssl", "genrsa", "-out", "tls.key", "2048"], cwd=work, check=True, capture_output=True)
    wrong = subprocess.run(["openssl", "req", "-new", "-x509", "-key", "tls.key", "-out", "tls.cert", "-day", "360",
                            "-subj"], cwd=work, capture_output=True, text=True)
    assert wrong.returncode != 0
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", "tls.key", "-out", "tls.cert", "-days", "360",
                    "-subj", "/CN=kubia.scenarios.example"], cwd=work, check=True, capture_output=True)
    cli("create", "secret", "tls", "tls-secret", f"--cert={work / 'tls.cert'}", f"--key={work / 'tls.key'}")
    # A host of this test's own: the samples' Ingress already routes kubia.example.com.
    host = "kubia.scenarios.example"
    cli("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "kubia"},
        "spec": {"tls": [{"hosts": [host], "secretName": "tls-secret"}],
                 "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
                     "service": {"name": "kubia", "port": {"number": 80}}}}]}}]}}))
    address = cli.live.outputs["ingress_address"]
    assert re.search(rf"^kubia\s+traefik\s+{re.escape(host)}", cli("get", "ingresses"), re.M)

    def served() -> str:
        plain = get(f"http://{address}/", headers={"Host": host})
        assert plain.startswith("You've hit kubia-"), plain
        done = subprocess.run(["curl", "-k", "-v", "--resolve", f"{host}:443:{address}", f"https://{host}/kubia"],
                              capture_output=True, text=True, timeout=20)
        assert done.returncode == 0 and done.stdout.startswith("You've hit kubia-"), done.stderr[-300:]
        return done.stderr
    verbose = eventually(served, 90, 2)
    assert f"subject: CN={host}" in verbose, verbose


@rows("K46")
def test_port_forward_reaches_a_pod_by_name_and_port(cli):
    assert cli.proc("port-forward", "fortune", "test-pd").returncode != 0   # the notes' form: no such pod
    port = free_port()
    with cli.background("port-forward", "pod/test-pd", f"{port}:80", ready="Forwarding from"):
        assert "Welcome to nginx!" in get(f"http://127.0.0.1:{port}/")


@rows("K10")
def test_busybox_says_hello_world_from_a_pod(cli):
    # `docker run busybox echo "Hello world"`, as a pod: there is no docker CLI on a Kubernetes node here.
    out = cli("run", "hello", "--image=busybox", "--restart=Never", "--rm", "-i", "--quiet", "--", "echo",
              "Hello world", timeout=120)
    assert out == "Hello world\n"


@rows("K21")
def test_a_namespace_is_created_used_and_deleted(cli):
    assert cli("create", "namespace", NS_CUSTOM, ns=None).strip() == f"namespace/{NS_CUSTOM} created"
    assert NS_CUSTOM in cli("get", "ns", ns=None).split()
    manifest = cli.work / "deployment.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kubia"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "kubia"}},
                 "template": {"metadata": {"labels": {"app": "kubia"}},
                              "spec": {"containers": [{"name": "kubia", "image": "luksa/kubia"}]}}}}))
    assert cli("create", "-f", str(manifest), "-n", NS_CUSTOM, ns=None).strip() == "deployment.apps/kubia created"
    assert cli("get", "deploy", "-n", NS_CUSTOM, "-o", "name", ns=None).strip() == "deployment.apps/kubia"
    assert cli("delete", "namespace", NS_CUSTOM, "--wait=false", ns=None).startswith(f'namespace "{NS_CUSTOM}" deleted')


@rows("K39")
def test_the_ingress_controller_runs_among_all_namespaces_pods(cli):
    # minikube's `addons enable ingress` has no counterpart: this cluster's controller is Traefik, an add-on.
    pods = cli("get", "po", "--all-namespaces", ns=None)
    assert re.search(r"^traefik\s+traefik-\S+\s+1/1\s+Running", pods, re.M), pods


@rows("K42")
def test_a_certificate_signing_request_is_approved_and_signed(cli):
    key = cli.work / "csr.key"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-subj", "/CN=scenarios-user/O=scenarios", "-out", str(cli.work / "u.csr")],
                   check=True, capture_output=True)
    request = (cli.work / "u.csr").read_bytes()
    name = "scenarios-user"
    cli("delete", "csr", name, "--ignore-not-found", ns=None)
    cli("apply", "-f", "-", ns=None, input=yaml.safe_dump({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
        "spec": {"request": base64.b64encode(request).decode(), "signerName": "kubernetes.io/kube-apiserver-client",
                 "expirationSeconds": 600, "usages": ["client auth"]}}))
    try:
        assert "approved" in cli("certificate", "approve", name, ns=None)

        def issued() -> str:
            cert = cli("get", "csr", name, "-o", "jsonpath={.status.certificate}", ns=None)
            assert cert, "no certificate yet"
            return base64.b64decode(cert).decode()
        pem = eventually(issued, 30)
        subject = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True,
                                 text=True, check=True).stdout
        assert "CN = scenarios-user" in subject
    finally:
        cli("delete", "csr", name, "--ignore-not-found", ns=None)
