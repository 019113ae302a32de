"""The Pulumi dynamic providers, driven the way the Pulumi engine drives them, against real machines.

The Pulumi CLI is not needed: each test calls the provider methods the engine would call (check, create,
read, diff, update, delete) and checks the machine they act on for real.
"""
from __future__ import annotations

import base64
import os
import time

import dill
import pytest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.output import UNKNOWN

from infra.machines import keys, local
from infra.machines.provider import LocalMachineProvider, SshKeyProvider

BRIDGE = "phtest2"


@pytest.fixture(scope="module")
def key() -> keys.KeyPair:
    return keys.generate_ed25519("pilothouse-provider-test")


def props(key: keys.KeyPair, **overrides) -> dict:
    return {"name": "php-a", "address": "10.251.9.11", "cidr": "10.251.9.0/24", "bridge": BRIDGE,
            "ssh_public_key": key.public_key, "ssh_private_key": key.private_key, **overrides}


def test_ssh_key_provider_makes_a_matching_ed25519_pair():
    result = SshKeyProvider().create({"comment": "ops"})
    pub, priv = result.outs["public_key"], result.outs["private_key"]
    assert pub.startswith("ssh-ed25519 ") and pub.endswith(" ops")
    assert keys.public_key_of(keys.load_private_key(priv)) == " ".join(pub.split()[:2])
    assert SshKeyProvider().create({"comment": "ops"}).outs["public_key"] != pub


def test_providers_survive_the_serialisation_pulumi_applies():
    # Pulumi stores the provider with dill and loads it in its provider host process.
    for provider in (LocalMachineProvider(), SshKeyProvider()):
        restored = dill.loads(base64.b64decode(serialize_provider(provider)))
        assert type(restored).__name__ == type(provider).__name__


def test_check_refuses_an_address_outside_the_cidr_and_missing_inputs(key):
    failures = LocalMachineProvider().check({}, props(key, address="10.9.9.9")).failures
    assert failures and "outside 10.251.9.0/24" in failures[0].reason
    failures = LocalMachineProvider().check({}, props(key, ssh_private_key="")).failures
    assert [f.property for f in failures] == ["ssh_private_key"]
    # A fresh stack's preview passes the key as unknown: the provider host hands over the Unknown object.
    assert LocalMachineProvider().check({}, props(key, ssh_public_key=UNKNOWN)).failures == []
    assert LocalMachineProvider().check({}, props(key, address=UNKNOWN)).failures == []
    assert LocalMachineProvider().check({}, props(key)).failures == []


@pytest.mark.parametrize("field, value", [("name", "php-z"), ("address", "10.251.9.50"),
                                          ("ssh_public_key", "ssh-ed25519 AAAAnew x"), ("bridge", "phother")])
def test_diff_replaces_the_machine_when_its_identity_changes(key, field, value):
    olds = props(key)
    result = LocalMachineProvider().diff("php-a", olds, {**olds, field: value})
    assert result.changes and result.replaces == [field] and result.delete_before_replace


def test_diff_reports_no_change_when_inputs_match_the_stored_outputs(key):
    # The engine passes the stored outputs as `olds`; they hold no private key.
    outputs = {k: v for k, v in props(key).items() if k != "ssh_private_key"}
    outputs.update(hostname="php-a", ssh_host_key="ssh-ed25519 AAAAhost root@php-a")
    result = LocalMachineProvider().diff("php-a", outputs, props(key))
    assert not result.changes and not result.replaces


@pytest.mark.machines
def test_create_read_refresh_and_delete_a_real_machine(key):
    provider = LocalMachineProvider()
    try:
        created = provider.create(props(key))
        assert created.id == "php-a"
        assert created.outs["address"] == "10.251.9.11" and created.outs["hostname"] == "php-a"
        assert created.outs["ssh_host_key"].startswith("ssh-ed25519 ")
        assert "ssh_private_key" not in created.outs  # secrets never become outputs

        read = provider.read("php-a", created.outs)
        assert read.id == "php-a" and read.outs["address"] == "10.251.9.11"

        # A second `pulumi up` with nothing changed: no diff, and update would leave the machine alone.
        assert not provider.diff("php-a", created.outs, props(key)).changes
        pid = local.get("php-a").pid
        provider.update("php-a", created.outs, props(key))
        assert local.get("php-a").pid == pid

        # The machine dies: refresh must notice it is gone.
        os.kill(pid, 9)
        deadline = time.monotonic() + 5
        while local.status("php-a") == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert provider.read("php-a", created.outs).id == ""

        # The next `pulumi up` creates it again, reachable as before.
        again = provider.create(props(key))
        assert local.status("php-a") == "running" and again.outs == created.outs
    finally:
        provider.delete("php-a", props(key))
    assert local.status("php-a") == "absent"
    assert provider.read("php-a", props(key)).id == ""
    assert not os.path.exists(f"/sys/class/net/{BRIDGE}")
