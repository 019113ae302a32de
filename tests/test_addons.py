"""The cluster add-ons (infra/addons/) on a live cluster: MetalLB gives LoadBalancer Services an address
the host reaches, Traefik routes Ingresses by host and path and serves their TLS Secrets,
local-path-provisioner binds claims on the default StorageClass to data that outlives its pod, and
metrics-server serves the Metrics API through the API server's aggregation layer.

The live tests run on the session's shared cluster (tests/conftest.py), in a namespace of their own.
"""
from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import re
import socket
import ssl
import time

import pytest
import yaml
from conftest import create_namespace

from infra import addons, artifacts, playbook
from infra.kube import Kubectl, KubectlError

NS = "addons-test"


# ---- fast checks, no cluster ---------------------------------------------------------------------------

def test_an_address_range_outside_the_machine_network_is_refused_with_the_fix():
    with pytest.raises(addons.AddonsError, match="inside the machine network 10.78.0.0/24"):
        addons.check_address_range("10.79.0.200-10.79.0.220", "10.78.0.0/24")
    with pytest.raises(addons.AddonsError, match="in use .*10.78.0.40"):
        addons.check_address_range("10.78.0.30-10.78.0.50", "10.78.0.0/24", ("10.78.0.20", "10.78.0.40"))
    with pytest.raises(addons.AddonsError, match="first address is after the last"):
        addons.check_address_range("10.78.0.220-10.78.0.200")
    with pytest.raises(addons.AddonsError, match="not `A.B.C.D-A.B.C.E` or a CIDR"):
        addons.check_address_range("10.78.0.200..220")
    assert addons.check_address_range("10.78.0.192/27", "10.78.0.0/24") == "10.78.0.192-10.78.0.223"


def test_every_addon_image_is_one_the_image_families_build():
    refs = {r for f in yaml.safe_load(artifacts.LOCK.read_text())["images"]["families"].values()
            for t in f["tags"].values() for r in t["refs"]}
    used = set()
    for name in ("traefik", "metallb", "local-path", "metrics-server"):
        for obj in addons.load(name):
            spec = (obj.get("spec") or {}).get("template", {}).get("spec", {})
            used |= {c["image"] for c in spec.get("containers", [])}
    helper = yaml.safe_load(next(o for o in addons.load("local-path") if o["kind"] == "ConfigMap")
                            ["data"]["helperPod.yaml"])
    used |= {c["image"] for c in helper["spec"]["containers"]}
    assert used - refs == set(), f"images no family in lock.yaml provides: {sorted(used - refs)}"


