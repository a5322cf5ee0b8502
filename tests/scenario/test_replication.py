"""Replication in the simulated world: quorums, siblings, read repair, deletes,
sloppy quorum, forwarding and tombstone reaping, driven through real frames."""

from __future__ import annotations

from typing import Any

import pytest

from ringfs.dvv import decode_stored
from ringfs.node import Node, hint_key
from ringfs.wire import Op
from simulations.world import SimClient, SimWorld


def cluster(n: int, seed: int = 1, **defaults: Any) -> SimWorld:
    w = SimWorld(seed, node_defaults=defaults)
    for i in range(n):
        w.add_node(f"n{i + 1}")
    w.run_for(1.0)
    for sn in w.nodes.values():
        assert len(sn.node.membership.members) == n, "membership did not converge"
    return w


def client(w: SimWorld, node: str, name: str = "c") -> SimClient:
    c = w.add_client(f"{name}{len(w.clients)}")
    c.open(w.nodes[node].address)
    return c


def ok(result: tuple[str, Any]) -> dict[str, Any]:
    outcome, payload = result
    assert outcome == "ok", result
    return payload  # type: ignore[no-any-return]


def stored_values(w: SimWorld, node: str, key: bytes) -> list[bytes] | None:
    rec = w.nodes[node].engine.get(key)
    if rec is None:
        return None
    return decode_stored(rec.meta).live_values()


def prefs(w: SimWorld, key: bytes) -> tuple[str, ...]:
    return w.nodes["n1"].node.membership.ring.preference_list(key, 3)


def put_while_first_primary_is_down(w: SimWorld, key: bytes, first: bytes,
                                     second: bytes) -> tuple[str, SimClient]:
    """Crash the key's first primary and write twice through the second one: the
    first write's failed stream tells the coordinator, so the second goes to a
    fallback with a hint. Returns the crashed primary and the client."""
    pl = prefs(w, key)
    c = client(w, pl[1])
    w.crash(pl[0])
    ok(c.call(Op.PUT, {"key": key, "value": first}))
    w.run_for(1.2)  # the failed stream to the dead primary tells the coordinator
    ok(c.call(Op.PUT, {"key": key, "value": second}))
    w.run_for(0.5)
    return pl[0], c


def test_a_put_reaches_all_three_replicas() -> None:
    w = cluster(3)
    c = client(w, "n1")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    w.run_for(0.5)
    assert all(stored_values(w, n, b"k") == [b"v"] for n in w.nodes)
    assert ok(c.call(Op.GET, {"key": b"k"}))["values"] == [b"v"]


def test_quorums_survive_one_crashed_replica() -> None:
    w = cluster(3)
    c = client(w, "n1")
    w.crash("n3")
    for i in range(20):
        ok(c.call(Op.PUT, {"key": b"k%d" % i, "value": b"v%d" % i}))
    for i in range(20):
        assert ok(c.call(Op.GET, {"key": b"k%d" % i}))["values"] == [b"v%d" % i]


def test_quorum_not_met_says_how_many_replied() -> None:
    w = cluster(3)
    c = client(w, "n1")
    w.crash("n2")
    w.crash("n3")
    # A write with a context goes straight to the replicas: it fails W, but the
    # surviving replica took it (as Dynamo allows), and R=1 reads see it.
    outcome, err = c.call(Op.PUT, {"key": b"k", "value": b"v", "context": b""}, timeout_s=10)
    assert outcome == "error" and err["name"] == "QUORUM_NOT_MET"
    assert err["replied"] < err["needed"] == 2 and err["addressed"] == 3
    assert ok(c.call(Op.GET, {"key": b"k", "r": 1}))["values"] == [b"v"]
    # Now the coordinator knows two replicas are down: refused before anything is written.
    outcome, err = c.call(Op.PUT, {"key": b"k2", "value": b"v"}, timeout_s=10)
    assert outcome == "error" and err["name"] == "QUORUM_NOT_MET"
    assert err == {**err, "replied": 0, "needed": 2, "addressed": 1}
    assert ok(c.call(Op.GET, {"key": b"k2", "r": 1}))["values"] == []


