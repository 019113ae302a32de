# -*- coding: utf-8 -*-
"""Filters for the etcd role: what a membership change (masters 3 -> 5 -> 3, external etcd grown or shrunk)
does to the running cluster, decided before any member is added or removed."""
from __future__ import annotations


def _quorum(voters):
    return voters // 2 + 1


def _label(member):
    return member.get("name") or member["peerURLs"][0]


def _refused(reason):
    return {"refused": reason, "join": [], "remove": [], "heir": ""}


def etcd_changes(members, health, wanted):
    """The plan for moving the running members to `wanted` (peer URL -> inventory name).

    members: `etcdctl member list -w json`'s "members"; health: `etcdctl endpoint health -w json` (client URL ->
    health) for the voting members. Returns {"refused": reason or "", "join": [inventory names to add, in order],
    "remove": [{"id": hex id, "name": ..., "client_urls": [...]}] in order, "heir": hex id of the member that takes
    over leadership from a leader being removed}. New members join as learners and are promoted one at a time
    before anything is removed, and each removal is checked against the members that answer: a step that would
    leave fewer healthy voters than a majority is refused, and so is a change that keeps no running member."""
    healthy = {h["endpoint"] for h in health if h.get("health")}
    by_peer = {m["peerURLs"][0]: m for m in members if m.get("peerURLs")}
    voters = [m for m in members if not m.get("isLearner")]
    kept = [m for m in voters if m["peerURLs"][0] in wanted]
    if not kept:
        return _refused("none of the running etcd members (%s) is in the inventory, so every member would be new "
                        "and start an empty cluster; change the etcd members in steps that keep at least one "
                        "(e.g. add the new masters first, remove the old ones in a later run)"
                        % ", ".join(sorted(_label(m) for m in voters)))

    def answers(member):
        return any(url in healthy for url in member.get("clientURLs") or [])

    # A learner left behind by an interrupted join is joined again (it is still the inventory's); any other
    # learner is removed like a voter the inventory dropped.
    join = [name for peer, name in sorted(wanted.items(), key=lambda kv: kv[1])
            if peer not in by_peer or by_peer[peer].get("isLearner")]
    down = sorted(_label(m) for m in kept if not answers(m))
    if join and down:
        return _refused("etcd member(s) %s do not answer; adding a member while one is down can leave the larger "
                        "cluster without a majority. Bring them back first: `invoke up --refresh` with the previous "
                        "counts starts machines that are off and members that are stopped; then change the members"
                        % ", ".join(down))
    # Every join is promoted before the first removal; each removal then takes one voter away.
    count = len(voters) + len(join)
    answering = sum(1 for m in voters if answers(m)) + len(join)
    remove = []
    for member in sorted((m for m in members if m["peerURLs"][0] not in wanted),
                         key=lambda m: (not m.get("isLearner"), _label(m))):
        if not member.get("isLearner"):
            count, answering = count - 1, answering - (1 if answers(member) else 0)
            if answering < _quorum(count):
                return _refused("removing etcd member %s would leave %d answering voters of %d, fewer than a "
                                "majority (%d); bring the members that do not answer back first "
                                "(`invoke up --refresh` with the previous counts), then change the members"
                                % (_label(member), answering, count, _quorum(count)))
        remove.append({"id": "%x" % member["ID"], "name": _label(member),
                       "client_urls": member.get("clientURLs") or []})
    # Where leadership goes before a leader is removed (etcd would otherwise hold an election with requests
    # timing out meanwhile): the first member that stays and answers.
    heir = next(("%x" % m["ID"] for m in sorted(kept, key=_label) if answers(m)), "")
    return {"refused": "", "join": join, "remove": remove, "heir": heir}


class FilterModule:
    def filters(self):
        return {"pilothouse_etcd_changes": etcd_changes}