def test_metrics_server_verifies_the_kubelets_with_the_cluster_ca():
    deployment = next(o for o in addons.load("metrics-server") if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--kubelet-insecure-tls" not in args
    assert "--kubelet-certificate-authority=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt" in args
    assert "--kubelet-preferred-address-types=InternalIP" in args
    binding = next(o for o in addons.load("metrics-server") if o["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == "extension-apiserver-authentication-reader"
    assert binding["metadata"]["namespace"] == "kube-system"


def test_the_default_classes_are_traefik_and_local_path():
    ingress_class = next(o for o in addons.load("traefik") if o["kind"] == "IngressClass")
    storage_class = next(o for o in addons.load("local-path") if o["kind"] == "StorageClass")
    assert ingress_class["metadata"]["name"] == "traefik"
    assert ingress_class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true"
    assert storage_class["metadata"]["name"] == "local-path"
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"


def test_every_addon_container_is_probed_for_readiness_every_two_seconds_from_its_start():
    probed = {}
    for name in ("metallb", "metrics-server", "traefik"):
        raw = {o["metadata"]["name"]: o for o in addons.load(name) if o["kind"] in ("Deployment", "DaemonSet")}
        for obj in addons.prompt_readiness(addons.load(name)):
            if obj["kind"] not in ("Deployment", "DaemonSet"):
                continue
            before = raw[obj["metadata"]["name"]]["spec"]["template"]["spec"]["containers"][0]
            after = obj["spec"]["template"]["spec"]["containers"][0]
            probed[obj["metadata"]["name"]] = after["readinessProbe"]
            assert after["livenessProbe"] == before["livenessProbe"]          # liveness keeps upstream's timing
            assert after["readinessProbe"]["httpGet"] == before["readinessProbe"]["httpGet"]
            assert {k: v for k, v in after.items() if k != "readinessProbe"} == \
                {k: v for k, v in before.items() if k != "readinessProbe"}
    assert set(probed) == {"controller", "speaker", "metrics-server", "traefik"}
    assert all(p["periodSeconds"] == 2 and "initialDelaySeconds" not in p for p in probed.values()), probed


def _depends_on(doc: dict) -> list[str]:
    return [r for r in (doc["metadata"].get("annotations") or {}).get(addons.DEPENDS_ON, "").split(",") if r]


def test_each_addon_workload_waits_for_its_account_and_the_rights_bound_to_it():
    for name in ("metallb", "traefik", "local-path", "metrics-server"):
        docs = addons.accounts_first(addons.load(name))
        refs = {addons.object_ref(d) for d in docs}
        for doc in docs:
            if doc["kind"] in ("Deployment", "DaemonSet"):
                needed = _depends_on(doc)
                assert needed, f"{name}: {doc['metadata']['name']} waits for nothing"
                assert set(needed) <= refs, f"{name}: {set(needed) - refs} are not in the group"
    controller = next(d for d in addons.accounts_first(addons.load("metallb")) if d["kind"] == "Deployment")
    assert set(_depends_on(controller)) == {
        "/namespaces/metallb-system/ServiceAccount/controller",
        "rbac.authorization.k8s.io/namespaces/metallb-system/Role/controller",
        "rbac.authorization.k8s.io/namespaces/metallb-system/RoleBinding/controller",
        "rbac.authorization.k8s.io/ClusterRole/metallb-system:controller",
        "rbac.authorization.k8s.io/ClusterRoleBinding/metallb-system:controller"}
    # Bound to a role the group does not hold (kube-system's own): the binding is waited for, the role not.
    server = next(d for d in addons.accounts_first(addons.load("metrics-server")) if d["kind"] == "Deployment")
    assert "rbac.authorization.k8s.io/namespaces/kube-system/RoleBinding/metrics-server-auth-reader" in \
        _depends_on(server)
    assert not any(r.endswith("extension-apiserver-authentication-reader") for r in _depends_on(server))


def test_the_speaker_is_applied_apart_from_the_rest_of_metallb():
    rest, speaker = addons.split_out(addons.load("metallb"), "metallb", "DaemonSet", "speaker")
    assert (speaker["kind"], speaker["metadata"]["name"]) == ("DaemonSet", "speaker")
    assert not any(d["kind"] == "DaemonSet" for d in rest)
    assert len(rest) == len(addons.load("metallb")) - 1
    with pytest.raises(addons.AddonsError, match="metallb.yaml must hold exactly one DaemonSet `speaker`"):
        addons.split_out(rest, "metallb", "DaemonSet", "speaker")


def test_metallbs_webhook_secret_holds_a_ca_and_serving_certificate_its_rotator_accepts(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding
    from pulumi import Output

    rest = addons.split_out(addons.load("metallb"), "metallb", "DaemonSet", "speaker")[0]
    docs = addons.with_webhook_cert(rest, tmp_path)
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == addons.WEBHOOK_SECRET)
    assert set(secret["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert all(isinstance(v, Output) for v in secret["data"].values())      # kept secret in the state
    folder = tmp_path / f"metallb-system.{addons.WEBHOOK_SECRET}"
    files = {name: (folder / name).read_bytes() for name in secret["data"]}
    # What cert-controller's rotator checks: the CA is valid for the name `cert`, the serving certificate is
    # signed by it for the Service's DNS name (server auth), both keys are PKCS#1 RSA.
    ca = x509.load_pem_x509_certificate(files["ca.crt"])
    served = x509.load_pem_x509_certificate(files["tls.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["cert"]
    assert served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["metallb-webhook-service.metallb-system.svc"]
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in \
        served.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    ca.public_key().verify(served.signature, served.tbs_certificate_bytes, padding.PKCS1v15(),
                           served.signature_hash_algorithm)
    assert served.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=365)
    assert files["ca.key"].startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert files["tls.key"].startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    controller = next(d for d in docs if d["kind"] == "Deployment")
    assert "/namespaces/metallb-system/Secret/metallb-webhook-cert" in _depends_on(controller)
    # Made once: a later run applies the same material.
    addons.with_webhook_cert(rest, tmp_path)
    assert {name: (folder / name).read_bytes() for name in secret["data"]} == files


@pytest.mark.artifacts
def test_the_metallb_manifests_are_the_pinned_modules_own():
    crds, rest = addons.metallb_upstream(addons.metallb_module_dir())
    assert addons.load("metallb-crds") == crds, "re-generate: python -m infra.addons --refresh-metallb"
    assert addons.load("metallb") == rest, "re-generate: python -m infra.addons --refresh-metallb"
    assert {c["spec"]["names"]["kind"] for c in crds} >= {"IPAddressPool", "L2Advertisement"}


# ---- the live cluster -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(shared_cluster):
    """The shared cluster (tests/conftest.py), with a namespace of this module's own."""
    kube = Kubectl(shared_cluster.kubeconfig, timeout=120)
    create_namespace(kube, NS)
    yield kube, shared_cluster
    kube.run("delete", "namespace", NS, "--wait=false", check=False)


def _eventually(fn, timeout: float = 120, interval: float = 2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (AssertionError, KubectlError, OSError, http.client.HTTPException) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"still failing after {timeout:.0f}s: {e}") from e
            time.sleep(interval)


def _http(address: str, port: int, path: str = "/", host: str | None = None,
          tls_ca: str | None = None) -> tuple[int, str, dict | None]:
    """GET from this host; with tls_ca, over TLS with SNI=host, verifying the server against tls_ca."""
    if tls_ca is not None:
        context = ssl.create_default_context(cadata=tls_ca)
        context.check_hostname = True
        raw = socket.create_connection((address, port), timeout=10)
        sock = context.wrap_socket(raw, server_hostname=host)
        cert = sock.getpeercert()
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=context)
        conn.sock = sock
    else:
        cert = None
        conn = http.client.HTTPConnection(address, port, timeout=10)
    conn.request("GET", path, headers={"Host": host} if host else {})
    resp = conn.getresponse()
    return resp.status, resp.read().decode(errors="replace"), cert


def _deployment(name: str, image: str, port: int) -> list[dict]:
    labels = {"app": name}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [{"name": name, "image": image,
                                                        "ports": [{"containerPort": port}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
         "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": port}]}},
    ]


@pytest.mark.artifacts
@pytest.mark.machines
def test_every_addon_is_ready_and_traefik_has_an_address_from_the_pool(cluster):
    kube, live = cluster
    address = live.outputs["ingress_address"]
    first, last = addons.parse_address_range(live.spec.lb_address_range)
    assert first <= ipaddress.IPv4Address(address) <= last, \
        f"Traefik's address {address} is not from {live.spec.lb_address_range}"
    for ns, kind, name in (("metallb-system", "deployment", "controller"), ("metallb-system", "daemonset", "speaker"),
                           ("traefik", "deployment", "traefik"),
                           ("local-path-storage", "deployment", "local-path-provisioner"),
                           ("kube-system", "deployment", "metrics-server")):
        obj = kube.json("get", "-n", ns, kind, name)
        status = obj["status"]
        ready = status.get("readyReplicas") if kind == "deployment" else status.get("numberReady")
        wanted = obj["spec"].get("replicas") if kind == "deployment" else status.get("desiredNumberScheduled")
        assert ready == wanted, f"{ns}/{kind}/{name}: {ready} of {wanted} ready"
    # MetalLB's controller kept the webhook CA pilothouse made (its rotator replaces one it finds invalid),
    # and injected it into its webhook configuration.
    kept = (playbook.cluster_dir(live.spec.name) / "addon-keys" / f"metallb-system.{addons.WEBHOOK_SECRET}"
            / "ca.crt").read_bytes()
    served = kube.json("get", "-n", "metallb-system", "secret", addons.WEBHOOK_SECRET)["data"]["ca.crt"]
    assert base64.b64decode(served) == kept
    hooks = kube.json("get", "validatingwebhookconfiguration", "metallb-webhook-configuration")["webhooks"]
    assert {base64.b64decode(h["clientConfig"]["caBundle"]) for h in hooks} == {kept}


@pytest.mark.artifacts
@pytest.mark.machines
def test_a_load_balancer_service_gets_a_pool_address_that_answers_http_from_the_host(cluster):
    kube, live = cluster
    objs = _deployment("lb-nginx", "docker.io/library/nginx:latest", 80)
    objs[1]["spec"]["type"] = "LoadBalancer"
    kube.apply(*objs)

    def address() -> str:
        ingress = kube.json("get", "-n", NS, "service", "lb-nginx")["status"].get("loadBalancer", {}).get("ingress")
        assert ingress, "no LoadBalancer address yet"
        return ingress[0]["ip"]

    ip = _eventually(address, 60)
    pool = live.spec.lb_address_range
    first, last = addons.parse_address_range(pool)
    assert first <= ipaddress.IPv4Address(ip) <= last, f"{ip} is not from the pool {pool}"

    def answers() -> str:
        status, body, _ = _http(ip, 80)
        assert status == 200, f"HTTP {status}"
        return body

    assert "Welcome to nginx!" in _eventually(answers, 120)


@pytest.mark.artifacts
@pytest.mark.machines
def test_an_ingress_routes_by_host_and_path_through_traefik(cluster):
    kube, live = cluster
    address = live.outputs["ingress_address"]
    kube.apply(*_deployment("web-nginx", "docker.io/library/nginx:latest", 80),
               *_deployment("web-kubia", "docker.io/luksa/kubia:latest", 8080))

    def path(p: str, service: str) -> dict:
        return {"path": p, "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 80}}}}

    # Hosts of this test's own: the shared cluster's samples already route foo/bar.example.com.
    # No ingressClassName: the default IngressClass (traefik) must be filled in at admission.
    kube.apply({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "routes", "namespace": NS},
                "spec": {"rules": [
                    {"host": "foo.addons-test.example", "http": {"paths": [path("/kubia", "web-kubia"), path("/", "web-nginx")]}},
                    {"host": "bar.addons-test.example", "http": {"paths": [path("/", "web-kubia")]}}]}})
    assert kube.json("get", "-n", NS, "ingress", "routes")["spec"].get("ingressClassName") == "traefik"

    def routed() -> None:
        cases = {("foo.addons-test.example", "/"): "Welcome to nginx!", ("foo.addons-test.example", "/kubia/x"): "You've hit web-kubia",
                 ("bar.addons-test.example", "/anything"): "You've hit web-kubia"}
        for (host, p), expected in cases.items():
            status, body, _ = _http(address, 80, p, host=host)
            assert status == 200 and expected in body, f"{host}{p}: HTTP {status} {body[:80]!r}"
        status, _, _ = _http(address, 80, "/", host="nobody.addons-test.example")
        assert status == 404, f"an unknown host got HTTP {status}, not 404"

    _eventually(routed, 120)

    def published() -> None:
        ingress = kube.json("get", "-n", NS, "ingress", "routes")["status"].get("loadBalancer", {}).get("ingress") or []
        assert [i.get("ip") for i in ingress] == [address], f"Ingress status shows {ingress}"

    _eventually(published, 60)


def _self_signed(host: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


@pytest.mark.artifacts
@pytest.mark.machines
def test_an_ingress_serves_tls_with_the_certificate_from_its_secret(cluster):
    kube, live = cluster
    address = live.outputs["ingress_address"]
    host = "secure.addons-test.example"
    cert, key = _self_signed(host)
    kube.apply(*_deployment("tls-kubia", "docker.io/luksa/kubia:latest", 8080),
               {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "secure-tls", "namespace": NS},
                "stringData": {"tls.crt": cert, "tls.key": key}},
               {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "secure", "namespace": NS},
                "spec": {"ingressClassName": "traefik", "tls": [{"hosts": [host], "secretName": "secure-tls"}],
                         "rules": [{"host": host, "http": {"paths": [
                             {"path": "/", "pathType": "Prefix",
                              "backend": {"service": {"name": "tls-kubia", "port": {"number": 80}}}}]}}]}})

    def served() -> dict:
        # Verification against the Secret's own certificate proves Traefik served exactly it, by SNI.
        status, body, peer = _http(address, 443, "/", host=host, tls_ca=cert)
        assert status == 200 and "You've hit tls-kubia" in body, f"HTTP {status} {body[:80]!r}"
        return peer

    peer = _eventually(served, 120)
    assert dict(x[0] for x in peer["subject"])["commonName"] == host


@pytest.mark.artifacts
@pytest.mark.machines
def test_a_claim_on_the_default_class_binds_and_its_data_survives_the_pod(cluster):
    kube, _ = cluster
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": NS},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}

    def pod(name: str, command: str) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "c", "image": "docker.io/library/busybox:latest",
                                         "command": ["sh", "-c", command],
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}

    kube.apply(claim, pod("writer", "echo kept-across-pods > /data/proof && cat /data/proof"))
    kube.run("wait", "-n", NS, "--for=jsonpath={.status.phase}=Succeeded", "pod/writer", "--timeout=180s", timeout=200)
    bound = kube.json("get", "-n", NS, "pvc", "data")
    assert bound["status"]["phase"] == "Bound"
    assert bound["spec"]["storageClassName"] == "local-path", "the claim did not get the default class"
    kube.run("delete", "-n", NS, "pod", "writer", "--wait=true")
    kube.apply(pod("reader", "cat /data/proof"))
    kube.run("wait", "-n", NS, "--for=jsonpath={.status.phase}=Succeeded", "pod/reader", "--timeout=120s", timeout=140)
    assert kube.run("logs", "-n", NS, "reader").strip() == "kept-across-pods"


@pytest.mark.artifacts
@pytest.mark.machines
def test_the_metrics_api_is_available_and_serves_every_node(cluster):
    kube, _ = cluster
    service = kube.json("get", "apiservice", "v1beta1.metrics.k8s.io")
    available = next(c for c in service["status"]["conditions"] if c["type"] == "Available")
    assert available["status"] == "True", available

    def nodes() -> dict:
        metrics = json.loads(kube.run("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"))
        assert metrics["items"], "no node metrics yet"
        return {m["metadata"]["name"]: m["usage"] for m in metrics["items"]}

    usage = _eventually(nodes, 90)
    assert set(usage) == {n["metadata"]["name"] for n in kube.json("get", "nodes")["items"]}
    # Quantities in their canonical form: cores in the largest of n, u and m that is exact (219064000n is written
    # 219064u), and bytes in the largest binary unit that is exact.
    assert all(re.fullmatch(r"\d+[num]?", u["cpu"]) and re.fullmatch(r"\d+(Ki|Mi|Gi)?", u["memory"])
               for u in usage.values()), usage
