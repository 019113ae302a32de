#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: write many small files in one round trip, touching only those whose content or mode differ."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pilothouse_files
short_description: Keep many small files (certificates, configs, units) in the wanted state in one task
description:
  - One module run per host instead of one per file: a no-op run of the roles stays fast (a per-file
    copy/template costs a round trip each, which dominated the run time).
  - Each file is written atomically (temp file + rename) only when its content or mode differs; missing parent
    directories are created with I(dir_mode). Content is text, or base64 with I(b64).
options:
  files:
    description: "List of {path, content, mode (default 0644), b64 (default false), owner (default: left as is,
      root for a new file)}. The owner is a user name; the file's group becomes that user's primary group."
    type: list
    elements: dict
    required: true
  directories:
    description: "List of {path, mode, owner}: directories to create (mode, and owner when given, enforced)."
    type: list
    elements: dict
    default: []
  dir_mode:
    description: Mode of parent directories this module creates.
    type: str
    default: "0755"
  units:
    description:
      - systemd units to report on, read in the same run, before anything is restarted. A role's "ensure it is
        enabled and running" task then skips a unit already I(up), saving a module run per unit and host on a
        run with nothing to do.
    type: list
    elements: str
    default: []
  apply:
    description:
      - "Oneshot units whose files this task writes (pod routes, a masquerade rule), each {unit, paths}: after the
        files, a unit one of whose I(paths) changed is restarted (after one daemon-reload) and enabled, and one not
        yet active and enabled is enabled and started. This saves a second task per unit and host. Check mode only
        reports them."
    type: list
    elements: dict
    default: []
  binaries:
    description:
      - "Binaries to check in the same run, each {dest, sha256, size} (the pilothouse_binary_wants filter makes
        them): a wrong mode or owner is fixed, and those missing or not at their sha256 are returned in I(stale)
        for the role's pilothouse_binaries task to send. A no-op run then needs no module run of its own for
        them."
    type: list
    elements: dict
    default: []
  binary_record:
    description: The record of checked binaries on the host (the one pilothouse_binaries keeps).
    type: str
    default: /var/lib/pilothouse/binaries.json
author: pilothouse
"""

EXAMPLES = r"""
- name: Etcd | Write the member's certificates and configuration
  pilothouse_files:
    directories: [{path: /etc/etcd/pki, mode: "0700"}]
    files:
      - {path: /etc/etcd/pki/ca.crt, content: "{{ lookup('file', pki_dir ~ '/etcd-ca.crt') }}"}
"""

RETURN = r"""
changed_paths: {description: Files and directories created or changed., type: list, returned: always}
units:
  description: "Unit name -> {loaded: systemd knows the unit, active: it runs, up: active and enabled}."
  type: dict
  returned: always