def test_stale_contexts_make_siblings_resolved_everywhere() -> None:
    w = cluster(3)
    a, b = client(w, "n1"), client(w, "n2")
    ok(a.call(Op.PUT, {"key": b"k", "value": b"base"}))
    ctx = ok(a.call(Op.GET, {"key": b"k"}))["context"]
    ok(a.call(Op.PUT, {"key": b"k", "value": b"from-a", "context": ctx}))
    ok(b.call(Op.PUT, {"key": b"k", "value": b"from-b", "context": ctx}))
    got = ok(a.call(Op.GET, {"key": b"k"}))
    assert sorted(got["values"]) == [b"from-a", b"from-b"]
    ok(b.call(Op.PUT, {"key": b"k", "value": b"merged", "context": got["context"]}))
    w.run_for(1.0)
    for n in w.nodes:
        assert stored_values(w, n, b"k") == [b"merged"], n


def test_read_repair_brings_a_stale_replica_up_to_date() -> None:
    w = cluster(3)
    c = client(w, "n1")
    w.crash("n3")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    assert stored_values(w, "n3", b"k") is None
    w.restart("n3")
    w.run_for(3.0)  # n3 rejoins and is reachable again
    assert ok(c.call(Op.GET, {"key": b"k"}))["values"] == [b"v"]
    w.run_for(1.0)
    assert stored_values(w, "n3", b"k") == [b"v"]
    assert w.nodes["n1"].node.counters["read_repairs"] >= 1


def test_read_repair_off_leaves_the_stale_replica() -> None:
    w = cluster(3, read_repair=False, anti_entropy_interval_s=0)
    c = client(w, "n1")
    w.crash("n3")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    w.restart("n3")
    w.run_for(3.0)
    ok(c.call(Op.GET, {"key": b"k"}))
    w.run_for(1.0)
    assert stored_values(w, "n3", b"k") is None


def test_a_deleted_key_never_comes_back_from_a_replica_that_missed_the_delete() -> None:
    w = cluster(3)
    c = client(w, "n1")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    w.run_for(0.5)
    w.net.isolate(w.nodes["n3"].address)
    ctx = ok(c.call(Op.GET, {"key": b"k"}))["context"]
    ok(c.call(Op.DELETE, {"key": b"k", "context": ctx}))
    assert stored_values(w, "n3", b"k") == [b"v"]  # n3 missed it
    w.net.heal()
    w.run_for(3.0)
    # n3 coordinates: its own stale copy is the first answer the coordinator has.
    c3 = client(w, "n3")
    got = ok(c3.call(Op.GET, {"key": b"k"}))
    assert got["values"] == [] and not got["found"]
    w.run_for(1.0)
    assert stored_values(w, "n3", b"k") == []  # repaired to the tombstone
    assert w.nodes["n3"].engine.get(b"k").tombstone  # type: ignore[union-attr]


def test_tombstones_are_reaped_after_the_grace_period_only() -> None:
    w = cluster(3, tombstone_grace_s=5.0)
    c = client(w, "n1")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    ok(c.call(Op.DELETE, {"key": b"k"}))
    w.run_for(0.5)
    ok(c.call(Op.GET, {"key": b"k"}))  # every replica answers with the tombstone
    w.run_for(2.0)
    assert all(w.nodes[n].engine.get(b"k") is not None for n in w.nodes)
    w.run_for(10.0)
    assert all(w.nodes[n].engine.get(b"k") is None for n in w.nodes)


def test_sloppy_quorum_writes_to_a_fallback_with_a_hint() -> None:
    w = cluster(5)
    key = b"sloppy"
    pl = prefs(w, key)
    down, c = put_while_first_primary_is_down(w, key, b"v", b"v2")
    fallbacks = [n for n in w.nodes if n not in pl]
    holders = [n for n in fallbacks
               if w.nodes[n].engine.get(hint_key(down, key)) is not None]
    assert len(holders) == 1, "exactly one fallback keeps the hint"
    assert w.nodes[holders[0]].node.hints == 1
    # Reads consult the fallback too.
    assert ok(c.call(Op.GET, {"key": key, "r": 3}))["values"] == [b"v2"]


