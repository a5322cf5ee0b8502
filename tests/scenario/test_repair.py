"""Anti-entropy exchanges and LEAVE in the simulated world: the mechanics.

(The convergence cases with crashes, corruption, growth and partitions are in
test_convergence.py.)
"""

from __future__ import annotations

from ringfs.antientropy import is_local_key
from ringfs.peer import PeerMsg
from ringfs.wire import Op
from tests.scenario.test_replication import client, cluster, ok, stored_values


def test_an_idle_cluster_exchanges_one_root_hash_and_finds_nothing() -> None:
    w = cluster(3, anti_entropy_interval_s=1.0)
    c = client(w, "n1")
    for i in range(50):
        ok(c.call(Op.PUT, {"key": b"k%d" % i, "value": b"v"}))
    w.run_for(10.0)
    n1 = w.nodes["n1"].node
    before = dict(n1.counters)
    w.run_for(10.0)
    started = n1.counters["aae_exchanges"] - before.get("aae_exchanges", 0)
    same = n1.counters["aae_in_sync"] - before.get("aae_in_sync", 0)
    assert started >= 5 and same == started  # every exchange stopped at the root
    assert n1.counters["aae_bytes"] == before.get("aae_bytes", 0)


def test_anti_entropy_alone_repairs_a_replica_that_missed_writes() -> None:
    w = cluster(3, anti_entropy_interval_s=1.0, read_repair=False, hinted_handoff=False)
    c = client(w, "n1")
    w.crash("n3")
    keys = [b"m%d" % i for i in range(100)]
    for k in keys:
        ok(c.call(Op.PUT, {"key": k, "value": k}))
    ok(c.call(Op.DELETE, {"key": keys[0]}))
    w.restart("n3")
    w.run_for(15.0)
    assert all(stored_values(w, "n3", k) == [k] for k in keys[1:])
    assert stored_values(w, "n3", keys[0]) == []  # the tombstone travelled too
    assert w.nodes["n3"].node.counters["aae_keys_repaired"] + sum(
        w.nodes[n].node.counters["aae_keys_repaired"] for n in ("n1", "n2")) >= len(keys)


def test_switched_off_anti_entropy_repairs_nothing() -> None:
    w = cluster(3, anti_entropy_interval_s=0, read_repair=False, hinted_handoff=False)
    c = client(w, "n1")
    w.crash("n3")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    w.restart("n3")
    w.run_for(15.0)
    assert stored_values(w, "n3", b"k") is None


def test_leave_hands_everything_over_and_stops_the_node() -> None:
    w = cluster(4, anti_entropy_interval_s=1.0, ownership_settle_s=1.0,
                vnodes_per_capacity=64)
    c = client(w, "n1")
    keys = [b"l%d" % i for i in range(200)]
    for k in keys:
        ok(c.call(Op.PUT, {"key": k, "value": k}))
    leaver = client(w, "n4", "x")
    got = ok(leaver.call(Op.LEAVE, {}))
    assert got["leaving"] is True
    assert ok(leaver.call(Op.LEAVE, {}))["leaving"] is True  # idempotent
    w.run_for(30.0)
    assert not w.nodes["n4"].up and w.nodes["n4"].departed
    assert [k for k, _ in w.nodes["n4"].engine.iter_range(0, 0)
            if not is_local_key(k)] == []  # only its own bookkeeping is left
    ring = w.nodes["n1"].node.membership.ring
    assert "n4" not in ring
    for k in keys:
        holders = sorted(n for n in ("n1", "n2", "n3") if stored_values(w, n, k) == [k])
        assert holders == sorted(ring.preference_list(k, 3))
        assert ok(c.call(Op.GET, {"key": k}))["values"] == [k]
    states = {m.name: m.state for m in w.nodes["n1"].node.membership.members.values()}
    assert states.get("n4", "left") == "left"


def test_a_leave_interrupted_by_a_crash_resumes_after_the_restart() -> None:
    # A tight rate limit keeps the handoff going long enough to crash in the middle.
    w = cluster(4, anti_entropy_interval_s=1.0, ownership_settle_s=1.0,
                vnodes_per_capacity=64, repair_bytes_per_s=8192)
    c = client(w, "n1")
    keys = [b"r%d" % i for i in range(150)]
    for k in keys:
        ok(c.call(Op.PUT, {"key": k, "value": k * 100}))
    ok(client(w, "n4", "x").call(Op.LEAVE, {}))
    w.run_for(1.5)
    n4 = w.nodes["n4"].node
    assert n4.repair.moved_keys > 0 and not n4.departed, "crash in the middle of the handoff"
    w.crash("n4")
    w.run_for(2.0)
    w.restart("n4")
    assert w.nodes["n4"].node.repair.leaving  # the intent survived the crash
    w.run_for(60.0)
    assert w.nodes["n4"].departed and not w.nodes["n4"].up
    ring = w.nodes["n1"].node.membership.ring
    assert "n4" not in ring
    for k in keys:
        holders = sorted(n for n in ("n1", "n2", "n3") if stored_values(w, n, k) == [k * 100])
        assert holders == sorted(ring.preference_list(k, 3))


def test_the_last_member_cannot_leave() -> None:
    w = cluster(1)
    c = client(w, "n1")
    outcome, err = c.call(Op.LEAVE, {})
    assert outcome == "error" and err["name"] == "UNAVAILABLE"
    assert w.nodes["n1"].up


