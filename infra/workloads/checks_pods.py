"""Behaviour checks of the samples that run things: namespaces, pods, controllers, jobs and statefulsets (the
notes' groups of the same names). They register with verify.check; verify.py says what they change.
"""
from __future__ import annotations

import time
from pathlib import Path

from infra.workloads.manifests import load_sources
from infra.workloads.verify import (HELLO_KUBIA, WGET, Probe, check, eventually, expect, host_get, ready_pod,
                                    resolve)

# The repository's own workloads/ (the namespaces check lists the ones it declares).
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "workloads"


@check("NS namespaces")
def _namespaces(c: Probe) -> str:
    names = [m.obj["metadata"]["name"] for m in load_sources(SAMPLES_DIR) if m.obj["kind"] == "Namespace"]
    for ns in names:
        phase = c.json("get", "ns", ns)["status"]["phase"]
        expect(phase == "Active", f"namespace {ns} is {phase}")
    return f"{len(names)} namespaces Active"


@check("W10 namespace/custom-namespace")
def _w10(c: Probe) -> str:
    expect(c.json("get", "ns", "custom-namespace")["status"]["phase"] == "Active", "custom-namespace not Active")
    return "Active"


@check("W01 pod/nginx")
def _w01(c: Probe) -> str:
    ip = ready_pod(c, "default", "nginx")["status"]["podIP"]
    expect("Welcome to nginx!" in c.wget(f"http://{ip}/"), "no nginx welcome page on :80")
    return f"serves the welcome page at {ip}:80"


@check("W02 replicaset/nginx", lane="default-rs")
def _w02(c: Probe) -> str:
    return _replaced(c, "default", "tier=backend", 3)


@check("W11 replicaset/kubia", lane="kubia")
def _w11(c: Probe) -> str:
    return _replaced(c, "kubia", "app=kubia", 3)


def _replaced(c: Probe, ns: str, selector: str, replicas: int) -> str:
    """Delete one pod of a ReplicaSet; a new one takes its place."""
    def ready_names() -> set[str]:
        pods = c.pods(ns, selector)
        ready = {p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp") is None and any(
            cond["type"] == "Ready" and cond["status"] == "True" for cond in p["status"].get("conditions", []))}
        expect(len(ready) == replicas, f"{len(ready)} of {replicas} pods ready ({selector})")
        return ready
    before = eventually(ready_names, 120)
    victim = sorted(before)[0]
    c.run("delete", "pod", "-n", ns, victim, "--wait=false")

    def replaced() -> set[str]:
        now = ready_names()
        expect(victim not in now and len(now - before) == 1, f"{victim} not replaced yet")
        return now
    after = eventually(replaced, 120)
    return f"deleted {victim}; {replicas} ready again with {sorted(after - before)[0]}"


@check("W03 pod/hello-pod")
def _w03(c: Probe) -> str:
    ip = ready_pod(c, "default", "hello-pod")["status"]["podIP"]
    for _ in range(3):
        expect("Hello Kubernetes!" in c.wget(f"http://{ip}:8000/"), "no 'Hello Kubernetes!' on :8000")
    restarts = c.pod("default", "hello-pod")["status"]["containerStatuses"][0]["restartCount"]
    expect(restarts == 0, f"container restarted {restarts} times after requests")
    return "answers 'Hello Kubernetes!' three times, no restarts"


@check("W05 deployment/lines-admin-nextjs-deployment")
def _w05(c: Probe) -> str:
    c.run("rollout", "status", "deploy/lines-admin-nextjs-deployment", "--timeout=180s", timeout=200)
    ready = c.json("get", "deploy", "lines-admin-nextjs-deployment")["status"].get("readyReplicas", 0)
    expect(ready == 2, f"{ready} of 2 replicas ready")
    return "rolled out, 2 ready replicas"


@check("W06 pod/lines-admin-nextjs")
def _w06(c: Probe) -> str:
    ip = ready_pod(c, "default", "lines-admin-nextjs")["status"]["podIP"]
    expect(c.wget(f"http://{ip}:8080/").strip() == "ok", "nothing answers 'ok' on :8080")
    return "httpd answers on :8080"


