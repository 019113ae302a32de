"""Behaviour checks of what the samples are given: services, ingress, volumes and config (the notes' groups of
the same names). They register with verify.check; verify.py says what they change.
"""
from __future__ import annotations

import base64
from typing import Mapping, Optional

from infra.workloads.verify import (HELLO_KUBIA, WGET, Probe, check, eventually, expect, host_get, http_get, ready_pod,
                                    resolve)


@check("W04 service/hello-svc")
def _w04(c: Probe) -> str:
    svc = c.json("get", "svc", "hello-svc")
    external = svc["spec"]["externalIPs"][0]
    for url in ("http://hello-svc:8200/", f"http://{external}:8200/"):
        expect("Hello Kubernetes!" in c.wget(url), f"{url} did not answer 'Hello Kubernetes!'")
    return f"answers on hello-svc:8200 and externalIP {external}:8200 (from a pod)"


def _kubia_hosts(c: Probe, url: str, n: int, ns: str = "default") -> set[str]:
    out = c.sh(f"for i in $(seq {n}); do {WGET} {url}; echo; done", ns, timeout=90)
    return {line.split(HELLO_KUBIA, 1)[1].strip() for line in out.splitlines() if HELLO_KUBIA in line}


@check("W18 service/kubia (kubia)", lane="kubia")
def _w18(c: Probe) -> str:
    cluster_ip = c.json("get", "svc", "-n", "kubia", "kubia")["spec"]["clusterIP"]
    for name, ns in (("kubia", "kubia"), ("kubia.kubia", "default"), ("kubia.kubia.svc.cluster.local", "default")):
        got = resolve(c, name, ns)
        expect(got == {cluster_ip}, f"{name} from {ns} resolves to {sorted(got)}, not {cluster_ip}")
    hosts = _kubia_hosts(c, "http://kubia.kubia.svc.cluster.local", 20)
    expect(len(hosts) >= 2, f"20 requests all went to {sorted(hosts)}")
    return f"kubia, kubia.kubia and kubia.kubia.svc.cluster.local resolve; 20 requests reached {len(hosts)} pods"


@check("F02 service/kubia-session-affinity (kubia)", lane="kubia")
def _f02(c: Probe) -> str:
    hosts = _kubia_hosts(c, "http://kubia-session-affinity.kubia", 10)
    expect(len(hosts) == 1, f"ClientIP affinity, yet answers from {sorted(hosts)}")
    return f"10 requests from one client all reached {hosts.pop()}"


@check("W19+F03 pod/lines-sample, service/kubia (kubia-named-ports)")
def _w19(c: Probe) -> str:
    ready_pod(c, "kubia-named-ports", "lines-sample")
    ep = c.json("get", "endpoints", "-n", "kubia-named-ports", "kubia")
    ports = {p["name"]: p["port"] for s in ep.get("subsets", []) for p in s.get("ports", [])}
    expect(ports == {"http": 8080, "https": 8443}, f"endpoint ports {ports}, expected http 8080 / https 8443")
    expect(HELLO_KUBIA + "lines-sample" in c.wget("http://kubia.kubia-named-ports/"), "port 80 -> http failed")
    return "service ports resolve to the pod's named ports http:8080 and https:8443"


@check("W20+W21 service+endpoints/external-service")
def _w20(c: Probe) -> str:
    ep = c.json("get", "endpoints", "external-service")
    ips = sorted(a["ip"] for s in ep.get("subsets", []) for a in s.get("addresses", []))
    expect(ips == ["11.11.11.11", "22.22.22.22"], f"endpoints {ips}")
    expect(bool(resolve(c, "external-service.default.svc.cluster.local")), "external-service does not resolve")
    return "selector-less service resolves; its endpoints are the two manual addresses"


@check("W22 service/external-service (externalname)")
def _w22(c: Probe) -> str:
    out = c.sh("nslookup -type=cname external-service.externalname.svc.cluster.local. || true")
    expect("someapi.somecompany.com" in out, f"no CNAME in: {out.strip()[-120:]}")
    return "DNS answers with CNAME someapi.somecompany.com"


@check("W23 service/kubia-nodeport (kubia)", lane="kubia")
def _w23(c: Probe) -> str:
    nodes = c.node_addresses()
    for node, ip in sorted(nodes.items()):
        status, body, _ = eventually(lambda: host_get(ip, 30123), 30)
        expect(status == 200 and HELLO_KUBIA in body, f"{node} {ip}:30123 answered {status}")
    return f"answers on {ip_list(nodes)} port 30123"


