# -*- coding: utf-8 -*-
"""What the pilothouse_binaries and pilothouse_files modules share: whether binaries on this host are at their
sha256, read from a record of size, mtime and inode (the quick check rsync uses) so that a no-op run hashes
nothing, and installing a staged copy."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

RECORD = "/var/lib/pilothouse/binaries.json"
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


def keep(module, binaries, record_path):
    """Install the staged items of `binaries` ({dest, sha256, size, staged (optional)}), check the others and fix
    their mode and owner. Returns (stale, changed): the binaries missing or not at their sha256, which need a
    copy sent, and the paths installed or fixed."""
    record = load(record_path)
    before = dict(record)
    stale, changed = [], []
    for item in binaries:
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
    return stale, changed
