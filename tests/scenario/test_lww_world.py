"""Last-write-wins keys in the simulated world: one value read back, the newest
stamp winning after a partition heals, the clock-skew caveat, and blind puts that
ask no replica to read."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ringfs.dvv import DVVSet
from ringfs.lww import unstamp
from ringfs.wire import Op
from simulations.harness import Simulation
from simulations.scenario import load_scenario
from simulations.world import SimWorld
from tests.scenario.test_replication import client, ok, prefs, stored_values


def lww_cluster(seed: int = 1, **defaults: Any) -> SimWorld:
    w = SimWorld(seed, node_defaults={"lww_prefixes": ("lww/",), **defaults})
    for i in range(3):
        w.add_node(f"n{i + 1}")
    w.run_for(1.0)
    return w


def split_writes(w: SimWorld, key: bytes, first: bytes, second: bytes) -> None:
    """`first` through n1 while it is cut off from n2 and n3, then, a second later,
    `second` through n2: two acknowledged writes, neither coordinator seeing the other's.
    LWW keys are written blind; others with the empty context (a causal blind write
    could not read its quorum on n1's side)."""
    lone = client(w, "n1", "lone")
    pair = client(w, "n2", "pair")
    ctx = {} if key.startswith(b"lww/") else {"context": b""}
    w.net.partition([w.nodes["n1"].address], [w.nodes["n2"].address, w.nodes["n3"].address])
    ok(lone.call(Op.PUT, {"key": key, "value": first, "w": 1, **ctx}))
    w.run_for(1.0)
    ok(pair.call(Op.PUT, {"key": key, "value": second, **ctx}))
    w.net.heal()
    w.run_for(20.0)  # anti-entropy brings every replica both writes


def test_a_blind_put_asks_no_replica_to_read() -> None:
    w = lww_cluster()
    for key in (b"lww/k", b"plain"):
        c = client(w, prefs(w, key)[0])
        ok(c.call(Op.PUT, {"key": key, "value": b"v0"}))
        w.run_for(0.5)
        before = sum(sn.node.counters["replica_gets"] for sn in w.nodes.values())
        ok(c.call(Op.PUT, {"key": key, "value": b"v1"}))
        w.run_for(0.5)
        asked = sum(sn.node.counters["replica_gets"] for sn in w.nodes.values()) - before
        assert asked == 0, key
        assert all(stored_values(w, n, key) is not None for n in w.nodes)
        assert ok(c.call(Op.GET, {"key": key}))["values"] == [b"v1"]


def test_concurrent_writes_read_as_the_newest_on_every_node() -> None:
    w = lww_cluster()
    split_writes(w, b"lww/k", b"older", b"newer")
    split_writes(w, b"plain", b"older", b"newer")
    for n in w.nodes:
        # Both writes are kept underneath, as for any key ...
        assert sorted(unstamp(v)[1] for v in stored_values(w, n, b"lww/k") or []) == [
            b"newer", b"older"]
        c = client(w, n, "r")
        # ... but an LWW key reads as the newest; a causal key shows both siblings.
        assert ok(c.call(Op.GET, {"key": b"lww/k", "r": 3}))["values"] == [b"newer"]
        assert sorted(ok(c.call(Op.GET, {"key": b"plain", "r": 3}))["values"]) == [
            b"newer", b"older"]


def test_a_put_with_the_read_context_leaves_one_value_everywhere() -> None:
    w = lww_cluster()
    split_writes(w, b"lww/k", b"older", b"newer")
    c = client(w, "n3")
    got = ok(c.call(Op.GET, {"key": b"lww/k"}))
    ok(c.call(Op.PUT, {"key": b"lww/k", "value": b"final", "context": got["context"]}))
    w.run_for(1.0)
    for n in w.nodes:
        assert [unstamp(v)[1] for v in stored_values(w, n, b"lww/k") or []] == [b"final"]


def test_a_node_whose_clock_runs_behind_loses_a_later_write() -> None:
    """The documented caveat: stamps, not real time, decide."""
    w = lww_cluster()
    w.set_skew("n2", -30.0)
    split_writes(w, b"lww/k", b"earlier", b"later-but-behind")
    c = client(w, "n3")
    assert ok(c.call(Op.GET, {"key": b"lww/k", "r": 3}))["values"] == [b"earlier"]


def test_a_delete_reads_a_quorum_and_removes_what_it_saw() -> None:
    w = lww_cluster()
    key = b"lww/gone"
    c = client(w, prefs(w, key)[0])
    ok(c.call(Op.PUT, {"key": key, "value": b"v"}))
    w.run_for(0.5)
    before = sum(sn.node.counters["replica_gets"] for sn in w.nodes.values())
    ok(c.call(Op.DELETE, {"key": key}))
    w.run_for(0.5)
    assert sum(sn.node.counters["replica_gets"] for sn in w.nodes.values()) > before
    for n in w.nodes:
        got = ok(client(w, n, "r").call(Op.GET, {"key": key, "r": 3}))
        assert got["found"] is False and got["values"] == []


def test_nodes_with_other_lww_prefixes_are_named_in_status() -> None:
    w = SimWorld(3)
    w.add_node("n1", lww_prefixes=("lww/",))
    w.add_node("n2", lww_prefixes=("lww/",))
    w.add_node("n3")
    w.run_for(5.0)
    differ = {n: sn.node.status(w.loop.now)["ring"]["lww_prefixes_differ"]
              for n, sn in w.nodes.items()}
    assert differ == {"n1": ["n3"], "n2": ["n3"], "n3": ["n1", "n2"]}
    assert all(sn.node.counters["lww_prefixes_differ"] == len(differ[n])
               for n, sn in w.nodes.items())  # warned once per member
    same = lww_cluster()
    same.run_for(5.0)
    assert all(sn.node.status(same.loop.now)["ring"]["lww_prefixes_differ"] == []
               for sn in same.nodes.values())


def test_a_node_restarted_with_other_prefixes_is_noticed_by_the_others() -> None:
    """Back at the incarnation it had, with other metadata: the first full-state
    exchange that shows it its old entry makes it refute with the new metadata."""
    w = lww_cluster()
    w.run_for(5.0)
    w.crash("n3")
    sn = w.nodes["n3"]
    sn.config = dataclasses.replace(sn.config, lww_prefixes=())
    w.restart("n3")
    w.run_for(120.0)
    differ = {n: s.node.status(w.loop.now)["ring"]["lww_prefixes_differ"]
              for n, s in w.nodes.items()}
    assert differ == {"n1": ["n3"], "n2": ["n3"], "n3": ["n1", "n2"]}


def test_the_simulators_lww_read_check_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that answered LWW reads with a stored value as it is (stamp and all)
    fails the lww-reads check of the shipped LWW scenario; the real one passes."""
    assert Simulation(load_scenario("lww_split_brain"), 1).run().ok

    def stored_oldest(state: DVVSet) -> bytes | None:
        vals = [v for _, _, v in state.dots() if v is not None]
        return min(vals) if vals else None

    monkeypatch.setattr("ringfs.node.lww_newest", stored_oldest)
    report = Simulation(load_scenario("lww_split_brain"), 1).run()
    assert report.failed_checks() == ["lww-reads"]