@check("W07 pod/lines-sample")
def _w07(c: Probe) -> str:
    ip = ready_pod(c, "default", "lines-sample")["status"]["podIP"]
    selected = c.run("get", "pods", "-l", "creation_method=manual,env=prod", "-o", "name").split()
    expect("pod/lines-sample" in selected, "label selector creation_method=manual,env=prod misses it")
    expect(HELLO_KUBIA + "lines-sample" in c.wget(f"http://{ip}:8080/"), "kubia app does not answer")
    return "selected by its labels and answers \"You've hit lines-sample\""


@check("W08 pod/hello-world")
def _w08(c: Probe) -> str:
    node = ready_pod(c, "default", "hello-world")["spec"]["nodeName"]
    labels = c.json("get", "node", node)["metadata"]["labels"]
    expect(labels.get("test") == "true", f"runs on {node}, which lacks test=true")
    return f"scheduled on {node}, labelled test=true"


@check("W12 daemonset/ssd-monitor")
def _w12(c: Probe) -> str:
    nodes = c.json("get", "nodes", "-l", "disk=ssd")["items"]
    expected = {n["metadata"]["name"] for n in nodes if n["spec"].get("unschedulable") is not True and not any(
        t.get("effect") in ("NoSchedule", "NoExecute") for t in n["spec"].get("taints") or [])}
    expect(bool(expected), "no schedulable node is labelled disk=ssd")

    def placed() -> set[str]:
        pods = [p for p in c.pods("default", "app=ssd-monitor") if p["status"].get("phase") == "Running"]
        on = sorted(p["spec"].get("nodeName") for p in pods)
        expect(sorted(expected) == on, f"pods on {on}, expected one on each of {sorted(expected)}")
        return set(on)
    eventually(placed, 90)
    expect("SSD OK" in c.logs("default", "daemonset/ssd-monitor"), "no 'SSD OK' in the log")
    return f"one pod on each disk=ssd node ({', '.join(sorted(expected))}), none elsewhere"


def _job_done(c: Probe, name: str, completions: int, timeout: int) -> None:
    c.run("wait", "--for=condition=complete", f"job/{name}", f"--timeout={timeout}s", timeout=timeout + 10)
    succeeded = c.json("get", "job", name)["status"].get("succeeded", 0)
    expect(succeeded == completions, f"{succeeded} of {completions} completions")


@check("W13 job/pi")
def _w13(c: Probe) -> str:
    _job_done(c, "pi", 1, 300)
    out = c.logs("default", "job/pi")
    # bignum's bpi(2000): 2000 significant digits, i.e. "3." and 1999 more, one line (-l adds the newline).
    expect(out.endswith("\n") and out.count("\n") == 1, f"log is not one line: {out[-40:]!r}")
    pi = out.rstrip("\n")
    expect(pi.startswith("3.14159265358979323846"), f"log starts {pi[:24]!r}, not 3.14159265358979323846")
    expect(pi.endswith("4780275901"), f"log ends {pi[-12:]!r}, not ...4780275901")
    expect(len(pi) == 2001, f"{len(pi)} characters of pi, expected 2001")
    return "complete; log is 3.14159...4780275901 (2001 characters)"


@check("W14 job/multi-completion-batch-job")
def _w14(c: Probe) -> str:
    _job_done(c, "multi-completion-batch-job", 5, 420)
    return "5/5 completions"


@check("W15 job/multi-completion-parallel-batch-job")
def _w15(c: Probe) -> str:
    _job_done(c, "multi-completion-parallel-batch-job", 5, 420)
    return "5/5 completions (parallelism 2)"


@check("W16 cronjob/hello")
def _w16(c: Probe) -> str:
    def finished_job() -> str:
        jobs = [j for j in c.json("get", "jobs")["items"]
                if any(o.get("name") == "hello" for o in j["metadata"].get("ownerReferences", []))
                and j["status"].get("succeeded")]
        expect(bool(jobs), "no finished job from cronjob/hello yet")
        return max(jobs, key=lambda j: j["metadata"]["creationTimestamp"])["metadata"]["name"]
    job = eventually(finished_job, 150, 5)
    out = c.logs("default", f"job/{job}")
    expect("Hello from the Kubernetes cluster" in out, f"job {job} printed {out!r:.80}")
    return f"job {job} printed its date and the greeting"


