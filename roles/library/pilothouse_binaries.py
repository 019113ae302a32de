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

import hashlib
import json
import os
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule

MODE = 0o755


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identity(st, sha256):
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def load(path):
    try:
        with open(path) as fh:
            record = json.load(fh)
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def save(path, record):
    os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
    tmp = path + ".pilothouse-tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def install(module, item):
    """Copy the staged file beside dest (a rename cannot cross file systems), check it, rename it into place."""
    dest = item["dest"]
    tmp = dest + ".pilothouse-tmp"
    os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
    shutil.copyfile(item["staged"], tmp)
    got = sha256_of(tmp)
    if got != item["sha256"]:
        os.unlink(tmp)
        module.fail_json(msg="%s: the copy sent has sha256 %s, not %s: the controller's file changed or the "
                             "transfer broke; nothing was replaced" % (dest, got, item["sha256"]))
    os.chmod(tmp, MODE)
    os.chown(tmp, 0, 0)
    os.replace(tmp, dest)
    return identity(os.stat(dest), got)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            binaries=dict(type="list", elements="dict", required=True),
            record=dict(type="str", default="/var/lib/pilothouse/binaries.json"),
        ),
        supports_check_mode=True,
    )
    record_path = module.params["record"]
    record = load(record_path)
    before = dict(record)
    stale, changed = [], []
    for item in module.params["binaries"]:
        dest = item["dest"]
        if item.get("staged"):
            if not module.check_mode:
                record[dest] = install(module, item)
            changed.append(dest)
            continue
        try:
            st = os.stat(dest)
        except FileNotFoundError:
            stale.append(dest)
            continue
        if record.get(dest) != identity(st, item["sha256"]):
            if st.st_size != item["size"] or sha256_of(dest) != item["sha256"]:
                stale.append(dest)
                continue
            record[dest] = identity(st, item["sha256"])
        if stat.S_IMODE(st.st_mode) != MODE or (st.st_uid, st.st_gid) != (0, 0):
            changed.append(dest)
            if not module.check_mode:
                os.chmod(dest, MODE)
                os.chown(dest, 0, 0)
    # Forget binaries no longer there, so a record never vouches for a file that was removed and put back.
    record = {path: known for path, known in record.items() if os.path.exists(path)}
    if record != before and not module.check_mode:
        save(record_path, record)
    module.exit_json(changed=bool(changed) or (module.check_mode and bool(stale)), stale=stale,
                     changed_paths=changed)


if __name__ == "__main__":
    main()