applied: {description: Units of I(apply) restarted or started., type: list, returned: always}
stale: {description: "Binaries of I(binaries) missing or not at their sha256.", type: list, returned: always}
"""

import base64
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pilothouse_binary_state import RECORD, keep


def _mode(value, default):
    return int(str(value or default), 8)


def _ids(module, owner):
    """(uid, gid) of the user `owner` and its primary group, or None when no owner is asked for."""
    if not owner:
        return None
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        module.fail_json(msg="owner %r is not a user on this host: create it first" % owner)
    return entry.pw_uid, entry.pw_gid


def _owned(st, ids):
    return ids is None or (st.st_uid, st.st_gid) == ids


def ensure_dir(path, mode, ids, changed):
    if not os.path.isdir(path):
        os.makedirs(path, mode)
        os.chmod(path, mode)
        if ids:
            os.chown(path, *ids)
        changed.append(path)
        return
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) != mode or not _owned(st, ids):
        os.chmod(path, mode)
        if ids:
            os.chown(path, *ids)
        changed.append(path)


def unit_states(module, names):
    """One `systemctl show` for every unit: {name: {loaded, active, up}}. Its output is one block per unit, in order."""
    if not names:
        return {}
    rc, out, err = module.run_command(["systemctl", "show", "--property=LoadState,ActiveState,UnitFileState",
                                       "--"] + list(names))
    if rc != 0:
        module.fail_json(msg="systemctl show %s failed: %s" % (" ".join(names), err.strip()))
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in out.strip().split("\n\n")]
    if len(blocks) != len(names):
        module.fail_json(msg="systemctl show gave %d blocks for %d units: %r" % (len(blocks), len(names), out))
    states = {}
    for name, b in zip(names, blocks):
        active = b.get("ActiveState") == "active"
        states[name] = {"loaded": b.get("LoadState") == "loaded", "active": active,
                        "up": active and b.get("UnitFileState") == "enabled"}
    return states


def systemctl(module, *args):
    rc, _, err = module.run_command(["systemctl"] + list(args))
    if rc != 0:
        module.fail_json(msg="systemctl %s failed: %s" % (" ".join(args), err.strip()))


def apply_units(module, wanted, states, changed):
    """Restart (and enable) the units of `wanted` whose files changed, enable and start those not up."""
    restart = [a["unit"] for a in wanted if set(a.get("paths") or []) & set(changed)]
    start = [a["unit"] for a in wanted if a["unit"] not in restart and not states[a["unit"]]["up"]]
    if module.check_mode:
        return restart + start
    if restart:
        systemctl(module, "daemon-reload")
    for unit in restart:
        systemctl(module, "restart", unit)
        systemctl(module, "enable", unit)
    for unit in start:
        systemctl(module, "enable", "--now", unit)
    return restart + start


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="dict", required=True),
            directories=dict(type="list", elements="dict", default=[]),
            dir_mode=dict(type="str", default="0755"),
            units=dict(type="list", elements="str", default=[]),
            apply=dict(type="list", elements="dict", default=[]),
            binaries=dict(type="list", elements="dict", default=[]),
            binary_record=dict(type="str", default=RECORD),
        ),
        supports_check_mode=True,
    )
    changed = []
    wanted = module.params["apply"]
    names = module.params["units"] + [a["unit"] for a in wanted if a["unit"] not in module.params["units"]]
    states = unit_states(module, names)
    dir_mode = _mode(module.params["dir_mode"], "0755")
    for d in module.params["directories"]:
        if not module.check_mode:
            ensure_dir(d["path"], _mode(d.get("mode"), "0755"), _ids(module, d.get("owner")), changed)
    for f in module.params["files"]:
        path = f["path"]
        mode = _mode(f.get("mode"), "0644")
        ids = _ids(module, f.get("owner"))
        content = f.get("content") or ""
        if not isinstance(content, str):
            module.fail_json(msg="%s: content must be text, got %s (a template that renders JSON is parsed by "
                                 "Ansible: use lookup('template', ..., convert_data=False))" % (path, type(content).__name__))
        data = base64.b64decode(content) if f.get("b64") else content.encode("utf-8")
        if not f.get("b64") and not data.endswith(b"\n") and data:
            data += b"\n"
        try:
            with open(path, "rb") as fh:
                same = fh.read() == data
            st = os.stat(path)
            same_mode = stat.S_IMODE(st.st_mode) == mode and _owned(st, ids)
        except FileNotFoundError:
            same, same_mode = False, False
        if same and same_mode:
            continue
        changed.append(path)
        if module.check_mode:
            continue
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, dir_mode)
        if same:
            os.chmod(path, mode)
            if ids:
                os.chown(path, *ids)
            continue
        tmp = "%s.pilothouse-tmp" % path
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        if ids:
            os.chown(tmp, *ids)
        os.replace(tmp, path)
    stale = []
    if module.params["binaries"]:  # the record is read (and pruned) only by a task that checks binaries
        stale, fixed = keep(module, module.params["binaries"], module.params["binary_record"])
        changed += fixed
    applied = apply_units(module, wanted, states, changed)
    module.exit_json(changed=bool(changed or applied), changed_paths=changed, applied=applied, stale=stale,
                     units={name: states[name] for name in module.params["units"]})


if __name__ == "__main__":
    main()