@check("W55 replicationcontroller/kubia-v1, service/kubia (kubia-rc)")
def _w55(c: Probe) -> str:
    ready = c.json("get", "rc", "-n", "kubia-rc", "kubia-v1")["status"].get("readyReplicas", 0)
    expect(ready == 3, f"{ready} of 3 replicas ready")
    ip = c.lb_address("kubia-rc", "kubia")
    _, body, _ = eventually(lambda: host_get(ip, 80), 30)
    expect("This is v1 running in pod kubia-v1-" in body, f"{ip} answered {body[:60]!r}")
    return f"3 ready; {ip} answers \"{body.strip()}\""


@check("W27 pod/goproxy")
def _w27(c: Probe) -> str:
    pod = ready_pod(c, "default", "goproxy")
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    expect(restarts == 0, f"liveness probe restarted it {restarts} times")
    return "ready through its TCP probe, no restarts"


@check("W36 pod/fortune2s")
def _w36(c: Probe) -> str:
    ip = ready_pod(c, "default", "fortune2s")["status"]["podIP"]
    first = c.logs("default", "fortune2s", "html-generator").splitlines()[:1]
    expect(first and "every 2 seconds" in first[0], f"first log line {first}")
    eventually(lambda: _nonempty(c.wget(f"http://{ip}/"), "nginx serves an empty page"), 20)
    return "generator runs every 2 s (args), nginx serves the fortune"


def _nonempty(text: str, reason: str) -> str:
    expect(bool(text.strip()), reason)
    return text


@check("W54 rolebinding/default-sa-view, pod/curl-with-ambassador")
def _w54(c: Probe) -> str:
    ready_pod(c, "default", "curl-with-ambassador")
    out = eventually(lambda: c.exec("default", "curl-with-ambassador",
                                     "curl -s localhost:8001/api/v1/namespaces/default/pods", "main"), 30)
    expect('"PodList"' in out, f"ambassador answered {out[:80]!r}")
    return "main container lists pods through the ambassador's kubectl proxy"


@check("W56 replicaset/nginx (nginx-matchexpressions)")
def _w56(c: Probe) -> str:
    def ready() -> int:
        n = c.json("get", "rs", "-n", "nginx-matchexpressions", "nginx")["status"].get("readyReplicas", 0)
        expect(n == 3, f"{n} of 3 ready")
        return n
    eventually(ready, 120)
    names = c.run("get", "pods", "-n", "nginx-matchexpressions", "-l",
                  "app in (nginx,frontend),environment notin (production)", "-o", "name").split()
    expect(len(names) == 3, f"set-based selector finds {len(names)} pods")
    return "3 pods, found by the set-based selector"


@check("F01 replicaset/kubia (kubia-matchexpressions)")
def _f01(c: Probe) -> str:
    rs = c.json("get", "rs", "-n", "kubia-matchexpressions", "kubia")
    expect(rs["status"].get("readyReplicas", 0) == 3, "not 3 ready replicas")
    return "3 replicas via matchExpressions app In (kubia)"


@check("W57+F17 deployment/kubia (kubia-deploy)")
def _w57(c: Probe) -> str:
    ns, d = "kubia-deploy", "deployment/kubia"
    status = lambda: c.run("rollout", "status", "-n", ns, d, "--timeout=180s", timeout=200)

    def images_now() -> set[str]:
        return {p["spec"]["containers"][0]["image"] for p in c.pods(ns, "app=kubia")
                if p["metadata"].get("deletionTimestamp") is None}

    def only(image: str) -> None:
        eventually(lambda: expect(images_now() == {image}, f"images {images_now()}, want {image}"), 60)
    try:
        status()
        only("luksa/kubia:v1")
        c.run("set", "image", "-n", ns, d, "nodejs=luksa/kubia:v2")
        status()
        only("luksa/kubia:v2")
        c.run("rollout", "undo", "-n", ns, d)
        status()
        only("luksa/kubia:v1")
        c.run("rollout", "pause", "-n", ns, d)
        c.run("set", "image", "-n", ns, d, "nodejs=luksa/kubia:v4")
        # Paused, the controller still records that it has seen the new template (observedGeneration) but
        # scales up no ReplicaSet for it (an earlier verify's v4 one stays in the history at 0): once it has,
        # nothing may have rolled.
        eventually(lambda: expect(_observed(c, ns, d), "the controller has not seen the v4 template yet"), 60, 0.5)
        held = [rs["metadata"]["name"] for rs in c.json("get", "rs", "-n", ns, "-l", "app=kubia")["items"]
                if rs["spec"]["template"]["spec"]["containers"][0]["image"] == "luksa/kubia:v4"
                and rs["spec"].get("replicas")]
        expect(not held, f"paused deployment scaled up ReplicaSet {held} for v4")
        expect(images_now() == {"luksa/kubia:v1"}, f"paused deployment rolled anyway: {images_now()}")
        c.run("rollout", "resume", "-n", ns, d)
        status()
        only("luksa/kubia:v4")
    finally:   # leave it as declared, so Pulumi sees no drift
        c.run("rollout", "resume", "-n", ns, d, check=False)
        c.run("set", "image", "-n", ns, d, "nodejs=luksa/kubia:v1", check=False)
    status()
    return "v1 -> v2, undo -> v1, paused v4 held back, resumed -> v4; restored to v1"


