"""How an image family is built: the recipes that fill its layer, and umoci turning that layer into an OCI archive.

Everything here decides what an image holds, so this file (with debpkg.py and standin/) is hashed into every
family's cache key; images.py, which finds, caches and lists the builds, is not: editing it rebuilds nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra import debian

from .debpkg import add_shared_libs, prune, run, unpack_debs, unpack_source
from .store import ArtifactError, sha256_file

STANDIN_SRC = Path(__file__).with_name("standin")
ARCHIVE = "image.oci.tar"
MANIFEST = "MANIFEST.json"
BUILD_TAG = "pilothouse-build"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Host tools -> the Debian package that provides them.
HOST_PACKAGES = {"umoci": "umoci", "skopeo": "skopeo", "runc": "runc",
                 "docker-registry": "docker-registry", "gcc": "gcc", "dpkg-deb": "dpkg",
                 "dpkg-source": "dpkg-dev", "make": "make"}


def ensure_host_packages(*tools: str) -> None:
    """Install the Debian packages behind `tools` (apt-get, only when one is missing)."""
    debian.ensure([HOST_PACKAGES[t] for t in tools], ArtifactError)


# ---- recipes: each fills `layer` (the family's new layer) --------------------------------------------

@dataclass
class Context:
    name: str
    family: dict
    spec: dict
    work: Path
    artifact: Path | None = None
    log: Callable[[str], None] = print


def recipe_pause(ctx: Context, layer: Path) -> None:
    ensure_host_packages("gcc")
    version = ctx.family["kubernetes"]
    env = dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local")
    info = json.loads(run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
                          f"fetching the Kubernetes {version} source for pause", cwd=ctx.work, env=env))
    source = Path(info["Dir"]) / "build" / "pause"
    tag = next((line.split("=", 1)[1].strip() for line in (source / "Makefile").read_text().splitlines()
                if line.startswith("TAG ?=")), None)
    if tag != ctx.family["version"]:
        raise ArtifactError(f"Kubernetes {version} builds pause {tag}, but lock.yaml `images:` pins "
                            f"{ctx.family['version']}: set the pause family's version (and ref) to {tag}")
    # The Makefile's flags, with the Kubernetes version standing in for its `git describe`.
    run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{tag}-{version}",
         "-o", str(layer / "pause"), str(source / "linux" / "pause.c")], "compiling pause.c")
    run(["strip", str(layer / "pause")], "stripping pause")


def compile_busybox(source: dict, work: Path, log) -> Path:
    """busybox built from the pinned Debian source package, with Debian's configuration for busybox-static
    plus the options in `source.enable`; the path of the static binary."""
    ensure_host_packages("dpkg-source", "make", "gcc")
    tree = unpack_source(source["package"], source["version"], work)
    config = tree / ".config"
    config.write_text((tree / "debian" / "config" / "os" / "linux").read_text()
                      + (tree / "debian" / "config" / "pkg" / source["config"]).read_text())
    text = config.read_text()
    for option in source.get("enable", []):
        unset = f"# CONFIG_{option} is not set"
        if unset not in text:
            raise ArtifactError(f"busybox {source['version']}: Debian's {source['config']} configuration has no "
                                f"`{unset}` line; remove {option} from the busybox family's `source.enable`")
        text = text.replace(unset, f"CONFIG_{option}=y")
    config.write_text(text)
    # Fixed build stamps, so the binary does not change with the day it was built.
    env = dict(os.environ, KCONFIG_NOTIMESTAMP="1", SOURCE_DATE_EPOCH="0")
    run(["make", "oldconfig"], "configuring busybox", cwd=tree, env=env, input="\n" * 200)
    started = time.monotonic()
    extra = f"Debian {source['version']} +{'+'.join(source.get('enable', []))}"
    run(["make", f"-j{os.cpu_count() or 1}", "busybox", f"BB_EXTRA_VERSION={extra}"],
        "compiling busybox", cwd=tree, env=env)
    log(f"  busybox: compiled in {time.monotonic() - started:.0f}s")
    return tree / "busybox"


def recipe_busybox(ctx: Context, layer: Path) -> None:
    busybox = layer / "bin" / "busybox"
    busybox.parent.mkdir(parents=True)
    shutil.copy2(compile_busybox(ctx.family["source"], ctx.work, ctx.log), busybox)
    for applet in run([str(busybox), "--list-full"], "listing busybox applets").split():
        link = layer / applet
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/bin/busybox", link)
    (layer / "etc").mkdir(exist_ok=True)
    # Accounts the images' processes run as: nginx (101) and www-data like the official images,
    # nobody for the pause-like 65534/65535 users.
    (layer / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n"
        "nginx:x:101:101:nginx:/nonexistent:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (layer / "etc" / "group").write_text("root:x:0:\nwww-data:x:33:\nnginx:x:101:\nnogroup:x:65534:\n")
    for d in ("root", "tmp", "var/tmp", "home", "run", "proc", "sys", "dev"):
        (layer / d).mkdir(parents=True, exist_ok=True)
    os.chmod(layer / "tmp", 0o1777)
    os.chmod(layer / "var" / "tmp", 0o1777)


def _debs_and_libs(ctx: Context, layer: Path) -> None:
    unpack_debs(ctx.family.get("debs", []), ctx.spec["debian"], layer)
    prune(layer)
    if ctx.family.get("libdebs"):
        sysroot = ctx.work / "sysroot"
        unpack_debs(ctx.family["libdebs"], ctx.spec["debian"], sysroot)
        add_shared_libs(layer, sysroot)


def recipe_debs(ctx: Context, layer: Path) -> None:
    """Debian's own programs, as packaged, with the shared libraries they load."""
    _debs_and_libs(ctx, layer)


