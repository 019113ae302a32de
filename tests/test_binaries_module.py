"""roles' pilothouse_binaries action and module, run by real Ansible against this host over a local connection, into
a temporary directory: what a no-op run, a missing or changed binary, check mode and a wrong sha256 do."""
from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from module_support import run_module


def run(tmp: Path, sources: dict, digests: dict, check: bool = False) -> dict:
    """One pilothouse_binaries run installing `sources` into tmp/bin."""
    args = {"names": sorted(sources), "sources": sources, "digests": digests, "dest_dir": str(tmp / "bin"),
            "record": str(tmp / "record.json")}
    return run_module("pilothouse_binaries", args, check=check)


def binary(tmp: Path, name: str, data: bytes) -> tuple[str, str]:
    path = tmp / "controller" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def test_binaries_are_sent_once_and_a_changed_or_missing_one_is_sent_again(tmp_path):
    (a, a_sum), (b, b_sum) = binary(tmp_path, "alpha", b"alpha v1" * 1000), binary(tmp_path, "beta", b"beta" * 10)
    sources, digests = {"alpha": a, "beta": b}, {"alpha": a_sum, "beta": b_sum}
    first = run(tmp_path, sources, digests)
    assert not first["failed"], first
    assert first["changed"] and sorted(first["changed_paths"]) == [str(tmp_path / "bin" / n) for n in ("alpha", "beta")]
    for name, src in sources.items():
        dest = tmp_path / "bin" / name
        assert dest.read_bytes() == Path(src).read_bytes() and stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert json.loads((tmp_path / "record.json").read_text())[str(tmp_path / "bin" / "alpha")]["sha256"] == a_sum
    again = run(tmp_path, sources, digests)
    assert not again["changed"] and again["stale"] == [], again
    # The same size, other bytes (the record's mtime no longer matches, so it is hashed), and a removed one.
    (tmp_path / "bin" / "alpha").write_bytes(b"alpha v2" * 1000)
    (tmp_path / "bin" / "beta").unlink()
    (tmp_path / "bin" / "stray").write_bytes(b"left alone")
    checked = run(tmp_path, sources, digests, check=True)
    assert checked["changed"] and sorted(checked["stale"]) == [str(tmp_path / "bin" / n) for n in ("alpha", "beta")]
    assert (tmp_path / "bin" / "alpha").read_bytes() == b"alpha v2" * 1000, "check mode replaced a binary"
    fixed = run(tmp_path, sources, digests)
    assert fixed["changed"] and (tmp_path / "bin" / "alpha").read_bytes() == b"alpha v1" * 1000
    assert (tmp_path / "bin" / "beta").read_bytes() == b"beta" * 10
    assert sorted(p.name for p in (tmp_path / "bin").iterdir()) == ["alpha", "beta", "stray"]


def test_a_mode_change_is_fixed_without_sending_the_binary(tmp_path):
    src, digest = binary(tmp_path, "alpha", b"alpha" * 100)
    run(tmp_path, {"alpha": src}, {"alpha": digest})
    dest = tmp_path / "bin" / "alpha"
    dest.chmod(0o700)
    fixed = run(tmp_path, {"alpha": src}, {"alpha": digest})
    assert fixed["changed"] and fixed["stale"] == [] and stat.S_IMODE(dest.stat().st_mode) == 0o755


def test_a_sha256_that_is_not_the_files_replaces_nothing(tmp_path):
    src, digest = binary(tmp_path, "alpha", b"alpha" * 100)
    run(tmp_path, {"alpha": src}, {"alpha": digest})
    Path(src).write_bytes(b"other" * 100)
    wrong = run(tmp_path, {"alpha": src}, {"alpha": hashlib.sha256(b"something else").hexdigest()})
    assert wrong["failed"] and "nothing was replaced" in wrong["msg"], wrong
    assert (tmp_path / "bin" / "alpha").read_bytes() == b"alpha" * 100
    assert not list((tmp_path / "bin").glob("*.pilothouse-tmp"))
    missing = run(tmp_path, {"alpha": src}, {})
    assert missing["failed"] and "pilothouse_binary_digests" in missing["msg"], missing


def test_a_files_task_checks_the_binaries_and_the_install_sends_only_what_it_found_stale(tmp_path):
    """What the roles do: pilothouse_files checks the binaries in its own run, and pilothouse_binaries, given that
    `stale` list, sends just those without a check of its own."""
    (a, a_sum), (b, b_sum) = binary(tmp_path, "alpha", b"alpha" * 100), binary(tmp_path, "beta", b"beta" * 100)
    sources, digests = {"alpha": a, "beta": b}, {"alpha": a_sum, "beta": b_sum}
    run(tmp_path, sources, digests)
    bin_dir = tmp_path / "bin"
    (bin_dir / "alpha").write_bytes(b"older" * 100)   # same size, other bytes: hashed, found stale
    (bin_dir / "beta").chmod(0o700)                      # right bytes, wrong mode: fixed in the files run
    wants = [{"dest": str(bin_dir / n), "sha256": digests[n], "size": 500} for n in ("alpha", "beta")]
    checked = run_module("pilothouse_files", {"files": [], "binaries": wants,
                                              "binary_record": str(tmp_path / "record.json")})
    assert not checked["failed"], checked
    assert checked["stale"] == [str(bin_dir / "alpha")] and checked["changed_paths"] == [str(bin_dir / "beta")]
    assert stat.S_IMODE((bin_dir / "beta").stat().st_mode) == 0o755
    assert (bin_dir / "alpha").read_bytes() == b"older" * 100, "the files run replaced a binary"
    # beta is deliberately not in `stale`: were the action to check again, it would find nothing else to send.
    (bin_dir / "beta").write_bytes(b"BETA" * 100)
    args = {"names": ["alpha", "beta"], "sources": sources, "digests": digests, "dest_dir": str(bin_dir),
            "record": str(tmp_path / "record.json"), "stale": checked["stale"]}
    sent = run_module("pilothouse_binaries", args)
    assert not sent["failed"] and sent["changed_paths"] == [str(bin_dir / "alpha")], sent
    assert (bin_dir / "alpha").read_bytes() == b"alpha" * 100 and (bin_dir / "beta").read_bytes() == b"BETA" * 100
    nothing = run_module("pilothouse_binaries", {**args, "stale": []})
    assert not nothing["failed"] and not nothing["changed"] and nothing["changed_paths"] == [], nothing
    foreign = run_module("pilothouse_binaries", {**args, "stale": ["/usr/local/bin/other"]})
    assert foreign["failed"] and "not among this task's binaries" in foreign["msg"], foreign
