"""Images: built, pushed to a real local registry, pulled back by their upstream names and run with runc.

Each image is pulled the way a node would get it (from the registry, under the mirror path of its
upstream ref), unpacked into an OCI runtime bundle and its entrypoint run for real in its own namespaces.
Needs root (runc) and builds the images on first use (about 20 s when the .deb cache is warm).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.artifacts import images, registry

pytestmark = [pytest.mark.artifacts,
              pytest.mark.skipif(os.geteuid() != 0, reason="runc and image unpacking need root")]

# The capabilities containerd gives a pod container by default, so images run here as they would there.
POD_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def families():
    images.ensure_host_packages("umoci", "skopeo", "runc", "docker-registry")
    return images.ensure_images(log=lambda m: None)


@pytest.fixture(scope="module")
def mirror(families, tmp_path_factory):
    # As on a cluster's bridge: pulled from a read-only daemon, pushed through a temporary writable one.
    handle = registry.start([f"127.0.0.1:{free_port()}"], tmp_path_factory.mktemp("registry"), readonly=True)
    try:
        registry.publish(handle.home, families, log=lambda m: None)
        yield handle
    finally:
        handle.stop()


class Containers:
    """Runs image refs pulled from the mirror with runc; `close` removes every container it started."""

    def __init__(self, endpoint: str, workdir: Path):
        self.endpoint, self.workdir = endpoint, workdir
        self.root = workdir / "runc-state"
        self.started: list[tuple[str, subprocess.Popen]] = []

    def pull(self, ref: str, name: str) -> Path:
        """skopeo copy the ref back from the mirror and unpack it as a runtime bundle."""
        _, repo, tag = images.mirror_path(ref)
        layout = self.workdir / f"pulled-{name}"
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{self.endpoint}/{repo}:{tag}", f"oci:{layout}:{tag}"], check=True)
        bundle = self.workdir / f"bundle-{name}"
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True,
                       capture_output=True)
        return bundle

    def start(self, ref: str, name: str, args: list[str] | None = None, env: list[str] = (),
              hostname: str | None = None) -> tuple[subprocess.Popen, Path]:
        bundle = self.pull(ref, name)
        config = json.loads((bundle / "config.json").read_text())
        process = config["process"]
        process["terminal"] = False
        process["capabilities"] = {k: POD_CAPS for k in ("bounding", "effective", "permitted")}
        process["env"] += list(env)
        if args:
            process["args"] = args
        config["hostname"] = hostname or name
        (bundle / "config.json").write_text(json.dumps(config))
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(["runc", "--root", str(self.root), "run", "--bundle", str(bundle), name],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.started.append((name, proc))
        deadline = time.monotonic() + 30
        while self._state(name).get("status") != "running":  # runc returns before the container exists
            if proc.poll() is not None or time.monotonic() > deadline:
                break  # a short-lived command finished; callers check its exit status
            time.sleep(0.05)
        return proc, bundle

    def run(self, ref: str, name: str, args: list[str] | None = None, timeout: float = 120) -> str:
        proc, _ = self.start(ref, name, args)
        assert proc.wait(timeout) == 0, self.log(name)
        return self.log(name)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def _state(self, name: str) -> dict:
        state = subprocess.run(["runc", "--root", str(self.root), "state", name], capture_output=True, text=True)
        return json.loads(state.stdout) if state.returncode == 0 else {}

    def pid(self, name: str) -> int:
        state = self._state(name)
        assert state.get("status") == "running", f"{name} is not running:\n{self.log(name)}"
        return state["pid"]

    def exec(self, name: str, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runc", "--root", str(self.root), "exec", name, *cmd], capture_output=True,
                              text=True, timeout=60)

    def http(self, name: str, port: int, path: str = "/", data: bytes | None = None) -> tuple[int, str]:
        """An HTTP request from inside the container's network namespace (its port is not on the host)."""
        client = ("import sys, urllib.request, urllib.error\n"
                  "req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode() if len(sys.argv) > 2 else None)\n"
                  "try:\n  r = urllib.request.urlopen(req, timeout=5); print(r.status); print(r.read().decode(), end='')\n"
                  "except urllib.error.HTTPError as e:\n  print(e.code); print(e.read().decode(), end='')\n")
        url = f"http://127.0.0.1:{port}{path}"
        cmd = ["nsenter", "-t", str(self.pid(name)), "-n", sys.executable, "-c", client, url]
        deadline = time.monotonic() + 20
        while True:
            out = subprocess.run(cmd + ([data.decode()] if data is not None else []), capture_output=True, text=True)
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the server may still be starting
        assert out.returncode == 0, out.stderr + self.log(name)
        status, _, body = out.stdout.partition("\n")
        return int(status), body

    def close(self) -> None:
        for name, proc in self.started:
            subprocess.run(["runc", "--root", str(self.root), "kill", name, "KILL"], capture_output=True)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            subprocess.run(["runc", "--root", str(self.root), "delete", "--force", name], capture_output=True)