def ip_list(nodes: Mapping[str, str]) -> str:
    return ", ".join(f"{n} {ip}" for n, ip in sorted(nodes.items()))


@check("F04 service/kubia-nodeport-local (kubia)", lane="kubia")
def _f04(c: Probe) -> str:
    nodes = c.node_addresses()
    with_pods = {p["spec"].get("nodeName") for p in c.pods("kubia", "app=kubia")
                 if p["metadata"].get("deletionTimestamp") is None and _ready(p)}
    answered, silent = [], []
    for node, ip in sorted(nodes.items()):
        try:
            status, body, _ = http_get(ip, 30124, timeout=3)
            (answered if status == 200 else silent).append(node)
        except OSError:
            silent.append(node)
    expect(set(answered) == with_pods & set(nodes),
           f"answered on {answered}; nodes with a kubia pod: {sorted(with_pods)}")
    return f"answers only on nodes running a kubia pod ({', '.join(answered)})"


@check("W24 service/kubia-loadbalancer (kubia)", lane="kubia")
def _w24(c: Probe) -> str:
    ip = c.lb_address("kubia", "kubia-loadbalancer")
    status, body, _ = eventually(lambda: host_get(ip, 80), 30)
    expect(HELLO_KUBIA in body, f"{ip}:80 answered {status} {body[:60]!r}")
    return f"got {ip}; it answers \"{body.strip()}\""


@check("W17 service/lines-admin-nextjs-service")
def _w17(c: Probe) -> str:
    ip = c.lb_address("default", "lines-admin-nextjs-service")
    status, _, _ = eventually(lambda: host_get(ip, 3000), 30)
    expect(status == 200, f"{ip}:3000 answered {status}")
    return f"got {ip}; :3000 answers 200"


def _ingress_address(c: Probe, given: Optional[str]) -> str:
    if given:
        return given
    status = c.json("get", "ingress", "-n", "kubia", "kubia").get("status", {}).get("loadBalancer", {})
    ingress = status.get("ingress") or []
    expect(bool(ingress), "ingress kubia has no address in its status; pass ingress_address")
    return ingress[0].get("ip") or ingress[0]["hostname"]


@check("W25+W26+F05+F06 ingress/kubia, kubia-tls, kubia-paths, foo-bar (kubia)", lane="kubia")
def _ingress(c: Probe) -> str:
    addr = _ingress_address(c, c.ingress_address)
    routes = [("kubia.example.com", "/", "kubia-"), ("kubia.example.com", "/kubia", "kubia-"),
              ("kubia.example.com", "/bar", "bar-"), ("foo.example.com", "/", "foo-"), ("bar.example.com", "/", "bar-")]
    for host, path, backend in routes:
        status, body, _ = eventually(lambda: host_get(addr, 80, host=host, path=path), 30)
        expect(body.startswith(HELLO_KUBIA + backend), f"http://{host}{path} -> {status} {body[:50]!r}")
    status, body, _ = host_get(addr, 80, host="other.example.com")
    expect(status == 404, f"an unknown host got {status}, not 404")
    status, body, cn = eventually(lambda: host_get(addr, 443, host="kubia.example.com", tls=True), 30)
    expect(body.startswith(HELLO_KUBIA + "kubia-"), f"https://kubia.example.com/ -> {status} {body[:50]!r}")
    expect(cn == "kubia.example.com", f"TLS certificate is for {cn!r}, not kubia.example.com (tls-secret)")
    return f"{addr}: routes by host and path, unknown host 404, HTTPS with CN=kubia.example.com"


def _ready(pod: dict) -> bool:
    return any(cd["type"] == "Ready" and cd["status"] == "True" for cd in pod["status"].get("conditions", []))


