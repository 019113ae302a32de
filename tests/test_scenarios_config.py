"""The notes' ConfigMap, Secret, downward-API and API-access scenarios (catalog rows K49-K63), typed against the
live shared cluster in their corrected form; see test_scenarios.py, which checks that every row K01-K76 is run
by one of the two modules or listed as not applicable."""
from __future__ import annotations

import base64
import json
import re
import subprocess
from typing import Iterator

import pytest
import yaml

from scenario_support import Cli, eventually, fill_namespace, free_port, get, insecure, rows

NS = "scenarios-config"
SA = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def cli(shared_cluster) -> Iterator[Cli]:
    """NS with the objects of scenarios/config-objects.yaml, the ConfigMaps and Secret they mount made by the
    notes' own commands, and the notes' `curl` pod (K61), all Ready."""
    cli = Cli(shared_cluster, NS)

    def prepare() -> None:
        cli("create", "configmap", "fortune-config", "--from-literal=sleep-interval=25")
        cli("create", "configmap", "myconfigmap", "--from-literal=foo=bar", "--from-literal=bar=baz",
            "--from-literal=one=two")
        for cmd in (["openssl", "genrsa", "-out", "https.key", "2048"],
                    ["openssl", "req", "-new", "-x509", "-key", "https.key", "-out", "https.cert", "-days", "3650",
                     "-subj", "/CN=www.kubia-example.com"]):
            subprocess.run(cmd, cwd=cli.work, check=True, capture_output=True)
        (cli.work / "foo").write_text("bar\n")
        created = cli.proc("create", "secret", "generic", "fortune-https", "--from-file=https.key",
                           "--from-file=https.cert", "--from-file=foo", cwd=cli.work)
        assert created.returncode == 0, created.stderr

    fill_namespace(cli, "config-objects.yaml", prepare)
    cli("run", "curl", "--image=curlimages/curl", "--restart=Never", "--command", "--", "sleep", "9999999")
    cli("wait", "--for=condition=Ready", "pod/curl", "--timeout=120s", timeout=140)
    yield cli
    cli("delete", "namespace", NS, "--ignore-not-found", "--wait=false", ns=None)
    cli("delete", "clusterrolebinding", "permissive-binding", "--ignore-not-found", ns=None)


