#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module (run by the action plugin of the same name): keep binaries at given sha256s, hashing them only
when they are new or changed since the last run."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pilothouse_binaries
short_description: Install big binaries by sha256, with a no-op run that reads no file
description:
  - Meant to be called through the pilothouse_binaries action (roles/action_plugins), which sends only the stale
    binaries. ansible.builtin.copy hashes the whole file on the controller and on the host, then runs a second
    module for the mode, on every run; a no-op playbook spent a quarter of its time there.
  - A binary is current when its size, mtime and inode are the ones recorded at I(record) with the wanted
    sha256 (the quick check rsync uses); otherwise it is hashed once and the record updated.
  - A staged binary is copied next to I(dest), checked against its sha256 and renamed into place (root, 0755).
options:
  binaries:
    description: "List of {dest, sha256, size, staged (optional: a file on this host to install)}."
    type: list
    elements: dict
    required: true
  record:
    description: Where the installed binaries' sha256s and identities are kept on the host.
    type: str
    default: /var/lib/pilothouse/binaries.json
author: pilothouse
"""

RETURN = r"""
stale: {description: Binaries missing or not at their sha256 (nothing staged for them)., type: list, returned: always}
changed_paths: {description: Binaries installed or whose mode or owner was fixed., type: list, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pilothouse_binary_state import RECORD, keep


def main():
    module = AnsibleModule(
        argument_spec=dict(
            binaries=dict(type="list", elements="dict", required=True),
            record=dict(type="str", default=RECORD),
        ),
        supports_check_mode=True,
    )
    stale, changed = keep(module, module.params["binaries"], module.params["record"])
    module.exit_json(changed=bool(changed) or (module.check_mode and bool(stale)), stale=stale,
                     changed_paths=changed)


if __name__ == "__main__":
    main()