@check("F07+W28+F08 replicationcontroller/kubia, service/kubia-headless, kubia-all (kubia-readiness)")
def _readiness(c: Probe) -> str:
    ns = "kubia-readiness"
    pods = eventually(lambda: _all_scheduled(c, ns), 120)
    target = pods[0]["metadata"]["name"]
    restarts = pods[0]["status"]["containerStatuses"][0]["restartCount"]
    ip = pods[0]["status"]["podIP"]

    def in_endpoints(ready: bool) -> None:
        pod = c.pod(ns, target)
        ep = c.json("get", "endpoints", "-n", ns, "kubia-headless")
        ready_ips = {a["ip"] for s in ep.get("subsets", []) for a in s.get("addresses", [])}
        expect(_ready(pod) == ready and (ip in ready_ips) == ready,
               f"{target} ready={_ready(pod)}, in endpoints={ip in ready_ips}; want {ready}")
    c.exec(ns, target, "rm -f /var/ready")
    eventually(lambda: in_endpoints(False), 40)
    c.exec(ns, target, "touch /var/ready")
    eventually(lambda: in_endpoints(True), 40)
    now = c.pod(ns, target)["status"]["containerStatuses"][0]["restartCount"]
    expect(now == restarts, "the failing readiness probe restarted the container")

    ready_ips = {p["status"]["podIP"] for p in c.pods(ns, "app=kubia") if _ready(p)}
    all_ips = {p["status"]["podIP"] for p in c.pods(ns, "app=kubia")}
    headless = resolve(c, f"kubia-headless.{ns}.svc.cluster.local")
    expect(headless == ready_ips, f"kubia-headless A records {sorted(headless)} != ready pods {sorted(ready_ips)}")
    everyone = resolve(c, f"kubia-all.{ns}.svc.cluster.local")
    expect(everyone == all_ips, f"kubia-all A records {sorted(everyone)} != all pods {sorted(all_ips)}")
    return (f"{target} out of endpoints until /var/ready exists, never restarted; headless DNS returns the "
            f"{len(ready_ips)} ready pod IPs, kubia-all all {len(all_ips)}")


def _all_scheduled(c: Probe, ns: str) -> list[dict]:
    pods = [p for p in c.pods(ns, "app=kubia") if p["status"].get("podIP") and p["status"].get("containerStatuses")]
    expect(len(pods) == 3, f"{len(pods)} of 3 kubia pods running")
    return sorted(pods, key=lambda p: p["metadata"]["name"])


@check("W29 pod/test-pd")
def _w29(c: Probe) -> str:
    ready_pod(c, "default", "test-pd")
    expect(c.exec("default", "test-pd", "echo hi > /cache/verify && cat /cache/verify").strip() == "hi",
           "cannot write to the emptyDir /cache")
    return "emptyDir mounted at /cache and writable"


@check("W30 pod/test-pd-hostpath")
def _w30(c: Probe) -> str:
    ready_pod(c, "host-volumes", "test-pd-hostpath")
    c.exec("host-volumes", "test-pd-hostpath", "date > /test-pd/verify && test -s /test-pd/verify")
    return "hostPath /data (created on demand) mounted at /test-pd"


@check("W31 pod/test-webserver")
def _w31(c: Probe) -> str:
    ready_pod(c, "host-volumes", "test-webserver")
    c.exec("host-volumes", "test-webserver", "test -d /var/local/aaa && test -f /var/local/aaa/1.txt")
    return "DirectoryOrCreate and FileOrCreate hostPaths exist"


@check("W32 pvc/mongodb-pvc, pod/mongodb")
def _w32(c: Probe) -> str:
    ready_pod(c, "default", "mongodb", 180)
    phase = c.json("get", "pvc", "mongodb-pvc")["status"].get("phase")
    expect(phase == "Bound", f"claim is {phase}")
    c.exec("default", "mongodb", "test -s /data/db/starts")
    return "claim Bound from the default StorageClass, mounted at /data/db"


@check("W34 persistentvolume/pv0003, pvc/pvc-slow")
def _w34(c: Probe) -> str:
    pvc = eventually(lambda: _bound(c, "pvc-slow"), 60)
    expect(pvc["spec"].get("volumeName") == "pv0003", f"pvc-slow bound to {pvc['spec'].get('volumeName')}")
    return "pvc-slow Bound to pv0003"


def _bound(c: Probe, name: str) -> dict:
    pvc = c.json("get", "pvc", name)
    expect(pvc["status"].get("phase") == "Bound", f"claim {name} is {pvc['status'].get('phase')}")
    return pvc


@check("W35 storageclass/example-vol-default")
def _w35(c: Probe) -> str:
    sc = c.json("get", "storageclass", "example-vol-default")
    expect(sc["provisioner"] == "rancher.io/local-path", f"provisioner {sc['provisioner']}")
    return "uses the installed local-path provisioner"


@check("W59 persistentvolume/pv-a, pv-b, pv-c")
def _w59(c: Probe) -> str:
    phases = {n: c.json("get", "pv", n)["status"].get("phase") for n in ("pv-a", "pv-b", "pv-c")}
    expect(all(p in ("Available", "Bound") for p in phases.values()), f"phases {phases}")
    return f"phases {phases}"


@check("W37+W38 configmap/game-demo, pod/mypod-configmap")
def _w38(c: Probe) -> str:
    ready_pod(c, "default", "mypod-configmap")
    files = set(c.exec("default", "mypod-configmap", "ls /etc/foo").split())
    want = {"game.properties", "player_initial_lives", "ui_properties_file_name", "user-interface.properties"}
    expect(files == want, f"/etc/foo has {sorted(files)}")
    lives = c.exec("default", "mypod-configmap", "cat /etc/foo/player_initial_lives").strip()
    expect(lives == "3", f"player_initial_lives is {lives!r}")
    return "each ConfigMap key is a file in /etc/foo"