def test_writes_at_a_non_replica_are_forwarded() -> None:
    w = cluster(5)
    key = b"forward-me"
    outsider = next(n for n in w.nodes if n not in prefs(w, key))
    c = client(w, outsider)
    ok(c.call(Op.PUT, {"key": key, "value": b"v"}))
    assert w.nodes[outsider].node.counters["forwarded"] == 1
    assert w.nodes[outsider].engine.get(key) is None
    assert ok(c.call(Op.GET, {"key": key}))["values"] == [b"v"]
    ok(c.call(Op.DELETE, {"key": key}))
    assert ok(c.call(Op.GET, {"key": key}))["values"] == []


@pytest.mark.parametrize("r", [1, 2, 3])
def test_per_request_r_and_w(r: int) -> None:
    w = cluster(3)
    c = client(w, "n1")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v", "w": r}))
    assert ok(c.call(Op.GET, {"key": b"k", "r": r}))["values"] == [b"v"]
    outcome, err = c.call(Op.GET, {"key": b"k", "r": 4})
    assert outcome == "error" and err["name"] == "BAD_REQUEST"


def test_whereis_reports_each_replica() -> None:
    w = cluster(3)
    c = client(w, "n2")
    ok(c.call(Op.PUT, {"key": b"k", "value": b"v"}))
    w.run_for(0.5)
    res = ok(c.call(Op.WHEREIS, {"key": b"k"}))
    assert [r["node"] for r in res["replicas"]] == list(prefs(w, b"k"))
    assert all(r["present"] and r["siblings"] == 1 and r["role"] == "primary"
               for r in res["replicas"])


def test_a_blind_put_at_a_stale_coordinator_is_written_again_over_what_replicas_hold(
) -> None:
    w = cluster(3)
    key = b"blind"
    coordinator = prefs(w, key)[0]
    c = client(w, coordinator)
    w.net.isolate(w.nodes[coordinator].address)
    other = client(w, prefs(w, key)[1], "o")
    w.net.heal()
    w.net.partition([w.nodes[coordinator].address],
                    [sn.address for n, sn in w.nodes.items() if n != coordinator])
    outcome, _ = other.call(Op.PUT, {"key": key, "value": b"old"})  # coordinator misses it
    assert outcome == "ok"
    w.net.heal()
    w.run_for(3.0)
    assert stored_values(w, coordinator, key) is None
    node = w.nodes[coordinator].node
    ok(c.call(Op.PUT, {"key": key, "value": b"new"}))  # blind, at the stale coordinator
    # Both other replicas refused the first version (they hold "old", which it had not
    # seen); the second, written over what they answered with, replaced it everywhere.
    assert node.counters["put_conflicts"] == 2
    assert node.counters["put_rewrites"] == 1
    assert ok(c.call(Op.GET, {"key": key, "r": 3}))["values"] == [b"new"]
    w.run_for(0.5)
    for n in prefs(w, key):
        assert stored_values(w, n, key) == [b"new"], n
    ok(c.call(Op.DELETE, {"key": key}))
    w.run_for(0.5)
    assert ok(other.call(Op.GET, {"key": key, "r": 3}))["values"] == []


def test_a_blind_put_asks_no_replica_to_read_and_covers_an_older_stale_copy() -> None:
    w = cluster(3)
    key = b"stale-third"
    pl = prefs(w, key)
    c = client(w, pl[0])
    ok(c.call(Op.PUT, {"key": key, "value": b"v1", "w": 3}))
    w.net.isolate(w.nodes[pl[2]].address)
    ok(c.call(Op.PUT, {"key": key, "value": b"v2"}))  # pl[2] misses it
    w.net.heal()
    w.run_for(3.0)
    assert stored_values(w, pl[2], key) == [b"v1"]
    node = w.nodes[pl[0]].node
    before = [sn.node.counters["replica_gets"] for sn in w.nodes.values()]
    ok(c.call(Op.PUT, {"key": key, "value": b"v3"}))  # blind: no read, one round trip
    w.run_for(0.5)
    assert [sn.node.counters["replica_gets"] for sn in w.nodes.values()] == before
    # The coordinator's copy (v2) covers v1, so the stale third replica took it as is.
    assert node.counters["put_conflicts"] == 0
    # Every replica answered, so the put is forgotten (not kept until its deadline).
    assert not node._puts
    for n in pl:
        assert stored_values(w, n, key) == [b"v3"], n