def recipe_fortune(ctx: Context, layer: Path) -> None:
    _debs_and_libs(ctx, layer)
    (layer / "bin").mkdir(exist_ok=True)
    shutil.copy2(STANDIN_SRC / "fortuneloop.sh", layer / "bin" / "fortuneloop.sh")


NGINX_CONF = """\
# Laid out like the official nginx image: server blocks live in conf.d/*.conf.
user  nginx;
worker_processes  auto;
error_log  /var/log/nginx/error.log notice;
pid        /run/nginx.pid;

events {
    worker_connections  1024;
}

http {
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;
    access_log    /var/log/nginx/access.log;
    sendfile      on;
    keepalive_timeout  65;
    include /etc/nginx/conf.d/*.conf;
}
"""

NGINX_DEFAULT_SERVER = """\
server {
    listen       80;
    listen  [::]:80;
    server_name  localhost;

    location / {
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }

    error_page   500 502 503 504  /50x.html;
    location = /50x.html {
        root   /usr/share/nginx/html;
    }
}
"""

NGINX_WELCOME = """\
<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
<p><em>Served by pilothouse's local nginx image (Debian's nginx package).</em></p>
</body>
</html>
"""


def recipe_nginx(ctx: Context, layer: Path) -> None:
    _debs_and_libs(ctx, layer)
    etc = layer / "etc" / "nginx"
    for debian_only in ("sites-available", "sites-enabled", "modules-available", "modules-enabled", "snippets"):
        shutil.rmtree(etc / debian_only, ignore_errors=True)
    (etc / "nginx.conf").write_text(NGINX_CONF)
    (etc / "conf.d").mkdir(exist_ok=True)
    (etc / "conf.d" / "default.conf").write_text(NGINX_DEFAULT_SERVER)
    html = layer / "usr" / "share" / "nginx" / "html"
    (html / "index.html").write_text(NGINX_WELCOME)
    (html / "50x.html").write_text("<!DOCTYPE html>\n<html><body><h1>An error occurred.</h1></body></html>\n")
    # As in the official image, logs go to the container's stdout/stderr.
    logs = layer / "var" / "log" / "nginx"
    logs.mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/stdout", logs / "access.log")
    os.symlink("/dev/stderr", logs / "error.log")
    for d in ("var/lib/nginx", "var/cache/nginx", "run", "var/lock"):
        (layer / d).mkdir(parents=True, exist_ok=True)


def recipe_perl(ctx: Context, layer: Path) -> None:
    _debs_and_libs(ctx, layer)
    for pod in list(layer.rglob("*.pod")):  # documentation, never loaded
        pod.unlink()


def go_build_standin(out: Path) -> None:
    if shutil.which("go") is None:
        raise ArtifactError("the stand-in images need a Go toolchain: install Go >= 1.24 (`apt-get install golang`)")
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-buildvcs=false")
    run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), "."],
        "compiling the Go stand-in", cwd=STANDIN_SRC, env=env)


def ca_bundle(layer: Path) -> None:
    """/etc/ssl/certs/ca-certificates.crt from the unpacked ca-certificates package: every certificate it
    ships, which is what its update-ca-certificates (not run by an unpack) writes by default."""
    certs = sorted((layer / "usr" / "share" / "ca-certificates").rglob("*.crt"))
    if not certs:
        raise ArtifactError("no certificates under usr/share/ca-certificates: add ca-certificates to the family's debs")
    bundle = layer / "etc" / "ssl" / "certs" / "ca-certificates.crt"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_text("".join(c.read_text() for c in certs))