@pytest.fixture
def containers(mirror, tmp_path):
    runner = Containers(mirror.endpoint, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def test_every_image_of_the_notes_has_a_ref(families):
    refs = {ref for f in families for t in f.tags for ref in t.refs}
    for wanted in ("registry.k8s.io/pause:3.10.1", "docker.io/library/nginx:alpine", "docker.io/library/perl:5.34.0",
                   "docker.io/luksa/kubia:v3", "gcr.io/google-containers/busybox:latest", "docker.io/kubetm/hello:latest"):
        assert wanted in refs


def test_a_warm_build_reuses_every_archive(families):
    started = time.monotonic()
    again = images.ensure_images(log=lambda m: None)
    assert [f.archive for f in again] == [f.archive for f in families]
    assert time.monotonic() - started < 5


def test_images_on_busybox_share_its_layer_blob(families):
    def layers(family):
        index = json.loads(subprocess.run(["tar", "-xOf", str(family.archive), "index.json"],
                                          capture_output=True, check=True).stdout)
        manifest = json.loads(subprocess.run(
            ["tar", "-xOf", str(family.archive), "blobs/sha256/" + index["manifests"][0]["digest"][7:]],
            capture_output=True, check=True).stdout)
        return [layer["digest"] for layer in manifest["layers"]]

    by_name = {f.name: f for f in families}
    assert layers(by_name["nginx"])[0] == layers(by_name["busybox"])[0]
    assert layers(by_name["standin"])[0] == layers(by_name["busybox"])[0]


def test_the_registry_is_reused_and_a_second_push_sends_nothing(mirror, families):
    again = registry.start(mirror.endpoints, mirror.home, readonly=True)
    assert again.pids == mirror.pids
    counts = registry.publish(mirror.home, families, log=lambda m: None)
    assert counts["pushed"] == 0 and counts["present"] > 20


def test_the_registry_serves_images_under_their_upstream_paths(mirror):
    import urllib.request
    with urllib.request.urlopen(f"http://{mirror.endpoint}/v2/library/nginx/tags/list") as r:
        assert {"latest", "alpine"} <= set(json.load(r)["tags"])
    with urllib.request.urlopen(f"http://{mirror.endpoint}/v2/google-containers/busybox/tags/list") as r:
        assert json.load(r)["tags"] == ["latest"]


def test_pause_stays_up_and_exits_on_sigterm(containers):
    proc, _ = containers.start("registry.k8s.io/pause:3.10.1", "pause")
    time.sleep(1)
    assert proc.poll() is None, containers.log("pause")
    subprocess.run(["runc", "--root", str(containers.root), "kill", "pause", "TERM"], check=True)
    assert proc.wait(10) == 0
    assert containers.run("registry.k8s.io/pause:3.10.1", "pause-version", ["/pause", "-v"]).startswith(
        "pause.c v3.10.1-")


def test_busybox_says_hello_world(containers):
    assert containers.run("docker.io/library/busybox:latest", "busybox", ["echo", "Hello world"]) == "Hello world\n"
    out = containers.run("docker.io/library/busybox:1.28", "busybox-128",
                         ["/bin/sh", "-c", "date; echo Hello from the Kubernetes cluster"])
    assert out.splitlines()[1] == "Hello from the Kubernetes cluster"


def test_busybox_runs_the_commands_the_notes_type(containers):
    containers.start("docker.io/library/busybox:1.36", "bb", [
        "sh", "-c", "mkdir -p /www && echo served-by-httpd > /www/index.html && httpd -p 8080 -h /www && "
                    "sleep 9999 | nc -l -p 8081"])  # nc accepts one connection and never answers
    got = containers.exec("bb", "wget", "-T", "5", "-O-", "http://127.0.0.1:8080/")
    assert (got.returncode, got.stdout) == (0, "served-by-httpd\n"), got.stderr
    started = time.monotonic()
    silent = containers.exec("bb", "wget", "-T", "2", "-q", "-O-", "http://127.0.0.1:8081/")
    took = time.monotonic() - started
    assert silent.returncode == 1 and "timed out" in silent.stderr, (silent.returncode, silent.stderr)
    assert 1.5 < took < 10, f"wget -T 2 gave up after {took:.1f}s"
    for cmd in (["sleep", "1"], ["date"], ["nslookup", "--help"]):
        done = containers.exec("bb", *cmd)
        assert done.returncode in (0, 1) and "applet not found" not in done.stderr, (cmd, done.stderr)
    assert "Usage: nslookup" in containers.exec("bb", "nslookup", "--help").stderr


def test_dnsutils_has_bind_nslookup_dig_and_host(containers):
    for cmd, said in ((["dig", "-v"], "DiG 9.18.49"), (["nslookup", "-version"], "nslookup 9.18.49"),
                      (["host", "-V"], "host 9.18.49")):
        proc, _ = containers.start("docker.io/tutum/dnsutils:latest", cmd[0], cmd)
        proc.wait(30)
        assert said in containers.log(cmd[0]), containers.log(cmd[0])


def test_perl_runs_the_notes_pi_job_as_written(containers):
    out = containers.run("docker.io/library/perl:5.34.0", "perl",
                         ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"], timeout=300)
    assert out.count("\n") == 1, out[-300:]
    pi = out.rstrip("\n")
    assert len(pi) == 2001 and pi.startswith("3.14159265358979323846") and pi.endswith("4780275901")


def test_nginx_serves_the_welcome_page_and_reloads(containers):
    proc, _ = containers.start("docker.io/library/nginx:alpine", "nginx")
    status, body = containers.http("nginx", 80)
    assert status == 200 and "Welcome to nginx!" in body
    reload = containers.exec("nginx", "nginx", "-s", "reload")
    assert reload.returncode == 0, reload.stderr
    assert containers.http("nginx", 80)[0] == 200
    assert proc.poll() is None
    assert containers.exec("nginx", "ls", "/etc/nginx/conf.d").stdout.split() == ["default.conf"]


def test_kubia_answers_with_its_hostname(containers):
    containers.start("docker.io/luksa/kubia:latest", "kubia", hostname="kubia-7nog1")
    assert containers.http("kubia", 8080) == (200, "You've hit kubia-7nog1\n")
    curl = containers.exec("kubia", "curl", "-s", "http://127.0.0.1:8080")
    assert curl.stdout == "You've hit kubia-7nog1\n", curl.stderr
    bash = containers.exec("kubia", "bash", "-c", "echo $0 answers")
    assert bash.stdout == "/bin/sh answers\n", bash.stderr
    log = containers.log("kubia")
    assert "Kubia server starting..." in log and "Received request from 127.0.0.1" in log


TLS_SERVER = """
import http.server, ssl, sys
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"over tls\\n")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[3])), Hello)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


@pytest.mark.parametrize("ref", ["docker.io/luksa/kubia:latest", "docker.io/curlimages/curl:latest"])
def test_curl_takes_the_flags_users_type(containers, tmp_path, ref):
    name = ref.split("/")[-1].split(":")[0]
    containers.start(ref, name, ["sh", "-c", "mkdir -p /www && echo page > /www/index.html && "
                                             "httpd -p 8080 -h /www && sleep 9999 | nc -l -p 8081 > /tmp/request"])

    def curl(*args: str) -> subprocess.CompletedProcess:
        return containers.exec(name, "curl", *args)

    assert curl("--version").stdout.startswith("curl 7.88.1")
    assert curl("-s", "-m", "5", "http://127.0.0.1:8080/").stdout == "page\n"
    assert curl("-s", "-o", "/tmp/saved", "http://127.0.0.1:8080/").returncode == 0
    assert containers.exec(name, "cat", "/tmp/saved").stdout == "page\n"
    head = curl("-s", "-I", "http://127.0.0.1:8080/").stdout
    assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], head
    # nc never answers: -m ends the wait with curl's timeout status (28); -H went out with the request.
    started = time.monotonic()
    silent = curl("-s", "-m", "2", "-H", "X-Typed-By: the-notes", "http://127.0.0.1:8081/")
    assert silent.returncode == 28 and time.monotonic() - started < 10, (silent.returncode, silent.stderr)
    assert "X-Typed-By: the-notes" in containers.exec(name, "cat", "/tmp/request").stdout
    # TLS with a certificate no CA signed: refused (60) unless -k.
    cert, key = _self_signed_files(tmp_path)
    server = subprocess.Popen(["nsenter", "-t", str(containers.pid(name)), "-n", sys.executable, "-c", TLS_SERVER,
                               str(cert), str(key), "8443"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while (got := curl("-s", "-k", "-m", "5", "https://127.0.0.1:8443/")).returncode == 7 \
                and time.monotonic() < deadline:
            time.sleep(0.2)  # the server is still starting
        assert (got.returncode, got.stdout) == (0, "over tls\n"), got.stderr
        assert curl("-s", "-m", "5", "https://127.0.0.1:8443/").returncode == 60
    finally:
        server.kill()
        server.wait()
    bundle = containers.exec(name, "sh", "-c", "grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt")
    assert int(bundle.stdout) > 100, "no CA bundle"


def _self_signed_files(tmp_path: Path) -> tuple[Path, Path]:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=localhost", "-days", "1", "-keyout", str(tmp_path / "tls.key"),
                    "-out", str(tmp_path / "tls.crt")], check=True, capture_output=True)
    return tmp_path / "tls.crt", tmp_path / "tls.key"


def test_kubia_v3_fails_from_the_fifth_request(containers):
    containers.start("docker.io/luksa/kubia:v3", "kubia-v3", hostname="kubia-v3-abc")
    answers = [containers.http("kubia-v3", 8080) for _ in range(5)]
    assert answers[:4] == [(200, "This is v3 running in pod kubia-v3-abc\n")] * 4
    assert answers[4] == (500, "Some internal error has occurred! This is pod kubia-v3-abc\n")


def test_kubia_pet_stores_posted_data(containers):
    containers.start("docker.io/luksa/kubia-pet:latest", "pet", hostname="kubia-0")
    assert containers.http("pet", 8080) == (200, "You've hit kubia-0\nData stored on this pod: No data posted yet\n")
    assert containers.http("pet", 8080, data=b"Hey there!") == (200, "Data stored on pod kubia-0\n")
    assert containers.http("pet", 8080)[1].endswith("Data stored on this pod: Hey there!\n")


def test_hello_answers_on_8000(containers):
    containers.start("docker.io/kubetm/hello:latest", "hello")
    assert containers.http("hello", 8000) == (200, "Hello Kubernetes!\n")


def test_lines_admin_front_and_goproxy_answer_on_their_ports(containers):
    containers.start("gcr.io/lines-infra/lines_admin_front:v0.1.0", "lines")
    assert containers.http("lines", 3000)[0] == 200
    containers.start("registry.k8s.io/goproxy:0.1", "goproxy")
    assert containers.http("goproxy", 8080)[0] == 200


@pytest.mark.parametrize("tag,args,env", [("args", ["/bin/fortuneloop.sh", "1"], []),
                                          ("env", None, ["INTERVAL=1"])])
def test_fortune_writes_index_html(containers, tag, args, env):
    proc, bundle = containers.start(f"docker.io/luksa/fortune:{tag}", f"fortune-{tag}", args, env)
    index = bundle / "rootfs" / "var" / "htdocs" / "index.html"
    deadline = time.monotonic() + 10
    while not (index.exists() and index.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert index.read_text().strip(), containers.log(f"fortune-{tag}")
    assert "Configured to generate new fortune every 1 seconds" in containers.log(f"fortune-{tag}")
    subprocess.run(["runc", "--root", str(containers.root), "kill", f"fortune-{tag}", "TERM"], check=True)
    assert proc.wait(10) == 0


def test_kubectl_proxy_image_has_the_pinned_kubectl(containers, families):
    if "kubectl-proxy" not in {f.name for f in families}:
        pytest.skip("kubectl is not built yet (`invoke artifacts`)")
    out = containers.run("docker.io/luksa/kubectl-proxy:1.6.2", "kubectl", ["/kubectl", "version", "--client"])
    assert "v1.34" in out
    proc, _ = containers.start("docker.io/luksa/kubectl-proxy:1.6.2", "kubectl-proxy")
    assert proc.wait(30) == 1 and "run me in a pod" in containers.log("kubectl-proxy")


def test_coredns_image_runs_the_pinned_coredns(containers, families):
    if "coredns" not in {f.name for f in families}:
        pytest.skip("coredns is not built yet (`invoke artifacts`)")
    out = containers.run("registry.k8s.io/coredns/coredns:v1.14.1", "coredns", ["/coredns", "-version"])
    assert "CoreDNS-1.14.1" in out


def test_a_taken_port_is_refused_with_a_fix(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(images.ArtifactError, match="Pick a free port"):
            registry.start([f"127.0.0.1:{s.getsockname()[1]}"], tmp_path)
