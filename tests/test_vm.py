"""The libvirt VMs' definition, without a hypervisor: the domain libvirt is given and the checks before it; and,
with one, that a VM whose boot fails leaves nothing behind. tests/test_topologies.py boots one into a cluster."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from infra.machines import host, keys, local, vm
from infra.machines.errors import HostSetupError, MachineNotReadyError, MachineSpecError
from conftest import cluster_network

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyMaterialForTestsOnly pilothouse"
FILES = {"disk": Path("/pool/w1.raw"), "kernel": Path("/pool/w1.vmlinuz"), "initrd": Path("/pool/w1.initrd")}


def spec(**changes) -> vm.VmSpec:
    values = dict(name="w1", address="10.77.0.40", cidr_prefix=24, bridge="ph-test", ssh_public_key=KEY,
                  memory_mib=2048, vcpus=2, uri="qemu:///system", pool="default", accel="tcg")
    return vm.VmSpec(**{**values, **changes})


def test_a_tcg_domain_boots_the_kernel_directly_from_the_raw_disk_on_the_bridge():
    dom = ET.fromstring(vm.domain_xml(spec(), FILES))
    assert dom.get("type") == "qemu"  # TCG: no KVM
    assert dom.find("cpu/model").text == "qemu64"
    assert (dom.findtext("os/kernel"), dom.findtext("os/initrd")) == ("/pool/w1.vmlinuz", "/pool/w1.initrd")
    cmdline = dom.findtext("os/cmdline")
    assert "root=/dev/vda" in cmdline and "net.ifnames=0" in cmdline  # the identity names eth0
    assert "systemd.unified_cgroup_hierarchy=0" in cmdline  # cgroup v1, as on the local machines
    assert "clocksource=tsc tsc=reliable" in cmdline  # not the emulated HPET
    assert dom.find("devices/disk/source").get("file") == "/pool/w1.raw"
    assert dom.find("devices/disk/driver").get("type") == "raw"
    nic = dom.find("devices/interface")
    assert nic.get("type") == "bridge" and nic.find("source").get("bridge") == "ph-test"
    assert nic.find("mac").get("address") == "52:54:00:4d:00:28"
    assert (dom.findtext("memory"), dom.findtext("vcpu")) == ("2048", "2")
    assert dom.find("devices/serial/source").get("path").endswith("/w1/console.log")


def test_a_kvm_domain_passes_the_host_cpu_through():
    dom = ET.fromstring(vm.domain_xml(spec(accel="kvm"), FILES))
    assert dom.get("type") == "kvm"
    assert dom.find("cpu").get("mode") == "host-passthrough"
    assert "clocksource" not in dom.findtext("os/cmdline")  # kvm-clock


def test_macs_differ_per_address_and_stay_in_qemus_range():
    macs = {vm.mac_for(f"10.77.{i}.{j}") for i in range(3) for j in range(2, 250)}
    assert len(macs) == 3 * 248 and all(m.startswith("52:54:00:") for m in macs)


@pytest.mark.parametrize("changes, fragment", [
    ({"accel": "hvf"}, "accel 'hvf' is not one of kvm, tcg"),
    ({"memory_mib": 256}, "at least 512 MiB"),
    ({"name": "W_1"}, "not a valid hostname"),
    ({"address": "10.77.0.1"}, "reserved"),
])
def test_a_bad_vm_spec_is_refused_with_the_reason(changes, fragment):
    with pytest.raises(MachineSpecError, match=fragment):
        spec(**changes)


def test_a_hypervisor_that_does_not_answer_is_named_with_how_to_start_it(tmp_path):
    uri = f"qemu:///system?socket={tmp_path}/none.sock"
    with pytest.raises(HostSetupError, match=r"does not answer: start it \(`systemctl start libvirtd"):
        vm.check_hypervisor(uri)


@pytest.mark.machines
def test_a_vm_that_does_not_boot_in_time_leaves_nothing_behind(libvirt_daemons):
    network = cluster_network("phvmfail", offset=1)  # the small topology's network: that cluster is down by now
    pair = keys.generate_ed25519("test")
    failing = spec(name=network["clusterName"], address=network["machineCidr"].replace(".0/24", ".40"),
                   bridge=local.bridge_name(network["clusterName"]), ssh_public_key=pair.public_key)
    with pytest.raises(MachineNotReadyError, match="not ready after"):
        vm.create(failing, pair.private_key, timeout=1)
    assert vm.status(failing.name) == "absent"
    assert vm.domain_state(failing.uri, failing.name) == "absent"
    assert not vm.machine_dir(failing.name).exists()
    assert not list(vm.DEFAULT_POOL_DIR.glob(f"{failing.name}.*"))
    assert not host.bridge_exists(failing.bridge)