def recipe_standin(ctx: Context, layer: Path) -> None:
    _debs_and_libs(ctx, layer)  # Debian's curl and the libraries it loads, as the images the notes curl from hold
    ca_bundle(layer)
    go_build_standin(layer / "standin")
    (layer / "bin").mkdir(exist_ok=True)
    # The notes `exec ... bash`; ash answers. A script, not a link: busybox has no applet called bash.
    (layer / "bin" / "bash").write_text('#!/bin/sh\nexec /bin/sh "$@"\n')
    os.chmod(layer / "bin" / "bash", 0o755)
    (layer / "var" / "data").mkdir(parents=True)


def recipe_kubectl_proxy(ctx: Context, layer: Path) -> None:
    shutil.copy2(ctx.artifact, layer / "kubectl")
    shutil.copy2(STANDIN_SRC / "kubectl-proxy.sh", layer / "kubectl-proxy.sh")


def recipe_artifact(ctx: Context, layer: Path) -> None:
    """An image holding one static binary from lock.yaml, at /<its file name>."""
    shutil.copy2(ctx.artifact, layer / ctx.artifact.name)


RECIPES = {"pause": recipe_pause, "busybox": recipe_busybox, "debs": recipe_debs, "fortune": recipe_fortune,
           "nginx": recipe_nginx, "perl": recipe_perl, "standin": recipe_standin,
           "kubectl-proxy": recipe_kubectl_proxy, "artifact": recipe_artifact}


def _umoci(*args: str) -> str:
    return run(["umoci", *args], f"umoci {args[0]}")


def _config_args(config: dict) -> list[str]:
    args = ["--clear=config.entrypoint", "--clear=config.cmd", "--clear=config.env",
            "--clear=config.exposedports", "--os=linux", "--architecture=amd64",
            f"--config.env={PATH_ENV}"]
    args += [f"--config.entrypoint={a}" for a in config.get("entrypoint", [])]
    args += [f"--config.cmd={a}" for a in config.get("cmd", [])]
    args += [f"--config.env={e}" for e in config.get("env", [])]
    args += [f"--config.exposedports={p}" for p in config.get("ports", [])]
    args.append(f"--config.workingdir={config.get('workdir', '/')}")
    args.append(f"--config.user={config.get('user', '0:0')}")
    if "stop_signal" in config:
        args.append(f"--config.stopsignal={config['stop_signal']}")
    return args


def build_family(name: str, spec: dict, final: Path, base_archive: Path | None, base_tags: list[str],
                 artifact: Path | None, log=print) -> None:
    """Build the family `name` into the directory `final` (an archive and its MANIFEST), atomically: on any
    failure nothing is left. A family with a base starts from the base's archive, whose tags are `base_tags`."""
    family = spec["families"][name]
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        layout, layer, work = staging / "layout", staging / "layer", staging / "work"
        layer.mkdir()
        work.mkdir()
        if base_archive:
            # Start from the base archive's layout so its layer blob is reused byte for byte.
            with tarfile.open(base_archive) as tar:
                tar.extractall(layout, filter="tar")
            _umoci("tag", "--image", f"{layout}:{base_tags[0]}", BUILD_TAG)
            for tag in base_tags:
                _umoci("rm", "--image", f"{layout}:{tag}")
        else:
            _umoci("init", "--layout", str(layout))
            _umoci("new", "--image", f"{layout}:{BUILD_TAG}")
        RECIPES[family["recipe"]](Context(name, family, spec, work, artifact, log), layer)
        _umoci("insert", "--image", f"{layout}:{BUILD_TAG}", str(layer), "/")
        for tag, config in family["tags"].items():
            _umoci("config", "--image", f"{layout}:{BUILD_TAG}", f"--tag={tag}",
                   f"--history.created_by=pilothouse image_recipes.py: {name}/{tag}", *_config_args(config))
        _umoci("rm", "--image", f"{layout}:{BUILD_TAG}")
        _umoci("gc", "--layout", str(layout))
        index = json.loads((layout / "index.json").read_text())
        digests = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
        with tarfile.open(staging / ARCHIVE, "w") as tar:
            for entry in sorted(layout.iterdir()):
                tar.add(entry, arcname=entry.name)
        tags = [{"tag": t, "digest": digests[t], "refs": c["refs"], "standin": c.get("standin")}
                for t, c in family["tags"].items()]
        for leftover in (layout, layer, work):
            shutil.rmtree(leftover)
        (staging / MANIFEST).write_text(json.dumps(
            {"version": family["version"], "files": {ARCHIVE: sha256_file(staging / ARCHIVE)}, "tags": tags},
            indent=2))
        if final.exists():  # a leftover without a manifest from an interrupted run
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