@rows("K49", "K50")
def test_configmaps_from_literals_and_files(cli):
    assert cli.json("get", "configmap", "fortune-config")["data"] == {"sleep-interval": "25"}
    assert cli.json("get", "configmap", "myconfigmap")["data"] == {"foo": "bar", "bar": "baz", "one": "two"}
    files = cli.work / "config-files"
    (files / "config-opts").mkdir(parents=True, exist_ok=True)
    (files / "foo.json").write_text('{"foo": "bar"}\n')
    (files / "bar").write_text("abc\n")
    (files / "config-opts" / "debug").write_text("true\n")
    (files / "config-opts" / "repeat").write_text("100\n")
    (files / "config-file.conf").write_text("setting=1\n")
    for name, source, keys in (("from-file", "config-file.conf", {"config-file.conf"}),
                               ("from-file-key", "customkey=config-file.conf", {"customkey"}),
                               ("from-dir", "config-opts/", {"debug", "repeat"})):
        made = cli.proc("create", "configmap", name, f"--from-file={source}", cwd=files)
        assert made.returncode == 0, made.stderr
        assert set(cli.json("get", "configmap", name)["data"]) == keys
    # The notes' multi-line form, with the line continuations it lacked.
    script = ("kubectl create configmap my-configmap \\\n  --from-file=foo.json \\\n  --from-file=bar=foobar.conf "
              "\\\n  --from-file=config-opts/ \\\n  --from-literal=some=thing\n")
    (files / "foobar.conf").write_text("xyz\n")
    done = subprocess.run(["sh", "-c", script.replace("kubectl", " ".join(cli.kube.command + ["-n", NS]), 1)],
                          cwd=files, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    data = cli.json("get", "configmap", "my-configmap")["data"]
    assert data == {"foo.json": '{"foo": "bar"}\n', "bar": "xyz\n", "debug": "true\n", "repeat": "100\n",
                    "some": "thing"}


@rows("K51", "K54")
def test_an_edited_configmap_and_an_nginx_reload_in_its_pod(cli):
    cli.edit("configmap/fortune-config", 's/sleep-interval: "25"/sleep-interval: "5"/')
    assert cli.json("get", "configmap", "fortune-config")["data"] == {"sleep-interval": "5"}
    wrong = cli.proc("exec", "-it", "fortune-configmap-volume", "-c", "web-server", "--Is", "-1A")
    assert "unknown flag: --Is" in wrong.stderr
    reload = cli.proc("exec", "fortune-configmap-volume", "-c", "web-server", "--", "nginx", "-s", "reload")
    assert reload.returncode == 0, reload.stderr
    listing = cli("exec", "fortune-configmap-volume", "-c", "web-server", "--", "ls", "-lA", "/etc/nginx/conf.d")
    assert re.search(r"sleep-interval -> \.\.data/sleep-interval", listing), listing

    def propagated() -> None:
        got = cli("exec", "fortune-configmap-volume", "-c", "web-server", "--", "cat",
                  "/etc/nginx/conf.d/sleep-interval")
        assert got == "5", got
    eventually(propagated, 120, 3)


@rows("K52", "K53", "K55", "K57")
def test_secrets_are_base64_and_pods_get_a_projected_token(cli):
    names = cli("get", "secrets", "-o", "jsonpath={.items[*].metadata.name}").split()
    assert not [n for n in names if n.startswith("default-token-")], names
    volumes = cli("get", "pod", "curl", "-o", "jsonpath={.spec.volumes[*].name}").split()
    assert any(v.startswith("kube-api-access-") for v in volumes), volumes
    assert "unknown flag: --from-file-https.cert" in cli.proc(
        "create", "secret", "generic", "typo", "--from-file=https.key", "--from-file-https.cert").stderr
    secret = yaml.safe_load(cli("get", "secret", "fortune-https", "-o", "yaml"))
    assert set(secret["data"]) == {"https.key", "https.cert", "foo"}
    assert base64.b64decode(secret["data"]["foo"]) == b"bar\n"
    plain = yaml.safe_load(cli("get", "configmap", "fortune-config", "-o", "yaml"))["data"]
    assert plain["sleep-interval"] in ("25", "5")   # ConfigMap data is plain text (K51 may have edited it)
    cli("create", "secret", "generic", "test-db-secret", "--from-literal=username=testuser",
        "--from-literal=password=iluvtests")
    username = cli("get", "secret", "test-db-secret", "-o", "jsonpath={.data.username}")
    assert base64.b64decode(username) == b"testuser"
    cli("create", "secret", "docker-registry", "mydockerhubsecret", "--docker-username=myusername",
        "--docker-password=mypassword", "--docker-email=my.email@provider.com")
    registry = cli.json("get", "secret", "mydockerhubsecret")
    assert registry["type"] == "kubernetes.io/dockerconfigjson"
    auths = json.loads(base64.b64decode(registry["data"][".dockerconfigjson"]))["auths"]
    assert auths["https://index.docker.io/v1/"]["username"] == "myusername"


@rows("K56")
def test_nginx_serves_https_with_the_secret_through_a_port_forward(cli):
    port = free_port()
    with cli.background("port-forward", "fortune-https", f"{port}:443", ready="Forwarding from"):
        assert "Welcome to nginx!" in get(f"https://localhost:{port}", context=insecure())
        plain = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://localhost:{port}",
                                "-k"], capture_output=True, text=True, timeout=20)
        assert plain.stdout == "400", plain   # the notes' http:// on the TLS port
    mounts = cli("exec", "fortune-https", "-c", "web-server", "--", "mount")
    assert re.search(r"^tmpfs on /etc/nginx/certs type tmpfs", mounts, re.M), mounts


