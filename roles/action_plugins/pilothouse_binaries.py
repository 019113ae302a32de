# -*- coding: utf-8 -*-
"""Action for the pilothouse_binaries module: one module run per host finds the binaries not at their sha256;
only those are sent, and a second run installs them. A no-op run transfers nothing and hashes nothing here.
Given `stale` (what a pilothouse_files task checked in its own run), the first module run is skipped."""
from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleFilterError
from ansible.plugins.action import ActionBase
from ansible.plugins.loader import filter_loader

DOCUMENTATION = r"""
name: pilothouse_binaries
short_description: install controller binaries on the hosts by sha256
options:
  names: {description: Binary names to install., type: list, required: true}
  sources: {description: "Name -> controller path (pilothouse_binaries).", type: dict, required: true}
  digests: {description: "Name -> sha256 of that file (pilothouse_binary_digests).", type: dict, required: true}
  dest_dir: {description: Directory on the host., type: str, default: /usr/local/bin}
  record: {description: The module's record of checked binaries on the host., type: str, default: /var/lib/pilothouse/binaries.json}
  stale: {description: "Paths already found missing or not at their sha256 (pilothouse_files' I(stale)): only
    these are sent, without checking again.", type: list}
"""


class ActionModule(ActionBase):
    _VALID_ARGS = frozenset(("names", "sources", "digests", "dest_dir", "record", "stale"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        dest_dir = args.get("dest_dir", "/usr/local/bin")
        record = {"record": args["record"]} if args.get("record") else {}
        # The same list a pilothouse_files task checks with this filter (its `binaries` option).
        wants = filter_loader.get("pilothouse_binary_wants").j2_function
        try:
            wanted = wants(args["names"], args["sources"], args["digests"], dest_dir)
        except AnsibleFilterError as exc:
            raise AnsibleActionFail(str(exc))
        local = {item["dest"]: args["sources"][name] for name, item in zip(args["names"], wanted)}
        stale = args.get("stale")
        if stale is not None and set(stale) - set(local):
            raise AnsibleActionFail("stale names %s, which are not among this task's binaries"
                                    % sorted(set(stale) - set(local)))
        try:
            if stale is None:
                checked = self._execute_module("pilothouse_binaries", module_args={"binaries": wanted, **record},
                                               task_vars=task_vars)
            else:
                checked = {"changed": bool(stale) and self._task.check_mode, "stale": list(stale), "changed_paths": []}
            if checked.get("failed") or self._task.check_mode or not checked.get("stale"):
                return {**result, **checked}
            self._make_tmp_path()
            staged = []
            for item in wanted:
                if item["dest"] in checked["stale"]:
                    remote = self._connection._shell.join_path(self._connection._shell.tmpdir,
                                                               os.path.basename(item["dest"]))
                    self._transfer_file(local[item["dest"]], remote)
                    staged.append({**item, "staged": remote})
            # Readable by the become user when it is not the login user.
            self._fixup_perms2([self._connection._shell.tmpdir] + [s["staged"] for s in staged])
            installed = self._execute_module("pilothouse_binaries", module_args={"binaries": staged, **record},
                                             task_vars=task_vars)
            installed["changed_paths"] = checked.get("changed_paths", []) + installed.get("changed_paths", [])
            installed["changed"] = bool(installed.get("changed") or checked.get("changed"))
            return {**result, **installed}
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
