"""Compile pinned Go programs from the Go module proxy.

Each build happens in a throwaway wrapper module that requires the upstream module at its pinned version.
Upstream `replace` lines (local staging paths in Kubernetes, relative paths in etcd) only apply to a
module built as the main module, so the wrapper restates them with published versions.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .store import ArtifactError


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        if "unknown revision" in tail or "invalid version" in tail or "no matching versions" in tail:
            raise ArtifactError(f"{what}: the pinned version does not exist on the Go module proxy. "
                                f"Fix the version in infra/artifacts/lock.yaml.\n{tail}")
        raise ArtifactError(f"{what} failed ({' '.join(cmd[:3])} ...):\n{tail}")


def go_env(spec: dict) -> dict[str, str]:
    if shutil.which("go") is None:
        raise ArtifactError("no Go toolchain on PATH: install Go >= 1.24 (e.g. `apt-get install golang`), "
                            "or set `source: download` in infra/artifacts/lock.yaml on a machine with internet.")
    # -trimpath in GOFLAGS, not on the build command: the `go run` inside a `go generate` then compiles with the
    # same flags as the build, so the build reuses those packages (pulumi-kubernetes' generator compiled 630 of
    # them a second time, 66 CPU-seconds).
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod -buildvcs=false -trimpath", GOTOOLCHAIN="local")
    if spec.get("nosumdb"):
        env["GONOSUMDB"] = ",".join(spec["nosumdb"])
    return env


def ldflags(spec: dict) -> str:
    """Strip debug info and set the version variables the lock names (`stamps`), so each binary
    reports its real version instead of v0.0.0 or "dev"."""
    flags = ["-s", "-w"]
    for pkg, stamps in spec.get("stamps", {}).items():
        for var, value in stamps.items():
            flags.append(f"-X {pkg}.{var}={expand(value, spec)}")
    return " ".join(flags)


def expand(template: str, spec: dict) -> str:
    version = spec["version"]
    major, minor = version.lstrip("v").split(".")[:2]
    return template.format(version=version, major=major, minor=minor, release=spec.get("release", version))


def write_wrapper(workdir: Path, name: str, spec: dict) -> None:
    version = spec["version"]
    lines = [f"module pilothouse.local/build/{name}", "", "go 1.24", "", "require ("]
    for module in [spec["module"], *spec.get("extra_modules", [])]:
        lines.append(f"\t{module} {version}")
    lines.append(")")
    replaces = dict(spec.get("replace", {}))
    if "staging" in spec:
        staging_version = "v0." + version.lstrip("v").split(".", 1)[1]
        replaces.update({f"k8s.io/{m}": f"k8s.io/{m} {staging_version}" for m in spec["staging"]})
    if replaces:
        lines += ["", "replace ("]
        lines += [f"\t{old} => {new}" for old, new in replaces.items()]
        lines.append(")")
    (workdir / "go.mod").write_text("\n".join(lines) + "\n")


def _package(spec: dict, path: str) -> str:
    """`./x` is a package of the wrapper itself, `host/...` a full import path, else a path in the module."""
    return path if "." in path.split("/")[0] else f"{spec['module']}/{path}"


def _module_dir(module: str, version: str, work: Path, env: dict[str, str]) -> Path:
    proc = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=work,
                          env=env, capture_output=True, text=True)
    info = json.loads(proc.stdout or "{}")
    if "Dir" not in info:
        raise ArtifactError(f"{module}@{version} cannot be fetched: {info.get('Error', proc.stderr.strip())}. "
                            "Fix the version in infra/artifacts/lock.yaml.")
    return Path(info["Dir"])


def _copy_local_package(source: Path, target: Path) -> None:
    """Copy a main package into the wrapper so `go generate` can write the files it embeds."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file():
            shutil.copyfile(item, target / item.name)


def build(name: str, spec: dict, out: Path, log=print) -> None:
    env = go_env(spec)
    work = out.parent / (out.name + ".src")
    work.mkdir()
    try:
        write_wrapper(work, name, spec)
        # Fetch the pinned module first: an unknown version fails here with a message naming the pin.
        module_dir = _module_dir(spec["module"], spec["version"], work, env)
        started = time.monotonic()
        if "local_package" in spec:  # generate first: until it has run, the files the package embeds are missing
            _copy_local_package(module_dir / spec["local_package"], work / spec["local_package"])
            gen_env = dict(env, **{k: expand(v, spec) for k, v in spec.get("generate_env", {}).items()})
            _run(["go", "generate", f"./{spec['local_package']}"], work, gen_env, f"{name}: go generate")
        # Fetch only the modules holding packages the binaries import, for this platform. `go mod tidy` fetched
        # every module any build tag or OS could need: Traefik's took 205 s against 116 s from an empty module
        # cache.
        packages = [_package(spec, p) for p in spec["binaries"].values()]
        _run(["go", "list", "-deps", *packages], work, env, f"{name} {spec['version']}: resolving modules")
        flags = ldflags(spec)
        for binary, path in spec["binaries"].items():
            log(f"  {name}: compiling {binary} ({time.monotonic() - started:.0f}s)")
            _run(["go", "build", "-ldflags", flags,
                  "-o", str(out / binary), _package(spec, path)], work, env, f"building {binary}")
        for key, files in spec.get("module_files", {}).items():
            # `module@version` takes the files from another release of the module than the one built.
            module, _, version = key.partition("@")
            source = _module_dir(module, version or spec["version"], work, env)
            for name, rel in files.items():
                shutil.copyfile(source / rel, out / name)
                (out / name).chmod(0o755)
    finally:
        shutil.rmtree(work, ignore_errors=True)