@rows("K58")
def test_the_downward_api_in_env_and_files(cli):
    env = cli("exec", "downward", "--", "env")
    assert "POD_NAME=downward" in env and f"POD_NAMESPACE={NS}" in env
    listing = cli("exec", "downward", "--", "ls", "-1L", "/etc/downward").split()
    assert listing == ["annotations", "labels", "podName"]
    assert cli.proc("exec", "downward", "--", "cat", "/etc/downward/lables").returncode != 0
    labels = cli("exec", "downward", "--", "cat", "/etc/downward/labels")
    assert 'foo="bar"' in labels.splitlines()
    assert 'key1="value1"' in cli("exec", "downward", "--", "cat", "/etc/downward/annotations").splitlines()


@rows("K59", "K60")
def test_kubectl_proxy_serves_the_api_on_a_local_port(cli):
    port = free_port()
    with cli.background("proxy", f"--port={port}", ns=None, ready=f"Starting to serve on 127.0.0.1:{port}"):
        base = f"http://127.0.0.1:{port}"
        assert "/apis/batch/v1" in json.loads(get(base))["paths"]
        batch = json.loads(get(f"{base}/apis/batch"))
        assert [v["version"] for v in batch["versions"]] == ["v1"]
        resources = {r["name"] for r in json.loads(get(f"{base}/apis/batch/v1"))["resources"]}
        assert {"jobs", "cronjobs"} <= resources
        jobs = json.loads(get(f"{base}/apis/batch/v1/namespaces/{NS}/jobs"))
        assert jobs["kind"] == "JobList" and jobs["items"] == []
        deploy = json.loads(get(f"{base}/apis/apps/v1/namespaces/kube-system/deployments/coredns"))
        assert deploy["metadata"]["name"] == "coredns"


@rows("K61", "K62")
def test_a_pod_reads_the_api_with_its_token_once_rbac_allows_it(cli):
    script = (f"SA={SA}; TOKEN=$(cat $SA/token); NS=$(cat $SA/namespace); "
              "curl -s --cacert $SA/ca.crt -H \"Authorization: Bearer $TOKEN\" "
              "https://kubernetes.default.svc/api/v1/namespaces/$NS/pods")
    assert cli("exec", "curl", "--", "sh", "-c", "env | grep KUBERNETES_SERVICE").count("KUBERNETES_SERVICE") >= 2
    assert sorted(cli("exec", "curl", "--", "ls", SA).split()) == ["ca.crt", "namespace", "token"]
    denied = json.loads(cli("exec", "curl", "--", "sh", "-c", script))
    assert denied["code"] == 403 and 'pods is forbidden' in denied["message"]
    typo = cli.proc("create", "clusterrolebinging", "permissive-binding", "--clusterrole=cluster-admin",
                    "--group=system:serviceaccounts", ns=None)
    assert "unknown flag: --clusterrole" in typo.stderr, typo.stderr
    try:
        cli("create", "clusterrolebinding", "permissive-binding", "--clusterrole=cluster-admin",
            "--group=system:serviceaccounts", ns=None)

        def listed() -> None:
            pods = json.loads(cli("exec", "curl", "--", "sh", "-c", script))
            assert pods.get("kind") == "PodList" and "curl" in {p["metadata"]["name"] for p in pods["items"]}, pods
        eventually(listed, 30)
    finally:
        cli("delete", "clusterrolebinding", "permissive-binding", "--ignore-not-found", ns=None)


@rows("K63")
def test_curl_reaches_the_api_through_the_ambassador_container(cli):
    old = cli.proc("exec", "-it", "curl-with-ambassador", "-c", "main", "bash")
    assert old.returncode != 0
    out = cli("exec", "-i", "curl-with-ambassador", "-c", "main", "--", "bash", input="curl -s localhost:8001/api\n")
    assert json.loads(out)["kind"] == "APIVersions"
