"""Static checks of the sample manifests in workloads/ and of infra/workloads/: no cluster needed."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from infra import workloads as w, yamlload
from infra.workloads.manifests import _label_selector_matches
from infra.workloads.verify import BUSYBOX, Probe, _a_records

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ROOT / "workloads"
LOCK_YAML = ROOT / "infra" / "artifacts" / "lock.yaml"
NOTES_IDS = [f"W{i:02d}" for i in range(1, 65)] + [f"F{i:02d}" for i in range(1, 18)]
# Images verify() itself runs: client pods and the W57 rollout targets.
VERIFY_IMAGES = {BUSYBOX, "luksa/kubia:v2", "luksa/kubia:v4"}


@pytest.fixture(scope="module")
def sources() -> list[w.Manifest]:
    return w.load_sources(WORKLOADS)


def test_every_manifest_file_loads_and_validates(sources):
    files = {m.path for m in sources}
    on_disk = {p for g in w.GROUPS for p in (WORKLOADS / g).glob("*.yaml")}
    assert files == on_disk
    assert all(w.validate(m.obj) is None for m in sources)
    assert w.load_manifests(WORKLOADS) == [m.obj for m in sources]


def test_the_fast_yaml_loader_reads_every_manifest_and_the_lock_as_pyyaml_does():
    """infra.yamlload uses libyaml when PyYAML has it; it must give the very objects the pure-Python loader gives."""
    assert yamlload.LOADER is yaml.CSafeLoader, "PyYAML without libyaml: the program reads its YAML ~10x slower"
    paths = [*sorted(WORKLOADS.glob("*/*.yaml")), *sorted((ROOT / "infra" / "addons" / "manifests").glob("*.yaml")),
             LOCK_YAML]
    assert len(paths) > 70
    for path in paths:
        text = path.read_text()
        assert list(yamlload.load_all(text)) == list(yaml.safe_load_all(text)), path


def test_every_sample_in_the_notes_is_deployed_folded_in_or_excluded_with_a_reason():
    headers = {p.name: p.read_text().split("\napiVersion", 1)[0] for g in w.GROUPS for p in (WORKLOADS / g).glob("*.yaml")}
    excluded = {m.group(1): m.group(2) for m in re.finditer(r"^\| (W\d\d|F\d\d) \|(.*)$",
                                                            (WORKLOADS / "EXCLUDED.md").read_text(), re.M)}
    missing = []
    for sample in NOTES_IDS:
        as_file = any(name.startswith(sample + "-") for name in headers)
        folded = any(re.search(rf"\b{sample}\b", text) for text in headers.values())
        if not (as_file or folded or sample in excluded):
            missing.append(sample)
        if sample in excluded:
            assert not as_file, f"{sample} is both deployed and listed in EXCLUDED.md"
            cells = [c.strip() for c in excluded[sample].split("|")]
            assert len(cells) >= 3 and len(cells[2]) > 40, f"{sample}: EXCLUDED.md must give source, what, and why"
    assert not missing, f"samples neither deployed, folded into a manifest, nor in EXCLUDED.md: {missing}"


def test_every_file_header_names_its_source_lines():
    for path in (p for g in w.GROUPS for p in (WORKLOADS / g).glob("*.yaml")):
        header = path.read_text().split("\napiVersion", 1)[0]
        if not header.startswith("# Not in the notes"):
            assert re.search(r"\d{3}_[0-9a-f]{16}\.txt\s*#?\s*L\d+", header), f"{path.name}: name the source lines"


def test_no_two_objects_share_kind_namespace_and_name(sources):
    keys = [m.key for m in sources]
    assert len(keys) == len(set(keys))


def _references(obj: dict) -> set[tuple[str, str]]:
    """(kind, name) of the non-optional ConfigMaps, Secrets and claims an object's pods need."""
    refs: set[tuple[str, str]] = set()
    for spec in w.pod_specs(obj):
        for v in spec.get("volumes") or []:
            if "configMap" in v and not v["configMap"].get("optional"):
                refs.add(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v and not v["secret"].get("optional"):
                refs.add(("Secret", v["secret"]["secretName"]))
            if "persistentVolumeClaim" in v:
                refs.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
        for c in spec["containers"]:
            for src in c.get("envFrom") or []:
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in src and not src[key].get("optional"):
                        refs.add((kind, src[key]["name"]))
            for env in c.get("env") or []:
                for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    ref = (env.get("valueFrom") or {}).get(key)
                    if ref and not ref.get("optional"):
                        refs.add((kind, ref["name"]))
    if obj["kind"] == "Ingress":
        refs |= {("Secret", t["secretName"]) for t in obj["spec"].get("tls") or []}
        refs |= {("Service", p["backend"]["service"]["name"])
                 for r in obj["spec"]["rules"] for p in r["http"]["paths"]}
    return refs


def test_apply_order_puts_what_a_workload_needs_before_it(sources):
    position = {m.key: i for i, m in enumerate(sources)}
    namespaces = {m.obj["metadata"]["name"]: i for i, m in enumerate(sources) if m.obj["kind"] == "Namespace"}
    classes = {m.obj["metadata"]["name"]: i for i, m in enumerate(sources) if m.obj["kind"] == "StorageClass"}
    for i, m in enumerate(sources):
        kind, ns, name = m.key
        if ns and ns != "default":
            assert namespaces.get(ns, len(sources)) < i, f"{m.path.name}: namespace {ns} must come first"
        sc = (m.obj.get("spec") or {}).get("storageClassName")
        if kind == "PersistentVolumeClaim" and sc in classes:
            assert classes[sc] < i, f"{m.path.name}: StorageClass {sc} must come first"
        for ref_kind, ref_name in _references(m.obj):
            where = position.get((ref_kind, ns, ref_name))
            assert where is not None, f"{m.path.name}: {kind} {name} needs {ref_kind} {ns}/{ref_name}, defined nowhere"
            assert where < i, f"{m.path.name}: {ref_kind} {ref_name} must be applied before {kind} {name}"


def test_pods_that_wait_for_another_object_come_after_it_in_the_notes_scenarios(sources):
    names = [m.key for m in sources]
    # W63's ReplicaSet adopts W62's pod only if the pod exists first; otherwise it could delete it.
    assert names.index(("Pod", "default", "myapp-pod")) < names.index(("ReplicaSet", "default", "myapp-replica"))
    # Services before pods, so pods get the <SVC>_SERVICE_HOST variables the notes show.
    assert names.index(("Service", "default", "lines-admin-nextjs-service")) < \
        names.index(("Deployment", "default", "lines-admin-nextjs-deployment"))


def _normalise(ref: str) -> str:
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
    first = name.split("/", 1)[0]
    if "." not in first and ":" not in first:
        name = "docker.io/" + (name if "/" in name else "library/" + name)
    return f"{name}:{tag}"


def _stand_in_refs() -> set[str]:
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            found.update(_normalise(r) for r in node.get("refs") or [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(yaml.safe_load(LOCK_YAML.read_text())["images"])
    return found


def test_image_names_normalise_like_a_registry_does():
    assert _normalise("nginx") == "docker.io/library/nginx:latest"
    assert _normalise("luksa/kubia:v1") == "docker.io/luksa/kubia:v1"
    assert _normalise("registry.k8s.io/busybox") == "registry.k8s.io/busybox:latest"


def test_every_image_has_a_local_stand_in(sources):
    stand_ins = _stand_in_refs()
    used = {img: m.path.name for m in sources for img in w.images(m.obj)}
    used.update({img: "verify()" for img in VERIFY_IMAGES})
    missing = {img: where for img, where in used.items() if _normalise(img) not in stand_ins}
    assert not missing, f"images with no stand-in in {LOCK_YAML.name}: {missing}"


def test_every_deployed_sample_has_a_behaviour_check(sources):
    deployed = {m.sample for m in sources}
    assert deployed <= w.covered_samples(), f"no verify() check for {sorted(deployed - w.covered_samples())}"


def _write(tmp_path: Path, group: str, name: str, text: str) -> Path:
    (tmp_path / group).mkdir(exist_ok=True)
    path = tmp_path / group / name
    path.write_text(text)
    return path


GOOD_POD = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ok\nspec:\n  containers:\n  - name: a\n    image: busybox\n"
RS = """apiVersion: {api}
kind: ReplicaSet
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{app: {sel}}}
  template:
    metadata:
      labels: {{app: kubia}}
    spec:
      containers:
      - name: kubia
        image: luksa/kubia
"""


@pytest.mark.parametrize("text, problem", [
    (RS.format(api="apps/v1beta2", name="kubia", sel="kubia"), "apps/v1beta2 was removed"),
    (RS.format(api="apps/v1", name="kubia", sel="kubi"), "does not match the template labels"),
    ("apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: kubia}\n", "extensions/v1beta1 was removed"),
    ("apiVersion: batch/v1beta1\nkind: CronJob\nmetadata: {name: hello}\n", "batch/v1beta1 was removed"),
    ("  apiVersion: v1\nkind: Pod\n", "not valid YAML"),
    ("apiVersion: v1\nkind: PersistenceVolume\nmetadata: {name: pv-a}\n", "unknown kind 'PersistenceVolume'"),
    (GOOD_POD.replace("name: ok", "name: HelloWorld"), "must be a lower-case DNS name"),
    ("apiVersion: v1\nkind: Service\nspec: {}\n", "missing metadata"),
    (GOOD_POD.replace("name: ok", "name: ok\n  resourceVersion: '5'"), "resourceVersion is set by the server"),
    (GOOD_POD.replace("    image: busybox\n", "    images: busybox\n"), "has no image"),
    (GOOD_POD + "    volumeMounts: [{name: html, mountPath: /x}]\n", "does not declare"),
    (RS.format(api="apps/v1", name="kubia", sel="kubia").replace("  selector:\n    matchLabels: {app: kubia}\n", ""),
     "needs spec.selector"),
])
def test_a_malformed_manifest_raises_an_error_naming_the_file_and_the_problem(tmp_path, text, problem):
    path = _write(tmp_path, "pods", "W99-pod-bad.yaml", text)
    with pytest.raises(w.ManifestError) as err:
        w.load_manifests(tmp_path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_two_files_defining_one_object_are_refused_naming_both(tmp_path):
    first = _write(tmp_path, "pods", "W98-pod-a.yaml", GOOD_POD)
    second = _write(tmp_path, "pods", "W99-pod-b.yaml", GOOD_POD)
    with pytest.raises(w.ManifestError) as err:
        w.load_manifests(tmp_path)
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_set_based_selectors_match_like_the_api_server():
    selector = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["nginx", "frontend"]},
                                     {"key": "environment", "operator": "NotIn", "values": ["production"]}]}
    assert _label_selector_matches(selector, {"app": "nginx", "environment": "dev"})
    assert _label_selector_matches(selector, {"app": "nginx"})       # NotIn matches a missing key
    assert not _label_selector_matches(selector, {"app": "nginx", "environment": "production"})
    assert not _label_selector_matches(selector, {"app": "kubia"})


def test_generated_tls_secret_has_the_hosts_certificate_and_is_reused_on_the_next_run(sources, tmp_path):
    secret = next(m.obj for m in sources if m.key == ("Secret", "kubia", "tls-secret"))
    filled = w.with_generated_keys(secret, tmp_path)
    cert = x509.load_pem_x509_certificate(base64.b64decode(filled["data"]["tls.crt"]))
    assert cert.subject.rfc4514_string() == "CN=kubia.example.com"
    assert base64.b64decode(filled["data"]["tls.key"]).startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert w.with_generated_keys(secret, tmp_path) == filled             # stable, so `pulumi up` sees no diff
    assert "data" not in secret                                          # the loaded manifest is untouched


def test_generated_ssh_secret_keeps_the_notes_string_data(sources, tmp_path):
    secret = next(m.obj for m in sources if m.key == ("Secret", "default", "ssh-key-secret"))
    data = w.with_generated_keys(secret, tmp_path)["data"]
    assert set(data) == {"ssh-privatekey", "ssh-publickey"}
    assert base64.b64decode(data["ssh-publickey"]).startswith(b"ssh-rsa ")
    https = next(m.obj for m in sources if m.key == ("Secret", "default", "fortune-https"))
    filled = w.with_generated_keys(https, tmp_path)
    assert set(filled["data"]) == {"https.cert", "https.key"} and filled["stringData"] == {"foo": "bar"}


def test_samples_component_makes_one_child_per_object_in_apply_order(sources, tmp_path):
    import pulumi

    created: list[tuple[str, str, list]] = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            created.append((args.typ, args.name, args.inputs))
            return f"{args.name}-id", args.inputs

        def call(self, args: pulumi.runtime.MockCallArgs):
            return {}

    pulumi.runtime.set_mocks(Mocks(), preview=False)

    @pulumi.runtime.test
    def deploy():
        samples = w.Samples("samples", w.SamplesArgs(
            kubeconfig=pulumi.Output.secret("apiVersion: v1"), manifests_dir=WORKLOADS, keys_dir=tmp_path,
            node_labels={"worker-1": {"disk": "ssd", "test": "true"}}, external_ip="10.0.0.21"))
        return samples.urn

    deploy()
    objects = {name: (typ, inputs) for typ, name, inputs in created if name.startswith("samples-")
               and typ != "pulumi:providers:kubernetes" and typ != "kubernetes:core/v1:NodePatch"}
    # Objects of one stage register concurrently, so their order is not fixed: compare the sets.
    assert sorted(objects) == sorted(f"samples-{w.resource_name(m.obj)}" for m in sources)
    assert objects["samples-deployment-kubia-deploy-kubia"][0] == "kubernetes:apps/v1:Deployment"
    assert objects["samples-pod-default-hello-pod"][0] == "kubernetes:core/v1:Pod"
    assert objects["samples-ingress-kubia-kubia"][0] == "kubernetes:networking.k8s.io/v1:Ingress"
    assert all(i["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true" for _, i in objects.values())
    typ, hello = objects["samples-service-default-hello-svc"]
    assert hello["spec"]["externalIPs"] == ["10.0.0.21"] and hello["metadata"]["name"] == "hello-svc"
    assert ("kubernetes:core/v1:NodePatch", "samples-node-worker-1") in {(t, n) for t, n, _ in created}


def test_an_object_keeps_the_urn_it_had_inside_its_own_config_group():
    samples = "urn:pulumi:dev::pilothouse::pilothouse:workloads:Samples::c-samples"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello-pod", "namespace": "default"}}
    assert w.grouped_urn(samples, "c-samples-pod-default-hello-pod", pod) == (
        "urn:pulumi:dev::pilothouse::pilothouse:workloads:Samples$kubernetes:yaml/v2:ConfigGroup"
        "$kubernetes:core/v1:Pod::c-samples-pod-default-hello-pod:default/hello-pod")
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv0003"}}
    assert w.grouped_urn(samples, "c-samples-persistentvolume-pv0003", pv).endswith(
        "ConfigGroup$kubernetes:core/v1:PersistentVolume::c-samples-persistentvolume-pv0003:pv0003")
    assert w.type_token({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding"}) == \
        "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding"


def test_only_default_class_claims_and_ingresses_wait_for_an_add_on(sources):
    needed = {m.key: w.addon_needed(m.obj) for m in sources}
    assert {key: need for key, need in needed.items() if need} == {
        ("PersistentVolumeClaim", "default", "mongodb-pvc"): w.STORAGE,      # no class: the default one
        ("StatefulSet", "web", "web"): w.STORAGE,                            # its claim templates too
        ("StatefulSet", "kubia-sts", "kubia"): w.STORAGE,
        ("Ingress", "kubia", "kubia-paths"): w.INGRESS,
        ("Ingress", "kubia", "foo-bar"): w.INGRESS,
        ("Ingress", "kubia", "kubia"): w.INGRESS,
        ("Ingress", "kubia", "kubia-tls"): w.INGRESS,
    }
    # A claim naming its class (W34's `slow`, bound to its own PV) and a LoadBalancer Service start at once.
    assert needed[("PersistentVolumeClaim", "default", "pvc-slow")] is None
    assert needed[("Service", "kubia", "kubia-loadbalancer")] is None
    explicit = {"kind": "StatefulSet", "spec": {"volumeClaimTemplates": [{"spec": {"storageClassName": ""}}]}}
    assert w.addon_needed(explicit) is None


BUSYBOX_NSLOOKUP = """Server:\t\t10.96.0.10
Address:\t10.96.0.10:53

Name:\tkubia-headless.kubia-readiness.svc.cluster.local
Address: 10.244.1.5
Name:\tkubia-headless.kubia-readiness.svc.cluster.local
Address: 10.244.2.7

*** Can't find kubia-headless.kubia-readiness.svc.cluster.local: No answer
"""


def test_a_records_are_read_from_the_answer_not_the_dns_server_line():
    assert _a_records(BUSYBOX_NSLOOKUP) == {"10.244.1.5", "10.244.2.7"}
    assert _a_records("Server:\t10.96.0.10\nAddress:\t10.96.0.10:53\n\n** server can't find x: NXDOMAIN\n") == set()


def test_node_addresses_come_from_the_internal_ip_column_of_get_nodes_wide(tmp_path):
    fake = tmp_path / "kubectl"
    fake.write_text("#!/bin/sh\ncat <<'T'\n"
                    "NAME   STATUS   ROLES           AGE   VERSION   INTERNAL-IP   EXTERNAL-IP   OS-IMAGE\n"
                    "cp-1   Ready    control-plane   1h    v1.34.4   10.0.0.11     <none>        Debian\n"
                    "w-1    Ready    <none>          1h    v1.34.4   10.0.0.21     <none>        Debian\nT\n")
    fake.chmod(0o755)
    assert Probe("/dev/null", binary=str(fake)).node_addresses() == {"cp-1": "10.0.0.11", "w-1": "10.0.0.21"}


def test_host_side_https_probe_sends_sni_and_host_and_reads_the_certificate_name(tmp_path):
    import http.server
    import ssl
    import threading

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "t", "annotations": {w.GENERATE_ANNOTATION: "x509 cn=kubia.example.com cert=c key=k"}}}
    w.with_generated_keys(secret, tmp_path)
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen["host"] = self.headers["Host"]
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"You've hit kubia-x\n")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "default.t" / "c", tmp_path / "default.t" / "k")
    ctx.sni_callback = lambda sock, name, _: seen.__setitem__("sni", name)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.handle_request, daemon=True).start()
    status, body, cn = w.http_get("127.0.0.1", server.server_address[1], path="/kubia", host="kubia.example.com",
                                  tls=True)
    server.server_close()
    assert (status, body, cn) == (200, "You've hit kubia-x\n", "kubia.example.com")
    assert seen == {"sni": "kubia.example.com", "host": "kubia.example.com"}