def test_a_blind_put_acknowledged_before_a_replica_refuses_still_reaches_it() -> None:
    """A replica holding a write that only it took (W=1) refuses a later blind put
    whose coordinator never saw that write, after the put succeeded on the other two
    (it answers late); it is given the write anyway: the two writes end as
    siblings, since neither saw the other (R + W = N for the first, so a read quorum
    of the other two would not have either). Had the refusal come first, the put
    would have been written again over it."""
    w = cluster(3)
    key = b"lonely"
    pl = prefs(w, key)
    lone = client(w, pl[0], "l")
    w.net.partition([w.nodes[pl[0]].address], [w.nodes[n].address for n in pl[1:]])
    ok(lone.call(Op.PUT, {"key": key, "value": b"only-on-first", "w": 1, "context": b""}))
    w.net.heal()
    w.run_for(1.0)
    assert stored_values(w, pl[1], key) is None and stored_values(w, pl[2], key) is None
    c = client(w, pl[1])
    w.pause(pl[0], 0.1)  # it answers after the other two
    ok(c.call(Op.PUT, {"key": key, "value": b"blind"}))
    w.run_for(0.3)
    node = w.nodes[pl[1]].node
    assert node.counters["put_conflicts"] == 1 and node.counters["put_rewrites"] == 0
    assert sorted(stored_values(w, pl[0], key) or []) == [b"blind", b"only-on-first"]
    assert stored_values(w, pl[2], key) == [b"blind"]
    assert sorted(ok(c.call(Op.GET, {"key": key, "r": 3}))["values"]) == [
        b"blind", b"only-on-first"]


def test_a_blind_delete_at_a_coordinator_without_the_key_still_deletes() -> None:
    w = cluster(3)
    key = b"gone"
    pl = prefs(w, key)
    a = client(w, pl[1], "a")
    w.net.isolate(w.nodes[pl[0]].address)
    ok(a.call(Op.PUT, {"key": key, "value": b"v"}))
    w.net.heal()
    w.run_for(3.0)
    assert stored_values(w, pl[0], key) is None
    c = client(w, pl[0])
    ok(c.call(Op.DELETE, {"key": key}))
    w.run_for(0.5)
    assert ok(a.call(Op.GET, {"key": key, "r": 3}))["values"] == []


@pytest.mark.parametrize("faults", [frozenset(), frozenset({"skip_hinted_handoff"})])
def test_hints_go_home_when_the_owner_returns(faults: frozenset[str]) -> None:
    # Anti-entropy would repair the owner too; off, so only hand-off is measured.
    w = SimWorld(3, faults=faults, node_defaults={"anti_entropy_interval_s": 0})
    for i in range(5):
        w.add_node(f"n{i + 1}")
    w.run_for(2.0)
    keys = [b"h%d" % i for i in range(40)]
    down = "n1"
    c = client(w, "n2")
    w.crash(down)
    w.run_for(15.0)  # gossip declares it dead: fallbacks take its writes
    for k in keys:
        ok(c.call(Op.PUT, {"key": k, "value": k}))
    owned = [k for k in keys if down in prefs(w, k)]
    assert owned
    holders = {n: sn.node.hints for n, sn in w.nodes.items() if sn.up}
    assert sum(holders.values()) >= len(owned)
    w.restart(down)
    w.run_for(10.0)
    delivered = all(stored_values(w, down, k) == [k] for k in owned)
    left = sum(sn.node.hints for sn in w.nodes.values())
    if faults:
        assert not delivered and left >= len(owned)
    else:
        assert delivered, "every hint reached its owner"
        assert left == 0, "delivered hints are deleted"


