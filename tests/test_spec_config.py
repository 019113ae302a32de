"""The cluster spec read from the stack: Pulumi.yaml's declarations, the default stack, and the values a running
program and the Automation API see (typed, misspelt, encrypted)."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pulumi
import pytest
import yaml

from infra import spec as cluster_spec
from infra.spec import SpecError, from_config

ROOT = Path(__file__).resolve().parents[1]

PULUMI_TYPES = {bool: "boolean", int: "integer", str: "string", list: "array"}


def test_pulumi_yaml_declares_every_key_as_the_spec_does():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "pilothouse" and project["main"] == "infra/"
    assert project["runtime"] == {"name": "python", "options": {"toolchain": "pip"}}  # venv: invoke env
    declared = project["config"]
    assert sorted(declared) == sorted(f"pilothouse:{k}" for k in cluster_spec.KEYS)
    for key, want in cluster_spec.KEYS.items():
        got = declared[f"pilothouse:{key}"]
        typed = {"type": PULUMI_TYPES[want.type]}
        if want.type is list:
            typed["items"] = {"type": "string"}  # Pulumi types array items; objects it cannot declare
        assert got == {**typed, "default": want.default, "description": want.description}, key


def test_default_stack_is_the_default_local_ha_cluster():
    # As committed: creating the stack rewrites the working copy's values as strings (and adds the salt).
    committed = subprocess.run(["git", "show", "HEAD:Pulumi.dev.yaml"], cwd=ROOT, check=True, capture_output=True,
                               text=True).stdout
    stack = yaml.safe_load(committed)["config"]
    spec = from_config({k.removeprefix("pilothouse:"): v for k, v in stack.items()})
    assert spec.backend == "local"
    assert (len(spec.masters), len(spec.workers), len(spec.lbs)) == (3, 2, 1)


class _ConfigMocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return f"{args.name}-id", args.inputs

    def call(self, args):
        return {}


@contextlib.contextmanager
def stack_config(values: dict[str, str]):
    """Pulumi's config as a running program sees it, for the duration of the block."""
    pulumi.runtime.set_mocks(_ConfigMocks(), project="pilothouse", stack="test", preview=False)
    pulumi.runtime.set_all_config(values)
    try:
        yield
    finally:
        pulumi.runtime.set_all_config({})


def test_from_pulumi_config_reads_typed_stack_values():
    with stack_config(
        {
            "pilothouse:workers": "4",
            "pilothouse:ha": "true",
            "pilothouse:lbs": "2",
            "pilothouse:vip": "10.77.0.5",
        }
    ):
        spec = cluster_spec.from_pulumi_config()
    assert len(spec.workers) == 4 and spec.vip == "10.77.0.5"


def test_from_pulumi_config_refuses_a_non_numeric_count():
    with stack_config({"pilothouse:masters": "three"}):
        with pytest.raises(SpecError, match="pilothouse:masters must be a whole number.*--type int"):
            cluster_spec.from_pulumi_config()


def test_from_pulumi_config_reports_a_stack_key_pulumi_yaml_does_not_declare():
    # Pulumi type-checks declared keys only; a misspelt one would otherwise be ignored.
    with stack_config({"pilothouse:wrokers": "4", "aws:region": "eu-west-1"}):
        with pytest.raises(SpecError, match="unknown config key pilothouse:wrokers; did you mean workers?"):
            cluster_spec.from_pulumi_config()


def test_from_stack_config_reads_strings_as_pulumi_config_does():
    spec = cluster_spec.from_stack_config(
        {"pilothouse:workers": "4", "pilothouse:ha": "True", "masters": "3", "kubernetes:context": "x"}
    )
    assert len(spec.workers) == 4 and spec.ha and len(spec.masters) == 3
    with pytest.raises(SpecError) as caught:
        cluster_spec.from_stack_config({"pilothouse:ha": "yes", "pilothouse:lbs": "one", "pilothouse:mastrs": "3"})
    assert caught.value.problems == [
        "pilothouse:ha must be a boolean (true or false), not 'yes'; fix it with "
        "`pulumi config set --type bool pilothouse:ha <value>`",
        "pilothouse:lbs must be a whole number, not 'one'; fix it with "
        "`pulumi config set --type int pilothouse:lbs <value>`",
        "unknown config key pilothouse:mastrs; did you mean masters? Rename or remove it (Pulumi.yaml declares "
        "every key)",
    ]


def test_from_stack_config_reads_a_stack_file_and_leaves_encrypted_values_to_the_program(tmp_path):
    stack = yaml.safe_load(
        "config:\n"
        "  pilothouse:workers: 3\n"
        "  pilothouse:ha: true\n"
        "  pilothouse:operatorCidr:\n"
        "    secure: v1:AAAA\n"
        "  pilothouse:machineCidr: 198.51.100.0/24\n"
    )["config"]
    with pytest.raises(SpecError) as caught:
        cluster_spec.from_stack_config(stack)
    assert len(caught.value.problems) == 1 and "198.51.100.0/24 is not a private network" in str(caught.value)
    stack["pilothouse:allowPublicCidrs"] = True
    assert len(cluster_spec.from_stack_config(stack).workers) == 3


def test_load_turns_a_refused_spec_into_a_run_error_carrying_only_the_problems():
    with stack_config({"pilothouse:machineCidr": "10.77.0.0/28"}):
        with pytest.raises(pulumi.RunError) as caught:
            cluster_spec.load()
        with pytest.raises(SpecError) as direct:
            cluster_spec.from_pulumi_config()
    assert str(caught.value) == str(direct.value)
    assert str(caught.value).startswith("the cluster spec has 1 problem(s); nothing was created:\n  - ")
    # Raised `from None`: nothing chained that a runtime could print along with it.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_load_returns_the_spec_when_the_config_is_good():
    with stack_config({"pilothouse:workers": "3"}):
        assert len(cluster_spec.load().workers) == 3