def _observed(c: Probe, ns: str, target: str) -> bool:
    """Whether the controller has processed the object's latest spec."""
    obj = c.json("get", "-n", ns, target)
    return obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]


@check("W58 service/nginx, statefulset/web (web)")
def _w58(c: Probe) -> str:
    ns = "web"
    c.run("rollout", "status", "-n", ns, "statefulset/web", "--timeout=300s", timeout=320)
    c.exec(ns, "web-0", "hostname > /usr/share/nginx/html/index.html")
    claim = c.json("get", "pvc", "-n", ns, "www-web-0")["metadata"]["uid"]
    web0 = c.pod(ns, "web-0")["status"]["podIP"]
    expect(resolve(c, f"web-0.nginx.{ns}.svc.cluster.local") == {web0}, "web-0.nginx does not resolve to web-0")
    c.run("delete", "pod", "-n", ns, "web-0", "--wait=true", timeout=90)
    eventually(lambda: c.wait_ready(ns, "pod/web-0", 30), 180)
    expect(c.exec(ns, "web-0", "cat /usr/share/nginx/html/index.html").strip() == "web-0", "page lost")
    expect(c.json("get", "pvc", "-n", ns, "www-web-0")["metadata"]["uid"] == claim, "claim www-web-0 replaced")
    return "web-0 came back under its name with the same claim and its page; DNS web-0.nginx resolves"


@check("W60+W61 service/kubia, statefulset/kubia (kubia-sts)")
def _w61(c: Probe) -> str:
    ns = "kubia-sts"
    c.run("rollout", "status", "-n", ns, "statefulset/kubia", "--timeout=300s", timeout=320)
    note = f"verify {int(time.time())}"
    url = f"http://kubia-0.kubia.{ns}.svc.cluster.local:8080/"
    out = c.sh(f"{WGET} --post-data='{note}' {url}")
    expect("Data stored on pod kubia-0" in out, f"POST answered {out[:60]!r}")
    # kubia-pet does not exit on SIGTERM, so the default 30 s grace period was most of this check. A short one
    # is still a graceful delete (unlike --force): the StatefulSet makes kubia-0 again only once the kubelet
    # has reported the old one's container gone, so two pods never hold the claim at once.
    c.run("delete", "pod", "-n", ns, "kubia-0", "--grace-period=1", "--wait=true", timeout=90)
    eventually(lambda: c.wait_ready(ns, "pod/kubia-0", 30), 180)
    got = eventually(lambda: c.wget(url), 60)
    expect(HELLO_KUBIA + "kubia-0" in got and note in got, f"after restart: {got[:100]!r}")
    return "kubia-0 returned under its name and still holds the data posted before"


@check("W62+W63 pod/myapp-pod, replicaset/myapp-replica", lane="default-rs")
def _w63(c: Probe) -> str:
    owners = [o["name"] for o in c.pod("default", "myapp-pod")["metadata"].get("ownerReferences", [])]
    expect(owners == ["myapp-replica"], f"myapp-pod owners {owners}")
    ready = c.json("get", "rs", "myapp-replica")["status"].get("readyReplicas", 0)
    expect(ready == 3, f"{ready} of 3 ready")
    return "the ReplicaSet adopted myapp-pod and keeps 3"


@check("W64 deployment/deploy")
def _w64(c: Probe) -> str:
    c.run("rollout", "status", "deploy/deploy", "--timeout=180s", timeout=200)
    return "rolled out, 3 replicas"