def test_a_forwarded_write_is_forwarded_once_more_then_refused() -> None:
    w = cluster(4, vnodes_per_capacity=64)
    key = next(b"f%d" % i for i in range(100) if "n4" not in prefs(w, b"f%d" % i))
    n4 = w.nodes["n4"].node
    args = {"key": key, "value": b"v"}
    # As if n1 believed n4 a primary (views differ while a ring change spreads).
    n4.on_forward("n1", {"id": 7, "op": int(Op.PUT), "args": args, "hops": 1}, w.now)
    assert n4.counters["forwarded"] == 1  # passed on to a primary of its own view
    w.run_for(1.0)
    assert stored_values(w, prefs(w, key)[0], key) == [b"v"]
    n4.on_forward("n1", {"id": 8, "op": int(Op.PUT), "args": args, "hops": 2}, w.now)
    assert n4.counters["forwarded"] == 1 and n4.counters["error_unavailable"] == 1


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_a_hint_delivered_after_its_key_was_deleted_and_reaped_stays_deleted(
        restart: bool) -> None:
    """A fallback keeps a write for a primary that was down; the key is then deleted
    with a context that covers the write, and the tombstone reaped everywhere before
    the hint arrives. The late hint must not bring the deleted value back, even when
    every primary restarted after the reap."""
    w = cluster(5, tombstone_grace_s=1.0)
    key = b"late-hint"
    pl = prefs(w, key)
    owner, c = put_while_first_primary_is_down(w, key, b"first", b"old")
    holder = next(n for n in w.nodes if n not in pl
                  and w.nodes[n].engine.get(hint_key(owner, key)) is not None)
    w.net.partition([w.nodes[holder].address], [w.nodes[owner].address])
    w.restart(owner)
    w.run_for(5.0)  # the owner is back and seen alive; the hint cannot reach it yet
    got = ok(c.call(Op.GET, {"key": key, "r": 3}))
    assert got["values"] == [b"old"]
    ok(c.call(Op.DELETE, {"key": key, "context": got["context"]}))
    w.run_for(0.5)
    ok(c.call(Op.GET, {"key": key, "r": 3}))  # every primary answers with the tombstone
    w.run_for(10.0)
    assert all(w.nodes[n].engine.get(key) is None for n in pl), "tombstone reaped"
    assert w.nodes[holder].node.hints == 1
    if restart:
        for n in pl:
            w.nodes[n].engine.sync()  # the reap reached the disk
            w.crash(n)
            w.restart(n)
        w.run_for(5.0)
        c = client(w, pl[0], "after")
    w.net.heal()
    w.run_for(10.0)
    assert w.nodes[holder].node.hints == 0, "the hint was handed off"
    got = ok(c.call(Op.GET, {"key": key, "r": 3}))
    assert got["values"] == [] and not got["found"], "the deleted value came back"


def stale_coordinator(w: SimWorld, key: bytes) -> tuple[str, ...]:
    """Write "old" through the key's second primary while the first is cut off."""
    pl = prefs(w, key)
    other = client(w, pl[1], "o")
    w.net.partition([w.nodes[pl[0]].address], [w.nodes[n].address for n in pl[1:]])
    ok(other.call(Op.PUT, {"key": key, "value": b"old"}))  # the coordinator misses it
    w.net.heal()
    w.run_for(3.0)
    assert stored_values(w, pl[0], key) is None
    return pl


def blind_put_in_flight(w: SimWorld, node_name: str, key: bytes,
                        value: bytes) -> tuple[Node, list[tuple[str, Any]]]:
    """Send a blind put to `node_name` and run until it was taken and sent to the
    replicas; the node, and where the outcome will be."""
    node = w.nodes[node_name].node
    out: list[tuple[str, Any]] = []
    client(w, node_name).request(Op.PUT, {"key": key, "value": value},
                                 lambda o, p: out.append((o, p)))
    w.loop.run_while(lambda: not node._puts, w.now + 1.0)
    return node, out


def test_a_stale_blind_put_is_written_again_after_its_client_went_away() -> None:
    w = cluster(3)
    key = b"orphan"
    pl = stale_coordinator(w, key)
    node, _ = blind_put_in_flight(w, pl[0], key, b"new")
    for conn in [k for k, cn in node._conns.items() if cn.peer is None and k >= 0]:
        node.client_disconnected(conn, w.now)
    w.run_for(1.0)
    assert node.counters["put_rewrites"] == 1
    assert node.counters["peer_malformed"] == 0 and node.counters["internal_errors"] == 0
    for n in pl:
        assert stored_values(w, n, key) == [b"new"], n


