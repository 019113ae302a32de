# -*- coding: utf-8 -*-
"""Filters for the pilothouse roles: CIDR helpers (ansible.utils.ipaddr is a Galaxy collection, not available offline)."""
from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError


def _net(value):
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError as exc:
        raise AnsibleFilterError("not a CIDR: %r (%s)" % (value, exc)) from exc


def cidr_valid(value):
    """True if value is a network in CIDR notation with no host bits set (10.96.0.0/12)."""
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        return False
    return "/" in str(value) and net.num_addresses > 1


def ip_valid(value):
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def cidr_overlaps(value, other):
    """True if the two CIDRs share any address."""
    return _net(value).overlaps(_net(other))


def cidr_overlaps_any(value, others):
    """True if the CIDR overlaps any CIDR in the list `others`."""
    return any(_net(value).overlaps(_net(o)) for o in others)


def cidr_contains(value, other):
    """True if the network `value` contains the address or network `other`."""
    if "/" in str(other):
        return _net(other).subnet_of(_net(value))
    return ipaddress.ip_address(str(other)) in _net(value)


def cidr_host(value, index):
    """The index-th address of a network: '10.96.0.0/12' | cidr_host(1) -> '10.96.0.1'."""
    net = _net(value)
    if index >= net.num_addresses:
        raise AnsibleFilterError("%s has no address number %d" % (value, index))
    return str(net.network_address + int(index))


def cidr_prefix(value):
    return _net(value).prefixlen


def ip_mac(value):
    """A stable MAC for a node's VXLAN device from its IPv4 address: '10.77.0.20' -> '02:70:0a:4d:00:14'.

    02 marks a locally administered unicast address, 70 is fixed; the address fills the other four bytes, so
    every node can compute every peer's MAC without asking it, and the MAC survives re-creating the device.
    """
    try:
        address = ipaddress.IPv4Address(str(value))
    except ValueError as exc:
        raise AnsibleFilterError("not an IPv4 address: %r (%s)" % (value, exc)) from exc
    return ":".join("%02x" % b for b in (0x02, 0x70) + tuple(address.packed))


def pki_files(items, src_dir, dest_dir):
    """Files for the pilothouse_files module from PKI files on the controller.

    items: names ('ca.crt') or {src, dest} pairs. Every file gets mode 0600, certificates too (CIS 1.1.20):
    only root-run services read them.
    """
    out = []
    for item in items:
        src, dest = (item, item) if isinstance(item, str) else (item["src"], item["dest"])
        path = "%s/%s" % (src_dir, src)
        try:
            with open(path, encoding="utf-8") as fh:
                content = fh.read()
        except OSError as exc:
            raise AnsibleFilterError("cannot read %s (%s): run the pki role first" % (path, exc)) from exc
        out.append({"path": "%s/%s" % (dest_dir, dest), "content": content, "mode": "0600"})
    return out


class FilterModule:
    def filters(self):
        return {
            "pilothouse_cidr_valid": cidr_valid,
            "pilothouse_ip_valid": ip_valid,
            "pilothouse_cidr_overlaps": cidr_overlaps,
            "pilothouse_cidr_contains": cidr_contains,
            "pilothouse_cidr_overlaps_any": cidr_overlaps_any,
            "pilothouse_cidr_host": cidr_host,
            "pilothouse_cidr_prefix": cidr_prefix,
            "pilothouse_ip_mac": ip_mac,
            "pilothouse_pki_files": pki_files,
        }
