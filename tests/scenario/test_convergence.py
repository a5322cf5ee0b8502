"""Convergence in the simulated world: the integration cases of
tests/integration/test_convergence.py (a replica back from a crash, records lost or
rolled back on one disk, a cluster grown by one node and shrunk back under load),
each also with network partitions, on virtual time.

Every bound is simulated seconds after the fault ended, so the tests are exact and
fast; rings use 64 virtual nodes per node to keep hash trees small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import pytest

from ringfs.antientropy import is_local_key
from ringfs.dvv import DVVSet, decode_stored
from ringfs.storage.memory import MemoryEngine
from ringfs.wire import Op
from simulations.world import SimClient, SimWorld
from tests.scenario.test_replication import client, cluster

KEYS = 1000
CONVERGE_S = 30.0
VNODES = 64


def world(n: int, seed: int = 1, **defaults: Any) -> SimWorld:
    w = cluster(n, seed, **{"vnodes_per_capacity": VNODES, **defaults})
    w.run_for(1.0)
    return w


def put_all(w: SimWorld, c: SimClient, items: dict[bytes, bytes], w_: int = 2,
            timeout_s: float = 30.0) -> set[bytes]:
    """Send every put at once (pipelined) and run until all answered; the acked keys."""
    acked: set[bytes] = set()
    answered = [0]

    def done(key: bytes) -> Callable[[str, Any], None]:
        def cb(outcome: str, payload: Any) -> None:
            answered[0] += 1
            if outcome == "ok":
                acked.add(key)
        return cb

    for k, v in items.items():
        c.request(Op.PUT, {"key": k, "value": v, "w": w_}, done(k), timeout_s)
    w.loop.run_while(lambda: answered[0] < len(items), w.now + timeout_s + 1)
    return acked


def state(w: SimWorld, node: str, key: bytes) -> DVVSet | None:
    rec = w.nodes[node].engine.get(key)
    return None if rec is None else decode_stored(rec.meta)


def values(w: SimWorld, node: str, key: bytes) -> list[bytes] | None:
    st = state(w, node, key)
    return None if st is None else st.live_values()


def holds_all(w: SimWorld, node: str, items: dict[bytes, bytes]) -> bool:
    return all(values(w, node, k) == [v] for k, v in items.items())


def run_until(w: SimWorld, cond: Callable[[], bool], limit_s: float, what: str) -> float:
    """Run the world until `cond`, checking every 0.25 simulated s; the time it took."""
    start = w.now
    while not cond():
        if w.now - start > limit_s:
            raise AssertionError(f"{what} did not happen within {limit_s:g} simulated s")
        w.run_for(0.25)
    return w.now - start


def pl(w: SimWorld, key: bytes, via: str = "n1") -> tuple[str, ...]:
    return w.nodes[via].node.membership.ring.preference_list(key, 3)


def keys_on(w: SimWorld, node: str, count: int, prefix: str) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while len(out) < count:
        k = f"{prefix}{i}".encode()
        if node in pl(w, k):
            out.append(k)
        i += 1
    return out


def declared_dead(w: SimWorld, name: str) -> bool:
    return all(sn.node.membership.members[name].state == "dead"
               for sn in w.nodes.values() if sn.up and sn.name != name)


def stored(w: SimWorld, node: str) -> set[bytes]:
    return {k for k, _ in w.nodes[node].engine.iter_range(0, 0) if not is_local_key(k)}


def placement_errors(w: SimWorld, nodes: Iterable[str]) -> list[str]:
    """Keys not held by exactly their preference list (under the first node's ring)."""
    nodes = list(nodes)
    held: dict[bytes, set[str]] = {}
    for n in nodes:
        for k in stored(w, n):
            held.setdefault(k, set()).add(n)
    return [f"{k!r} on {sorted(h)}, list {pl(w, k, nodes[0])}" for k, h in held.items()
            if h != set(pl(w, k, nodes[0]))]


def hints_left(w: SimWorld) -> int:
    return sum(sn.node.hints for sn in w.nodes.values() if sn.up)


# -- (a) a replica that missed 1,000 writes ----------------------------------------------

def test_hints_bring_back_a_crashed_replica() -> None:
    w = world(4, anti_entropy_interval_s=0)
    items = {k: b"v-" + k for k in keys_on(w, "n3", KEYS, "a")}
    w.crash("n3")
    run_until(w, lambda: declared_dead(w, "n3"), 60.0, "n3 declared dead")
    assert put_all(w, client(w, "n1"), items) == set(items)
    w.run_for(1.0)
    assert hints_left(w) == KEYS
    w.restart("n3")
    run_until(w, lambda: holds_all(w, "n3", items), CONVERGE_S, "n3 holding every key")
    run_until(w, lambda: hints_left(w) == 0, 5.0, "delivered hints deleted")
    assert w.nodes["n3"].node.counters["aae_keys_repaired"] == 0


def test_anti_entropy_alone_brings_back_a_crashed_replica() -> None:
    w = world(3, hinted_handoff=False)  # anti-entropy at its defaults
    items = {f"b{i}".encode(): b"v%d" % i for i in range(KEYS)}
    w.crash("n3")
    assert put_all(w, client(w, "n1"), items) == set(items)
    w.restart("n3")
    run_until(w, lambda: holds_all(w, "n3", items), CONVERGE_S, "n3 holding every key")


def test_hints_off_and_anti_entropy_off_leave_the_replica_behind() -> None:
    """The control: without either mechanism (and no reads) nothing repairs n3."""
    w = world(3, hinted_handoff=False, anti_entropy_interval_s=0)
    items = {f"b{i}".encode(): b"v%d" % i for i in range(100)}
    w.crash("n3")
    assert put_all(w, client(w, "n1"), items) == set(items)
    w.restart("n3")
    w.run_for(CONVERGE_S)
    assert not any(values(w, "n3", k) for k in items)


@pytest.mark.parametrize("hinted_handoff", [True, False])
def test_replicas_converge_after_a_partition_with_writes_on_both_sides(
        hinted_handoff: bool) -> None:
    """A 2/3 split of five nodes; both sides take writes through sloppy quorum, some of
    them to the same keys. After the heal every key's primaries hold the same state,
    with every acknowledged value (concurrent writes to one key become siblings)."""
    w = world(5, hinted_handoff=hinted_handoff)
    left, right = ["n1", "n2"], ["n3", "n4", "n5"]
    w.net.partition([w.nodes[n].address for n in left], [w.nodes[n].address for n in right])
    run_until(w, lambda: all(w.nodes[a].node.membership.members[b].state == "dead"
                             for a in left for b in right), 60.0, "each side to see the other dead")
    a, b = client(w, "n1"), client(w, "n3")
    keys = [f"k{i}".encode() for i in range(600)]
    # A write needs one of its key's primaries on the writer's side to coordinate it:
    # the others fail (UNAVAILABLE), and only acknowledged writes are checked.
    acked_left = put_all(w, a, {k: b"left " + k for k in keys[:400]})
    acked_right = put_all(w, b, {k: b"right " + k for k in keys[200:]})
    assert len(acked_left) > 200 and len(acked_right) > 200
    assert acked_left & acked_right, "some keys were written on both sides"
    w.net.heal()

    def converged() -> bool:
        for k in keys:
            states = [state(w, n, k) for n in pl(w, k)]
            if any(s != states[0] for s in states):
                return False
        return True

    run_until(w, converged, CONVERGE_S, "every key's primaries to agree")
    for k in keys:
        # Every acknowledged value is there; writes to one key from both sides are
        # concurrent, so they are siblings (a failed write may have landed too).
        acked = ({b"left " + k} if k in acked_left else set()) | (
            {b"right " + k} if k in acked_right else set())
        got = set(values(w, pl(w, k)[0], k) or [])
        assert acked <= got <= {b"left " + k, b"right " + k}, (k, got, acked)
    if hinted_handoff:
        run_until(w, lambda: hints_left(w) == 0, 10.0, "every hint delivered")


# -- (b) records lost or rolled back on one replica's disk -----------------------------

def _stored_meta(st: DVVSet) -> bytes:
    return msgpack.packb(st.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("damage", ["lost-and-stale", "wiped"])
def test_anti_entropy_restores_damaged_records(damage: str) -> None:
    w = world(3, anti_entropy_interval_s=1.0)
    c = client(w, "n1")
    old = {f"c{i}".encode(): b"old %d" % i for i in range(KEYS)}
    assert put_all(w, c, old, w_=3) == set(old)
    stale = {k: w.nodes["n3"].engine.get(k) for k in old}
    items = {k: b"new " + k for k in old}
    assert put_all(w, c, items, w_=3) == set(items)
    w.crash("n3")
    sn = w.nodes["n3"]
    keys = sorted(items)
    if damage == "wiped":
        sn.engine = MemoryEngine()  # a replaced disk: the node comes back empty
    else:
        for k in keys[::10]:
            sn.engine.purge(k)  # records gone
        for k in keys[5::10]:
            rec = stale[k]
            assert rec is not None
            sn.engine.put(k, rec.value, rec.meta)  # records rolled back to an older state
        sn.engine.sync()
    assert not holds_all(w, "n3", items)
    # Repair goes on while n3 is cut off from one of its two peers for a while.
    w.restart("n3")
    w.net.partition([sn.address], [w.nodes["n1"].address])
    w.run_for(5.0)
    w.net.heal()
    run_until(w, lambda: holds_all(w, "n3", items), CONVERGE_S, "n3 holding every key")
    assert sum(x.node.counters["aae_keys_repaired"] for x in w.nodes.values()) >= KEYS // 5


# -- (c) grow to four nodes and shrink back to three under a write load --------------

class Load:
    """A client writing new keys at a steady rate, each followed by an overwrite with
    the context the first write returned; remembers every attempt and every ack."""

    def __init__(self, w: SimWorld, c: SimClient, rate_per_s: float = 100.0) -> None:
        self.w, self.c = w, c
        self.period = 1.0 / rate_per_s
        self.attempted: dict[bytes, list[bytes]] = {}
        self.acked: dict[bytes, bytes] = {}
        self.running = False
        self.outstanding = 0
        self.i = 0

    def start(self) -> None:
        self.running = True
        self.w.loop.call_later(self.period, self._tick)

    def stop(self) -> None:
        self.running = False
        self.w.loop.run_while(lambda: self.outstanding > 0, self.w.now + 30)

    def _tick(self) -> None:
        if not self.running:
            return
        key = b"w%d" % self.i
        self.i += 1
        self._put(key, key + b" first", None)
        self.w.loop.call_later(self.period, self._tick)

    def _put(self, key: bytes, value: bytes, ctx: bytes | None) -> None:
        self.attempted.setdefault(key, []).append(value)
        args: dict[str, Any] = {"key": key, "value": value, "w": 2}
        if ctx is not None:
            args["context"] = ctx
        self.outstanding += 1

        def done(outcome: str, payload: Any) -> None:
            self.outstanding -= 1
            if outcome != "ok":
                return
            self.acked[key] = value
            if ctx is None and payload.get("context") and self.running:
                self._put(key, key + b" second", payload["context"])

        self.c.request(Op.PUT, args, done, 10.0)

    def lost(self, w: SimWorld, nodes: list[str]) -> list[str]:
        """Acked writes neither present on their primaries nor superseded by a later one."""
        out = []
        for k, v in self.acked.items():
            later = self.attempted[k][self.attempted[k].index(v) + 1:]
            for n in pl(w, k, nodes[0]):
                got = values(w, n, k) or []
                if v not in got and not set(got) & set(later):
                    out.append(f"{k!r}={v!r} on {n}: {got}")
        return out


def handoff_idle(w: SimWorld, nodes: Iterable[str]) -> bool:
    return all(w.nodes[n].node.repair.status()["handoff"]["state"] == "idle"
               and w.nodes[n].node.hints == 0 for n in nodes)


@pytest.mark.parametrize("seed", [1, 2])
def test_grow_and_shrink_under_load_with_partitions(seed: int) -> None:
    w = world(3, seed, anti_entropy_interval_s=1.0, ownership_settle_s=1.0)
    three = ["n1", "n2", "n3"]
    c = client(w, "n1")
    base = {f"p{i}".encode(): b"value %d" % i for i in range(KEYS)}
    assert put_all(w, c, base) == set(base)
    load = Load(w, client(w, "n2"))
    for k, v in base.items():
        load.attempted[k] = [v]
        load.acked[k] = v
    load.start()
    w.run_for(1.0)

    w.add_node("n4")
    four = [*three, "n4"]
    # The new node loses n1 for a while just as keys start moving to it.
    w.run_for(1.5)
    w.net.partition([w.nodes["n4"].address], [w.nodes["n1"].address])
    w.run_for(3.0)
    w.net.heal()
    w.run_for(3.0)
    load.stop()
    run_until(w, lambda: handoff_idle(w, four) and not placement_errors(w, four), 30.0,
              "keys placed on the four-node ring")
    moved = sum(w.nodes[n].node.repair.moved_keys for n in three)
    assert moved > KEYS // 10, "the old nodes handed keys to the new one"
    assert not load.lost(w, four)

    load.start()
    w.run_for(1.0)
    leaver = client(w, "n4")
    outcome, res = leaver.call(Op.LEAVE, {})
    assert outcome == "ok" and res["leaving"], res
    # While it hands its keys over, the leaving node is cut off from n2 for a while.
    w.run_for(0.5)
    w.net.partition([w.nodes["n4"].address], [w.nodes["n2"].address])
    w.run_for(3.0)
    w.net.heal()
    run_until(w, lambda: not w.nodes["n4"].up, 60.0, "n4 to hand everything over and stop")
    w.run_for(1.0)
    load.stop()
    assert len(load.acked) > KEYS + 500
    run_until(w, lambda: handoff_idle(w, three) and not placement_errors(w, three), 30.0,
              "keys placed on the three-node ring again")
    assert all(len(w.nodes[n].node.membership.ring) == 3 for n in three)
    assert not load.lost(w, three)
    assert stored(w, "n4") == set(), "the node that left kept nothing"


# -- handoff pace ------------------------------------------------------------------------

def test_handoff_is_limited_by_the_rate_limit_not_by_the_tick() -> None:
    """Small keys, a fast network and disks: nothing but repair_bytes_per_s (32 MiB/s)
    should bound how fast a leaving node hands its keys over; 2,000 keys/s is far
    below what the network and the simulated fsyncs allow with 64 keys in flight."""
    w = world(4, ownership_settle_s=1.0)
    items = {f"h{i}".encode(): b"v" for i in range(4000)}
    assert put_all(w, client(w, "n1"), items) == set(items)
    w.run_for(2.0)
    held = len(stored(w, "n4"))
    outcome, res = client(w, "n4").call(Op.LEAVE, {})
    assert outcome == "ok", res
    took = run_until(w, lambda: w.nodes["n4"].node.departed, 60.0, "n4 to hand over")
    repair = w.nodes["n4"].node.repair
    assert repair.moved_keys == held
    assert held / took >= 2000, f"{held} keys in {took:.2f} simulated s"