def test_a_stale_blind_put_is_written_again_without_waiting_for_a_silent_replica() -> None:
    w = cluster(3)
    key = b"stale-slow"
    pl = stale_coordinator(w, key)
    c = client(w, pl[0])
    w.pause(pl[2], 8.0)  # silent, not unreachable
    t0 = w.now
    ok(c.call(Op.PUT, {"key": key, "value": b"new"}, timeout_s=10.0))
    # Itself and the refusing replica are R: written again at once, acknowledged by
    # the two of them, as a read quorum of those two would have allowed.
    assert w.now - t0 < 1.0
    assert w.nodes[pl[0]].node.counters["put_rewrites"] == 1
    assert stored_values(w, pl[1], key) == [b"new"]


def test_a_read_only_coordinator_does_not_write_a_stale_blind_put_again() -> None:
    w = cluster(3)
    key = b"ro"
    pl = stale_coordinator(w, key)
    node, out = blind_put_in_flight(w, pl[0], key, b"new")
    node.on_sync_failed("injected", w.now)
    w.run_for(2.0)
    assert out and out[0][0] == "error" and out[0][1]["name"] == "STORAGE_ERROR", out
    assert stored_values(w, pl[1], key) == [b"old"]  # no second version went out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_blind_put_through_a_fallback_still_supersedes_what_a_primary_answers(
        seed: int) -> None:
    """"old" was acknowledged by two primaries; one of them is down and a fallback
    stands in. The stale coordinator's blind put hears the other primary's refusal
    and writes again over it, whichever of the fallback's acceptance and the
    refusal comes first."""
    w = SimWorld(seed, node_defaults={"anti_entropy_interval_s": 0})
    for i in range(4):
        w.add_node(f"n{i + 1}")
    w.run_for(2.0)
    key = b"sloppy"
    a, b, p = prefs(w, key)
    other = client(w, b, "o")
    w.net.isolate(w.nodes[a].address)
    ok(other.call(Op.PUT, {"key": key, "value": b"old"}))
    w.net.heal()
    w.run_for(2.0)
    assert stored_values(w, a, key) is None
    w.crash(p)
    w.run_for(15.0)  # p is declared dead: a fallback stands in
    ok(client(w, a).call(Op.PUT, {"key": key, "value": b"new"}))
    w.run_for(1.0)
    assert stored_values(w, b, key) == [b"new"]


def test_a_key_handed_off_and_regained_gets_new_dots_from_its_old_coordinator() -> None:
    """n1 coordinates writes of some keys, hands them to n4 when n4 joins and drops
    its copies, then owns them again when n4 leaves before handing them back. Its
    next blind put must not issue its first dot again: the other replicas still
    hold that dot, for the old value (they would keep it and ignore the new one)."""
    cfg: dict[str, Any] = {"anti_entropy_interval_s": 0, "ownership_settle_s": 1.0,
                           "vnodes_per_capacity": 64, "read_repair": False}
    w = cluster(3, **cfg)
    c1 = client(w, "n1")
    keys = [b"g%d" % i for i in range(60)]
    for k in keys:
        ok(c1.call(Op.PUT, {"key": k, "value": b"v1-" + k}))  # dot (n1@.., 1)
    w.run_for(1.0)
    w.add_node("n4", **cfg)
    w.run_for(20.0)  # n1 hands off what it no longer replicates, and drops it
    ring = w.nodes["n1"].node.membership.ring
    moved = [k for k in keys
             if "n1" not in ring.preference_list(k, 3) and stored_values(w, "n1", k) is None]
    assert moved, "no key moved off n1"
    key = moved[0]
    w.net.partition([w.nodes["n4"].address], [w.nodes["n1"].address])
    ok(client(w, "n4", "x").call(Op.LEAVE, {}))  # its handoff back to n1 is blocked
    w.run_for(3.0)
    pl = w.nodes["n1"].node.membership.ring.preference_list(key, 3)
    assert "n1" in pl and stored_values(w, "n1", key) is None
    ok(c1.call(Op.PUT, {"key": key, "value": b"new"}))
    w.run_for(1.0)
    for n in pl:
        assert stored_values(w, n, key) == [b"new"], n
