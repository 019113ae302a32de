"""Upgrades decided before anything is touched: which Kubernetes releases are pinned and where each is cached,
which version changes the program refuses, and how the playbook runs a version change."""
from __future__ import annotations

import dataclasses
import json

import pytest

from infra import artifacts, playbook
from infra.spec import from_config
from infra.spec_model import known_kubernetes_versions

DEFAULT, TARGET = known_kubernetes_versions()[:2]


def test_the_other_releases_are_the_default_entry_with_their_version_cached_under_a_name_of_their_own():
    lock = artifacts.load_lock()
    assert artifacts.kubernetes_release(DEFAULT, lock) == ("kubernetes", lock["go"]["kubernetes"])
    name, recipe = artifacts.kubernetes_release(TARGET, lock)
    assert name == f"kubernetes-{TARGET}" and recipe["version"] == TARGET
    assert {k: v for k, v in recipe.items() if k != "version"} == \
        {k: v for k, v in lock["go"]["kubernetes"].items() if k != "version"}
    # Its own cache key, and the default's key is the one it always was (no rebuild of the pinned release).
    assert artifacts._key(name, recipe, "build") != artifacts._key("kubernetes", lock["go"]["kubernetes"], "build")
    with pytest.raises(artifacts.ArtifactError, match=f"v1.99.0 is not pinned .* pinned: {DEFAULT}, {TARGET}"):
        artifacts.kubernetes_release("v1.99.0", lock)


def test_a_release_the_cache_lacks_is_named_with_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PILOTHOUSE_CACHE", str(tmp_path))
    assert f"kubernetes-{TARGET} {TARGET}" in artifacts.missing(kubernetes=TARGET)
    assert f"kubernetes-{TARGET} {TARGET}" not in artifacts.missing()
    with pytest.raises(artifacts.MissingArtifact, match=f"invoke artifacts --kubernetes {TARGET}"):
        artifacts.lookup_kubernetes(TARGET)


def test_the_pinned_versions_are_the_default_first_then_the_releases(tmp_path):
    lock = tmp_path / "lock.yaml"
    lock.write_text("go:\n  kubernetes:\n    version: v9.9.9\nkubernetes_releases:\n  v9.10.1: {}\n")
    assert known_kubernetes_versions(lock) == ("v9.9.9", "v9.10.1")
    assert from_config({"kubernetesVersion": TARGET}).kubernetes_version == TARGET


@pytest.mark.parametrize("running, wanted, problem", [
    (None, TARGET, None),                       # a new cluster
    (DEFAULT, DEFAULT, None),
    (DEFAULT, TARGET, None),                    # the next minor release
    ("v1.35.1", "v1.35.4", None),               # a newer patch
    ("v1.35.4", "v1.34.4", "cannot be downgraded: set it back to v1.35.4"),
    ("v1.35.4", "v1.35.2", "cannot be downgraded"),
    ("v1.33.7", "v1.35.4", "skips a minor release: the cluster runs v1.33.7, and upgrades go one minor release at "
                           "a time; upgrade to a pinned v1.34 release first, then to v1.35.4"),
])
def test_a_downgrade_or_a_skipped_minor_release_is_refused(tmp_path, monkeypatch, running, wanted, problem):
    monkeypatch.setattr(playbook, "CLUSTERS_ROOT", tmp_path)
    spec = from_config({})
    if running:
        (tmp_path / spec.name).mkdir()
        (tmp_path / spec.name / playbook.VERSION_RECORD).write_text(running + "\n")
    spec = dataclasses.replace(spec, kubernetes_version=wanted)
    found = playbook.kubernetes_version_problem(spec)
    if problem is None:
        assert found is None
    else:
        assert problem in found and f"pilothouse:kubernetesVersion {wanted}" in found
        assert playbook.running_cluster_problem(spec) == found


class Recorder(playbook._PlaybookProvider):
    def _run(self, props, scale_nodes=None):
        self.ran = json.loads(props["extravars"])
        return props


@pytest.mark.parametrize("change, rolling", [
    ({"kubernetesVersion": TARGET}, {"pilothouse_rolling": True, "pilothouse_rolling_nodes": True}),
    ({"masters": 5}, {"pilothouse_rolling": True, "pilothouse_rolling_nodes": False}),
    ({"workers": 3}, {}),
])
def test_a_version_change_rolls_every_machine_and_node_one_at_a_time(change, rolling):
    def props(spec):
        return {"inventory": json.dumps(playbook.inventory(spec)), "extravars": json.dumps({"x": 1}),
                "roles_digest": "d", "ssh_private_key": "k", "log_dir": "/nonexistent"}
    provider = Recorder()
    provider.update("id", props(from_config({})), props(from_config(change)))
    assert provider.ran == {"x": 1, **rolling}