@check("W39 pod/configmap-demo-pod")
def _w39(c: Probe) -> str:
    ready_pod(c, "default", "configmap-demo-pod")
    env = c.exec("default", "configmap-demo-pod", "env")
    for line in ("PLAYER_INITIAL_LIVES=3", "UI_PROPERTIES_FILE_NAME=user-interface.properties"):
        expect(line in env.splitlines(), f"env lacks {line}")
    files = set(c.exec("default", "configmap-demo-pod", "ls /config").split())
    expect(files == {"game.properties", "user-interface.properties"}, f"/config has {sorted(files)}")
    return "two keys as env vars, two items as files"


def _succeeded(c: Probe, ns: str, name: str, timeout: float = 120) -> None:
    def done() -> None:
        phase = c.pod(ns, name)["status"].get("phase")
        expect(phase == "Succeeded", f"pod {name} is {phase}, not Succeeded")
    eventually(done, timeout)


def _logs_of_finished(c: Probe, name: str) -> str:
    _succeeded(c, "default", name)
    return c.logs("default", name)


@check("W40+W42 pod/dapi-test-pod-envfrom, configmap/special-config")
def _w40(c: Probe) -> str:
    out = _logs_of_finished(c, "dapi-test-pod-envfrom").splitlines()
    expect("SPECIAL_LEVEL=very" in out and "SPECIAL_TYPE=charm" in out, "envFrom variables missing")
    return "every special-config key became an env var"


@check("F12 pod/envfrom-prefix")
def _f12(c: Probe) -> str:
    out = _logs_of_finished(c, "envfrom-prefix").splitlines()
    expect("CONFIG_SPECIAL_LEVEL=very" in out and "CONFIG_SPECIAL_TYPE=charm" in out, "prefixed variables missing")
    return "keys arrive with the CONFIG_ prefix"


@check("W41 pod/fortune-args-from-configmap")
def _w41(c: Probe) -> str:
    ready_pod(c, "default", "fortune-args-from-configmap")
    first = c.logs("default", "fortune-args-from-configmap").splitlines()[:1]
    expect(first and "every 25 seconds" in first[0], f"first log line {first}")
    return "sleep-interval 25 reached the args through $(INTERVAL)"


@check("W43 pod/dapi-test-pod-ls")
def _w43(c: Probe) -> str:
    out = set(_logs_of_finished(c, "dapi-test-pod-ls").split())
    expect({"SPECIAL_LEVEL", "SPECIAL_TYPE"} <= out, f"listing was {sorted(out)}")
    return "each key is a file in /etc/config"


@check("W44 pod/dapi-test-pod-keys")
def _w44(c: Probe) -> str:
    out = _logs_of_finished(c, "dapi-test-pod-keys").strip()
    expect(out == "very", f"/etc/config/keys held {out!r}")
    return "only SPECIAL_LEVEL, as file 'keys'"


@check("F13 pod/subpath-demo")
def _f13(c: Probe) -> str:
    ready_pod(c, "default", "subpath-demo")
    expect(c.exec("default", "subpath-demo", "cat /etc/someconfig.conf").strip() == "very", "subPath file wrong")
    expect("passwd" in c.exec("default", "subpath-demo", "ls /etc").split(), "the mount hid the rest of /etc")
    return "one file added to /etc, the rest untouched"


@check("F14 configmap/fortune-config, pod/fortune-configmap-volume")
def _f14(c: Probe) -> str:
    ready_pod(c, "default", "fortune-configmap-volume")
    listing = c.exec("default", "fortune-configmap-volume", "ls -lL /etc/nginx/conf.d", "web-server")
    modes = {line.split()[0] for line in listing.splitlines() if line.startswith("-")}
    expect(modes == {"-rw-rw----"}, f"file modes {modes}, expected -rw-rw---- (0660)")
    return "configMap files carry defaultMode 0660"


@check("W45 pod/mypod-secret")
def _w45(c: Probe) -> str:
    ready_pod(c, "default", "mypod-secret")
    # `ls` without -A: the kubelet's atomic writer keeps its ..data entries even for an absent Secret
    # (and this busybox's ls -A crashes on them).
    files = c.exec("default", "mypod-secret", "ls /etc/foo").split()
    expect(files == [], f"/etc/foo holds {files}, yet Secret mysecret does not exist")
    expect(c.run("get", "secret", "mysecret", check=False).strip() == "", "Secret mysecret exists after all")
    return "starts without Secret mysecret (optional), empty /etc/foo"


