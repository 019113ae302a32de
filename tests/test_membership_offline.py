"""Membership changes decided before anything is touched: the etcd role's plan (roles/filter_plugins/
pilothouse_etcd.py), the program's refusal of a spec that keeps no running etcd member, and which inventory
changes make the playbook run one machine at a time."""
from __future__ import annotations

import importlib.util
import json

from infra import playbook
from infra.spec import from_config

REPO_ROLES = playbook.ROLES
_spec = importlib.util.spec_from_file_location("pilothouse_etcd", REPO_ROLES / "filter_plugins" / "pilothouse_etcd.py")
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)


def member(n, learner=False, started=True):
    m = {"ID": 0x1000 + n, "peerURLs": [f"https://10.0.0.{n}:2380"]}
    if started:
        m.update(name=f"m{n}", clientURLs=[f"https://10.0.0.{n}:2379"])
    if learner:
        m["isLearner"] = True
    return m


def health(*up):
    return [{"endpoint": f"https://10.0.0.{n}:2379", "health": True} for n in up]


def wanted(*ns):
    return {f"https://10.0.0.{n}:2380": f"m{n}" for n in ns}


def test_growing_from_3_to_5_joins_the_two_new_members_in_order_and_removes_nothing():
    plan = plugin.etcd_changes([member(1), member(2), member(3)], health(1, 2, 3), wanted(1, 2, 3, 4, 5))
    assert plan == {"refused": "", "join": ["m4", "m5"], "remove": [], "heir": "1001"}


def test_shrinking_from_5_to_3_removes_the_two_dropped_members_one_at_a_time_by_hex_id():
    plan = plugin.etcd_changes([member(n) for n in range(1, 6)], health(1, 2, 3, 4, 5), wanted(1, 2, 3))
    assert plan["remove"] == [{"id": "1004", "name": "m4", "client_urls": ["https://10.0.0.4:2379"]},
                              {"id": "1005", "name": "m5", "client_urls": ["https://10.0.0.5:2379"]}]
    assert not plan["refused"] and plan["join"] == []
    # A leader among them hands over to the first member that stays and answers.
    assert plan["heir"] == "1001"
    assert plugin.etcd_changes([member(n) for n in range(1, 6)], health(2, 3, 4, 5), wanted(1, 2, 3))["heir"] == "1002"


def test_a_learner_left_by_an_interrupted_join_is_joined_again_not_added_twice():
    plan = plugin.etcd_changes([member(1), member(2), member(3), member(4, learner=True, started=False)],
                               health(1, 2, 3), wanted(1, 2, 3, 4, 5))
    assert plan["join"] == ["m4", "m5"] and not plan["refused"]


def test_a_stray_learner_the_inventory_dropped_goes_before_any_voter():
    plan = plugin.etcd_changes([member(1), member(2), member(3), member(4), member(5), member(6, learner=True)],
                               health(1, 2, 3, 4, 5), wanted(1, 2, 3))
    assert [r["name"] for r in plan["remove"]] == ["m6", "m4", "m5"]


def test_a_change_that_keeps_no_running_member_is_refused():
    plan = plugin.etcd_changes([member(1), member(2), member(3)], health(1, 2, 3), wanted(7, 8, 9))
    assert "none of the running etcd members (m1, m2, m3)" in plan["refused"]
    assert plan["join"] == plan["remove"] == []


def test_adding_members_while_a_kept_one_is_down_is_refused_with_its_name():
    plan = plugin.etcd_changes([member(1), member(2), member(3)], health(1, 2), wanted(1, 2, 3, 4, 5))
    assert "m3 do not answer" in plan["refused"] and "invoke up --refresh" in plan["refused"]


def test_a_removal_that_would_leave_no_majority_of_answering_voters_is_refused():
    # 5 members, 2 of the 3 kept are down: after removing m4 the 4 voters would have 2 answering (< 3).
    plan = plugin.etcd_changes([member(n) for n in range(1, 6)], health(1, 4, 5), wanted(1, 2, 3))
    assert "removing etcd member m4 would leave 2 answering voters of 4, fewer than a majority (3)" in plan["refused"]
    # The same shrink with every kept member answering goes ahead even though m4 and m5 are already gone.
    assert not plugin.etcd_changes([member(n) for n in range(1, 6)], health(1, 2, 3), wanted(1, 2, 3))["refused"]


def test_members_changed_is_about_etcd_masters_and_lbs_not_workers():
    small, big = (playbook.inventory(from_config({"masters": n, "workers": w})) for n, w in ((3, 2), (5, 2)))
    more_workers = playbook.inventory(from_config({"masters": 3, "workers": 3}))
    assert playbook.members_changed(small, big) and playbook.members_changed(big, small)
    assert not playbook.members_changed(small, more_workers)


def test_a_spec_that_keeps_no_running_etcd_member_or_reuses_its_address_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(playbook, "CLUSTERS_ROOT", tmp_path)
    stacked = from_config({})
    assert playbook.etcd_members_problem(stacked) is None  # a new cluster: no record yet
    record = tmp_path / stacked.name / playbook.ETCD_MEMBERS_RECORD
    record.parent.mkdir()
    record.write_text(json.dumps([[m.name, f"https://{m.address}:2379"] for m in stacked.etcd]))
    assert playbook.etcd_members_problem(from_config({"masters": 5})) is None
    assert playbook.etcd_members_problem(from_config({"masters": 1, "ha": False, "lbs": 0})) is None
    problem = playbook.etcd_members_problem(from_config({"etcdNodes": 3}))
    assert "none of the running etcd members (pilothouse-master-1, pilothouse-master-2, pilothouse-master-3)" in problem
    assert "empty etcd" in problem and "in steps" in problem
    # Renamed masters get the same addresses: each new machine would clash with the member still running there.
    problem = playbook.etcd_members_problem(from_config({"masterName": "ctl"}))
    assert "pilothouse-ctl-1 at 10.77.0.20 (running member pilothouse-master-1)" in problem
