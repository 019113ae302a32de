# -*- coding: utf-8 -*-
"""The binaries a pilothouse_files task checks in its own run (its `binaries` option), from the same variables the
role's pilothouse_binaries task installs them from."""
from __future__ import annotations

import os

from ansible.errors import AnsibleFilterError


def binary_wants(names, sources, digests, dest_dir="/usr/local/bin"):
    """[{dest, sha256, size}] for each name: where it goes on the host, and the controller file's sha256 and size."""
    wants = []
    for name in names:
        src, digest = sources.get(name), digests.get(name)
        if not src or not digest or not os.path.isfile(src):
            raise AnsibleFilterError("%s: pilothouse_binaries must name an existing file on the controller and "
                                     "pilothouse_binary_digests its sha256 (got %r and %r)" % (name, src, digest))
        wants.append({"dest": "%s/%s" % (dest_dir.rstrip("/"), name), "sha256": digest, "size": os.path.getsize(src)})
    return wants


class FilterModule:
    def filters(self):
        return {"pilothouse_binary_wants": binary_wants}
