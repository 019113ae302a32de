"""The order and concurrency of `invoke artifacts`, with builds that only sleep."""
from __future__ import annotations

import threading
import time

import pytest

from infra.artifacts import buildplan, load_lock
from infra.artifacts.images import load_spec
from infra.artifacts.store import ArtifactError


def test_every_image_comes_after_its_base_and_the_artifact_it_wraps_and_the_longest_builds_first():
    lock, families = load_lock(), load_spec()["families"]
    steps = buildplan.plan(lock["go"], families, "bookworm")
    keys = [s.key for s in steps]
    assert sorted(keys) == sorted([f"go:{n}" for n in lock["go"]] + [f"image:{n}" for n in families]
                                  + ["rootfs:machine base"])
    assert keys[:3] == ["go:pulumi-kubernetes", "go:traefik", "go:kubernetes"]
    for step in steps:
        family = families.get(step.name, {}) if step.kind == "image" else {}
        if family.get("base"):
            assert f"image:{family['base']}" in step.after, step.key
        if "artifact" in family:
            assert f"go:{family['artifact']['name']}" in step.after, step.key
        assert all(keys.index(a) < keys.index(step.key) for a in step.after), step.key
    images = [s for s in steps if s.kind == "image"]
    assert all(prev.key in step.after for prev, step in zip(images, images[1:])), "the image lane is one at a time"


def test_another_kubernetes_release_starts_right_after_the_default_one():
    lock = load_lock()
    go = {**lock["go"], "kubernetes-v1.35.4": {**lock["go"]["kubernetes"], "version": "v1.35.4"}}
    keys = [s.key for s in buildplan.plan(go, {}, "bookworm") if s.kind == "go"]
    assert keys[:4] == ["go:pulumi-kubernetes", "go:traefik", "go:kubernetes", "go:kubernetes-v1.35.4"]


def sleepy(seconds: dict[str, float], fail: str = ""):
    """A build that sleeps; `state` records how many ran at once and when each started and ended."""
    state = {"now": 0, "most": 0, "start": {}, "end": {}}
    lock = threading.Lock()

    def build(step, log):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["start"][step.key] = time.monotonic()
        log(f"{step.name}: building")
        time.sleep(seconds.get(step.name, 0.05))
        with lock:
            state["now"] -= 1
            state["end"][step.key] = time.monotonic()
        if step.name == fail:
            raise ArtifactError(f"{step.name} broke")
        return step.name

    return build, state


def test_steps_run_two_at_a_time_each_after_what_it_needs():
    steps = [buildplan.Step("go", "long", "1"), buildplan.Step("go", "short", "1"),
             buildplan.Step("image", "needs-short", "1", ["go:short"]),
             buildplan.Step("image", "needs-long", "1", ["go:long", "image:needs-short"])]
    build, state = sleepy({"long": 1.5, "short": 0.3})
    said: list[str] = []
    done = buildplan.run(steps, build, 2, said.append)
    assert done == {s.key: s.name for s in steps}
    assert state["most"] == 2
    start, end = state["start"], state["end"]
    # needs-short ran beside long, once short was done; needs-long only after both it needs.
    assert end["go:short"] <= start["image:needs-short"] < end["go:long"]
    assert start["image:needs-long"] >= max(end["go:long"], end["image:needs-short"])
    assert any(line.startswith("[4/4] image needs-long 1: built in") for line in said), said


def test_after_a_failure_nothing_new_starts_and_the_error_names_the_step():
    steps = [buildplan.Step("go", "slow", "1"), buildplan.Step("go", "broken", "1"),
             buildplan.Step("go", "later", "1")]
    build, state = sleepy({"slow": 1.5}, fail="broken")
    said: list[str] = []
    with pytest.raises(ArtifactError, match="not built: go broken 1"):
        buildplan.run(steps, build, 2, said.append)
    assert "go:later" not in state["start"]
    assert "go:slow" in state["end"] and any("[1/3] go slow 1" in line for line in said), said
    assert "error: go broken 1: broken broke" in said


def test_one_job_runs_one_step_at_a_time():
    steps = [buildplan.Step("go", n, "1") for n in "abc"]
    build, state = sleepy({})
    buildplan.run(steps, build, 1, lambda _m: None)
    assert state["most"] == 1
    assert state["end"]["go:a"] <= state["start"]["go:b"] and state["end"]["go:b"] <= state["start"]["go:c"]


def test_the_lane_runs_beside_as_many_go_builds_as_jobs_allow():
    steps = [buildplan.Step("go", "a", "1"), buildplan.Step("go", "b", "1"),
             buildplan.Step("rootfs", "base", "1"), buildplan.Step("image", "i", "1", ["rootfs:base"])]
    build, state = sleepy({"a": 1.5, "b": 1.5, "base": 0.1, "i": 0.1})
    buildplan.run(steps, build, 2, lambda _m: None)
    start, end = state["start"], state["end"]
    assert state["most"] == 3 and start["rootfs:base"] < min(end["go:a"], end["go:b"])