def test_bit_rot_is_never_served_and_anti_entropy_restores_the_damaged_records() -> None:
    # A fast scrub finds the damage no request reads (64 vnodes: 192 arcs).
    w = cluster(3, anti_entropy_interval_s=1.0, read_repair=False, scrub_interval_s=0.05,
                vnodes_per_capacity=64)
    c = client(w, "n1")
    keys = [b"b%d" % i for i in range(60)]
    for k in keys:
        ok(c.call(Op.PUT, {"key": k, "value": k}))
    w.run_for(1.0)
    disk = w.nodes["n2"].engine
    rotten = [k for k in keys[::3] if disk.rot(k)]
    assert len(rotten) == 20
    # A damaged record is found on its next read and never served.
    assert disk.get(rotten[0]) is None and rotten[0] in disk.needs_repair()
    w.run_for(20.0)
    missing = [k for k in keys if stored_values(w, "n2", k) != [k]]
    assert not missing
    assert disk.needs_repair() == frozenset()
    assert disk.stats().corrupt_records == len(rotten)
    # Its lost copies held its counters: its next write of one of them uses a new actor.
    n2 = w.nodes["n2"].node
    assert "." not in n2.actor
    ok(client(w, "n2", "d").call(Op.PUT, {"key": rotten[1], "value": b"new", "w": 3}))
    assert n2.actor.endswith(".1")  # n2, a primary of every key here, coordinated it


def test_without_anti_entropy_damaged_records_stay_missing() -> None:
    w = cluster(3, anti_entropy_interval_s=0, read_repair=False)
    c = client(w, "n1")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    w.run_for(1.0)
    assert w.nodes["n2"].engine.rot(b"k")
    w.run_for(10.0)
    assert stored_values(w, "n2", b"k") is None


def test_an_exchange_never_hands_out_hints_or_keys_the_asker_does_not_replicate() -> None:
    w = cluster(4, vnodes_per_capacity=64)
    n1 = w.nodes["n1"].node
    ring = n1.membership.ring
    other = next(b"o%d" % i for i in range(200)
                 if "n1" in ring.preference_list(b"o%d" % i, 3)
                 and "n2" not in ring.preference_list(b"o%d" % i, 3))
    c = client(w, "n1")
    ok(c.call(Op.PUT, {"key": other, "value": b"secret"}))
    w.run_for(0.5)
    hint = b"\x00hn9\x00" + other
    n1.on_aae_request("n2", {"id": 1, "step": "sync", "ring": ring.digest, "n": 3,
                             "records": [], "want": [other, hint]}, w.now)
    sent = [e for e in n1.drain_outbox() if type(e).__name__ == "PeerSend"]
    assert sent and all(b"secret" not in e.frame for e in sent)


def test_a_large_repair_is_not_stalled_by_cut_key_lists() -> None:
    # Ten keys per exchange against 600 missing: the key lists of the leaves asked
    # for are longer than one reply carries, and the repair must still finish.
    w = cluster(3, anti_entropy_interval_s=1.0, read_repair=False, hinted_handoff=False,
                anti_entropy_max_keys=10, vnodes_per_capacity=16, scrub_interval_s=0)
    c = client(w, "n1")
    w.crash("n3")
    keys = [b"key%05d" % i for i in range(600)]
    for k in keys:
        ok(c.call(Op.PUT, {"key": k, "value": k, "context": b""}))
    w.restart("n3")
    w.run_for(60.0)
    assert all(stored_values(w, "n3", k) == [k] for k in keys)


def test_a_copy_stored_on_a_node_that_does_not_own_it_is_handed_on() -> None:
    w = cluster(4, anti_entropy_interval_s=1.0, ownership_settle_s=1.0,
                vnodes_per_capacity=16)
    ring = w.nodes["n1"].node.membership.ring
    key = next(b"s%d" % i for i in range(1000)
               if "n4" not in ring.preference_list(b"s%d" % i, 3))
    ok(client(w, "n1").call(Op.PUT, {"key": key, "value": b"v"}))
    w.run_for(10.0)  # every handoff pass has long finished
    # A coordinator working from a stale ring replicates to n4, which does not own it.
    n1 = w.nodes["n1"].node
    state = n1._load(key)
    assert state is not None
    n1._send("n4", PeerMsg.REPLICA_PUT, {"id": 0, "key": key, "state": state.to_wire()})
    w.run_for(0.5)
    assert stored_values(w, "n4", key) == [b"v"]
    w.run_for(10.0)
    assert stored_values(w, "n4", key) is None  # handed to its owners and dropped
    assert w.nodes["n4"].node.counters["foreign_writes"] >= 1


def test_damage_found_by_a_replica_write_still_protects_the_counters() -> None:
    w = cluster(3, anti_entropy_interval_s=0, read_repair=False, hinted_handoff=False)
    b = client(w, "n2", "b")
    w.crash("n1")
    ok(b.call(Op.PUT, {"key": b"k", "value": b"X", "context": b""}))  # dot (n2@1, 1)
    w.restart("n1")
    w.run_for(3.0)
    a = client(w, "n1", "a")
    assert w.nodes["n2"].engine.rot(b"k")
    ok(a.call(Op.PUT, {"key": b"k", "value": b"Y", "context": b""}))  # merged over the rot
    ok(b.call(Op.PUT, {"key": b"k", "value": b"Z", "context": b""}))
    # X was acknowledged and nothing that saw it overwrote it: it must survive.
    got = ok(b.call(Op.GET, {"key": b"k", "r": 3}))["values"]
    assert b"X" in got and b"Z" in got