@check("W46 secret/secret-basic-auth")
def _w46(c: Probe) -> str:
    secret = c.json("get", "secret", "secret-basic-auth")
    expect("stringData" not in secret, "stringData came back")
    password = base64.b64decode(secret["data"]["password"]).decode()
    expect(password == "t0p-Secret", "password does not decode to t0p-Secret")
    return "stringData stored base64 under data"


@check("W47 secret/secret-ssh-auth")
def _w47(c: Probe) -> str:
    secret = c.json("get", "secret", "secret-ssh-auth")
    expect(secret["type"] == "kubernetes.io/ssh-auth", f"type {secret['type']}")
    key = base64.b64decode(secret["data"]["ssh-privatekey"]).decode()
    expect(key.startswith("-----BEGIN RSA PRIVATE KEY-----"), "ssh-privatekey is not a PEM key")
    return "ssh-auth Secret with a generated PEM key"


@check("W48 secret/ssh-key-secret, pod/secret-test-pod")
def _w48(c: Probe) -> str:
    ready_pod(c, "default", "secret-test-pod")
    files = set(c.exec("default", "secret-test-pod", "ls /etc/secret-volume").split())
    expect(files == {"ssh-privatekey", "ssh-publickey"}, f"/etc/secret-volume has {sorted(files)}")
    return "secret keys are read-only files in /etc/secret-volume"


@check("W49 secret/dotfile-secret, pod/secret-dotfiles-pod")
def _w49(c: Probe) -> str:
    out = _logs_of_finished(c, "secret-dotfiles-pod")
    expect(".secret-file" in out, "no .secret-file in the listing")
    return "the dot-key is a hidden file; pod Completed"


@check("W50+F15 secret/fortune-https, pod/fortune-https")
def _w50(c: Probe) -> str:
    ready_pod(c, "default", "fortune-https")
    env = c.exec("default", "fortune-https", "env", "html-generator").splitlines()
    expect("FOO_SECRET=bar" in env, "FOO_SECRET is not set from the Secret")
    mounts = c.exec("default", "fortune-https", "mount", "web-server")
    expect(any("/etc/nginx/certs" in m and "tmpfs" in m for m in mounts.splitlines()), "certs are not on tmpfs")
    c.exec("default", "fortune-https", "test -s /etc/nginx/certs/https.cert", "web-server")
    # busybox wget is no TLS client and pod IPs are not routed to this host: handshake through port-forward.
    with c.port_forward("default", "pod/fortune-https", 443) as port:
        status, body, cn = eventually(lambda: host_get("127.0.0.1", port, host="www.kubia-example.com",
                                                         tls=True), 15)
    expect(cn == "www.kubia-example.com", f"certificate CN {cn!r}, not www.kubia-example.com")
    expect(status == 200 and body.strip(), f"HTTPS answered {status} {body[:60]!r}")
    return f"FOO_SECRET from the Secret, certificates on tmpfs, HTTPS 200 with CN={cn}"


@check("W52 pod/downward-env")
def _w52(c: Probe) -> str:
    pod = ready_pod(c, "default", "downward-env")
    env = dict(line.split("=", 1) for line in c.exec("default", "downward-env", "env").splitlines() if "=" in line)
    want = {"POD_NAME": "downward-env", "POD_NAMESPACE": "default", "POD_IP": pod["status"]["podIP"],
            "NODE_NAME": pod["spec"]["nodeName"], "SERVICE_ACCOUNT": "default",
            "CONTAINER_CPU_REQUEST_MILLICORES": "15", "CONTAINER_MEMORY_LIMIT_KIBIBYTES": "16384"}
    wrong = {k: env.get(k) for k, v in want.items() if env.get(k) != v}
    expect(not wrong, f"wrong values {wrong}")
    return "name, namespace, IP, node, service account and resources as env vars"


@check("W53+F16 pod/downward")
def _w53(c: Probe) -> str:
    ready_pod(c, "default", "downward")
    read = lambda f: c.exec("default", "downward", f"cat /etc/downward/{f}")
    expect(read("podName").strip() == "downward", "podName")
    expect('foo="bar"' in read("labels"), "labels file lacks foo=\"bar\"")
    expect('key1="value1"' in read("annotations"), "annotations file lacks key1")
    expect(read("containerCpuRequestMilliCores").strip() == "15", "cpu request file is not 15")
    return "podName, podNamespace, labels, annotations and cpu request as files"
