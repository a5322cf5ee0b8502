"""Property tests for ringfs.dvv (dotted version vector sets).

The states under test are never made up: a small simulated cluster produces
them. Replicas hold a DVVSet each; writers read a replica, then (after any
interleaving) write through a coordinator with the context they read; replicas
exchange states by `sync` in any order. Every state is checked against an exact
oracle computed from the log of writes:

* the history of a state is every write whose dot its clock covers;
* a write is superseded when some write in that history was made with a context
  covering its dot;
* the live siblings are exactly the writes of the history that are not
  superseded.

Then siblings can only be writes that are concurrent (neither's context covers
the other) and no write is ever lost while nothing supersedes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfs.dvv import (
    DVVSet,
    Value,
    context_descends,
    decode_context,
    decode_stored,
    encode_context,
    merge_contexts,
)
from tests.dvv_reference import covers_values, reuses_dots_of

Dot = tuple[str, int]


@dataclass(frozen=True)
class Write:
    """One write as the coordinator performed it."""

    node: str
    counter: int
    value: Value
    context: Mapping[str, int]
    writer: int

    @property
    def dot(self) -> Dot:
        return (self.node, self.counter)

    def covers(self, dot: Dot) -> bool:
        """Whether this write's context has seen `dot` (so the write supersedes it)."""
        return self.context.get(dot[0], 0) >= dot[1]


@dataclass
class Cluster:
    """Replicas, writers and the log of every write, driven by hypothesis."""

    nodes: list[str]
    writers: int
    read_your_writes: bool
    states: dict[str, DVVSet] = field(default_factory=dict)
    log: list[Write] = field(default_factory=list)
    pending: dict[int, dict[str, int]] = field(default_factory=dict)
    last_dot: dict[int, Dot] = field(default_factory=dict)
    pool: list[DVVSet] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.states = {x: DVVSet() for x in self.nodes}
        self.pool = [DVVSet()]

    def live(self, state: DVVSet) -> set[tuple[str, int, Value]]:
        """The oracle: live (node, counter, value) triples for `state`'s clock."""
        clock = state.context()
        history = [w for w in self.log if clock.get(w.node, 0) >= w.counter]
        return {
            (w.node, w.counter, w.value)
            for w in history
            if not any(other.covers(w.dot) for other in history)
        }

    def check(self, state: DVVSet) -> None:
        assert set(state.dots()) == self.live(state)
        assert state.sibling_count() == len(list(state.dots())) == len(state.values())
        self.pool.append(state)

    def readable_from(self, writer: int) -> list[str]:
        """Replicas the writer may read: with read-your-writes, those holding its last write."""
        dot = self.last_dot.get(writer)
        if not self.read_your_writes or dot is None:
            return self.nodes
        return [x for x in self.nodes if self.states[x].context().get(dot[0], 0) >= dot[1]]

    def step(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(("read", "write", "sync", "sync")))
        writer = data.draw(st.integers(0, self.writers - 1))
        if kind == "read" and writer not in self.pending:
            replica = data.draw(st.sampled_from(self.readable_from(writer)))
            self.pending[writer] = self.states[replica].context()
        elif kind == "write" and writer in self.pending:
            context = self.pending.pop(writer)
            node = data.draw(st.sampled_from(self.nodes))
            value = None if data.draw(st.integers(0, 9)) == 0 else f"v{len(self.log)}".encode()
            before = self.states[node]
            after = before.update(context, value, node)
            write = Write(node, after.counter(node), value, dict(context), writer)
            # The coordinator's new dot is fresh and holds the value.
            assert write.counter == before.counter(node) + 1
            assert (node, write.counter, value) in set(after.dots())
            self.log.append(write)
            self.last_dot[writer] = write.dot
            self.states[node] = after
            self.check(after)
        elif kind == "sync":
            a, b = data.draw(st.sampled_from(self.nodes)), data.draw(st.sampled_from(self.nodes))
            merged = self.states[a].sync(self.states[b])
            if data.draw(st.booleans()):
                self.states[b] = merged
            self.states[a] = merged
            self.check(merged)


cluster_shape = st.tuples(st.integers(1, 4), st.integers(1, 4))


def run(data: st.DataObject, *, read_your_writes: bool, steps: int = 40) -> Cluster:
    nodes, writers = data.draw(cluster_shape)
    cluster = Cluster([f"n{i}" for i in range(nodes)], writers, read_your_writes)
    for _ in range(data.draw(st.integers(0, steps))):
        cluster.step(data)
    return cluster


# -- the states match the causal-history oracle -------------------------------------------


@given(st.data())
def test_every_reachable_state_matches_the_oracle(data: st.DataObject) -> None:
    """No lost write, no zombie sibling: live values are exactly the unsuperseded writes."""
    run(data, read_your_writes=data.draw(st.booleans()))


@given(st.data())
def test_siblings_are_only_concurrent_writes(data: st.DataObject) -> None:
    cluster = run(data, read_your_writes=data.draw(st.booleans()))
    by_dot = {w.dot: w for w in cluster.log}
    for state in cluster.pool:
        live = [by_dot[(node, counter)] for node, counter, _ in state.dots()]
        for a in live:
            for b in live:
                if a is not b:
                    assert not a.covers(b.dot) and not b.covers(a.dot)


@given(st.data())
def test_a_put_replaces_what_its_read_saw(data: st.DataObject) -> None:
    cluster = run(data, read_your_writes=False, steps=25)
    replica = data.draw(st.sampled_from(cluster.nodes))
    coordinator = data.draw(st.sampled_from(cluster.nodes))
    seen = cluster.states[replica]
    after = cluster.states[coordinator].update(seen.context(), b"new", coordinator)
    survivors = set(after.dots())
    assert not set(seen.dots()) & survivors
    assert (coordinator, after.counter(coordinator), b"new") in survivors
    assert after.descends(seen) and after.descends(cluster.states[coordinator])
    # Reading the coordinator itself and writing back leaves exactly one value.
    solo = cluster.states[coordinator]
    assert solo.update(solo.context(), b"x", coordinator).values() == [b"x"]
    # What the read saw never comes back, whatever the new state is merged with.
    for other in cluster.states.values():
        assert not set(seen.dots()) & set(after.sync(other).dots())
        assert not set(seen.dots()) & set(other.sync(after).dots())


# -- the sibling bound --------------------------------------------------------------------


@settings(max_examples=150)
@given(st.data())
def test_siblings_never_exceed_concurrent_writers(data: st.DataObject) -> None:
    """W writers in read-modify-write loops, reading their own writes: at most W siblings."""
    nodes, writers = data.draw(cluster_shape)
    cluster = Cluster([f"n{i}" for i in range(nodes)], writers, read_your_writes=True)
    for _ in range(data.draw(st.integers(0, 60))):
        cluster.step(data)
        for state in cluster.states.values():
            assert state.sibling_count() <= writers


def test_one_writer_reading_a_stale_replica_is_concurrent_with_itself() -> None:
    """Why the bound needs read-your-writes: a read that misses the writer's own last
    write makes its next write concurrent with it, so one writer can leave two
    siblings. This is correct causality, not a defect."""
    a = DVVSet().update({}, b"first", "n0")
    stale = DVVSet()
    b = DVVSet().update(stale.context(), b"second", "n1")
    assert sorted(a.sync(b).live_values()) == [b"first", b"second"]


# -- the partial order and the merge -----------------------------------------------------


@settings(max_examples=60)
@given(st.data())
def test_descends_is_a_partial_order(data: st.DataObject) -> None:
    pool = list(dict.fromkeys(run(data, read_your_writes=False, steps=30).pool))[:24]
    ge = {(i, j): a.descends(b) for i, a in enumerate(pool) for j, b in enumerate(pool)}
    for i, a in enumerate(pool):
        assert ge[i, i]
        assert not a.dominates(a)
        for j, b in enumerate(pool):
            if ge[i, j] and ge[j, i]:
                assert a == b
            assert a.dominates(b) == (ge[i, j] and a != b)
            for k in range(len(pool)):
                if ge[i, j] and ge[j, k]:
                    assert ge[i, k]


@settings(max_examples=60)
@given(st.data())
def test_sync_is_the_least_upper_bound(data: st.DataObject) -> None:
    cluster = run(data, read_your_writes=False, steps=30)
    pool = list(dict.fromkeys(cluster.pool))
    a, b, c = (data.draw(st.sampled_from(pool)) for _ in range(3))
    ab = a.sync(b)
    assert ab == b.sync(a)
    assert ab.sync(c) == a.sync(b.sync(c))
    assert a.sync(a) == a
    assert ab.descends(a) and ab.descends(b)
    assert set(ab.dots()) == cluster.live(ab)  # the merge of two real states is real
    for upper in pool:
        if upper.descends(a) and upper.descends(b):
            assert upper.descends(ab)
            assert upper.sync(ab) == upper
    if a.descends(b):
        assert ab == a
    assert ab.context() == merge_contexts(a.context(), b.context())
    assert context_descends(ab.context(), a.context())
    assert context_descends(a.context(), b.context()) == a.descends(b)


@settings(max_examples=60)
@given(st.data())
def test_covers_values_means_a_merge_adds_no_sibling(data: st.DataObject) -> None:
    pool = list(dict.fromkeys(run(data, read_your_writes=False, steps=30).pool))
    a, b = (data.draw(st.sampled_from(pool)) for _ in range(2))
    assert covers_values(a, b) == (set(a.sync(b).dots()) <= set(a.dots()))
    assert covers_values(a, a)
    if a.descends(b):
        assert covers_values(a, b)


@settings(max_examples=60)
@given(st.data())
def test_states_of_one_history_never_reuse_each_others_dots(data: st.DataObject) -> None:
    pool = list(dict.fromkeys(run(data, read_your_writes=False, steps=30).pool))
    a, b = (data.draw(st.sampled_from(pool)) for _ in range(2))
    assert not reuses_dots_of(a, b)


def test_a_dot_issued_twice_for_two_values_is_found() -> None:
    old = DVVSet.new("a", b"v1").update({}, b"v2", "b")  # (a, 1) v1 and (b, 1) v2
    again = DVVSet.new("a", b"other")  # (a, 1) issued again, for another value
    assert reuses_dots_of(again, old) and reuses_dots_of(old, again)
    assert not reuses_dots_of(DVVSet.new("a", b"v1"), old)  # the same write: fine
    assert covers_values(again, DVVSet.new("a", b"v1"))  # what covers_values misses
    assert not again.supersedes(old) and not old.supersedes(again)


@st.composite
def any_states(draw: st.DrawFn) -> DVVSet:
    """Arbitrary well-formed states, unrelated to any one history: their dots may
    name different values in different states (what a coordinator that lost count
    produces), which states of one history never do."""
    ids = draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3))
    entries = []
    for i in sorted(ids):
        vals = tuple(draw(st.lists(st.sampled_from([b"x", b"y", None]), max_size=3)))
        entries.append((i, draw(st.integers(max(1, len(vals)), len(vals) + 3)), vals))
    return DVVSet(tuple(entries))


@settings(max_examples=300)
@given(any_states(), any_states())
def test_supersedes_is_covering_without_reusing_dots(a: DVVSet, b: DVVSet) -> None:
    assert a.supersedes(b) == (covers_values(a, b) and not reuses_dots_of(a, b))


@given(any_states())
def test_live_values_are_every_value_but_tombstones_in_order(state: DVVSet) -> None:
    assert state.live_values() == [v for _, _, vals in state.entries for v in vals
                                   if v is not None]


# -- encodings ---------------------------------------------------------------------------


@given(st.data())
def test_wire_and_context_round_trip(data: st.DataObject) -> None:
    pool = run(data, read_your_writes=False, steps=20).pool
    state = data.draw(st.sampled_from(pool))
    packed = msgpack.packb(state.to_wire(), use_bin_type=True)
    assert DVVSet.from_wire(msgpack.unpackb(packed, raw=False)) == state
    fresh = DVVSet(state.entries)  # no wire form known: packable() gives the entries
    assert msgpack.packb(fresh.packable(), use_bin_type=True) == packed
    assert msgpack.packb(state.packable(), use_bin_type=True) == packed
    assert decode_context(encode_context(state.context())) == state.context()
    assert state.encoded_context() == encode_context(state.context())
    # What storage gives back (decode_stored) is the state it was packed from.
    stored = decode_stored(packed)
    assert stored == state and stored.entries == fresh.entries
    assert msgpack.packb(stored.packable(), use_bin_type=True) == packed
    clock = DVVSet.clock(state.context())
    assert clock.context() == state.context() and clock.values() == []
    # Having seen every dot of the state, the clock supersedes all its values (what a
    # reaped tombstone's clock does to a late copy of what it deleted).
    assert clock.sync(state) == clock == state.sync(clock)


@pytest.mark.parametrize(
    "bad",
    [
        {},
        [["a", 0, []]],
        [["a", 1, [b"x", b"y"]]],
        [["b", 1, []], ["a", 1, []]],
        [["a", 1, []], ["a", 2, []]],
        [["a", 1, ["text"]]],
        [["a", "1", []]],
    ],
)
def test_from_wire_rejects_malformed(bad: object) -> None:
    with pytest.raises(ValueError):
        DVVSet.from_wire(bad)


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc1",
        msgpack.packb({"a": 1}),
        msgpack.packb([["a", 0]]),
        msgpack.packb([["a", 1], ["a", 2]]),
    ],
)
def test_decode_context_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(ValueError):
        decode_context(bad)


@settings(max_examples=80)
@given(st.data())
def test_overwrite_is_an_update_with_the_states_own_context(data: st.DataObject) -> None:
    """The coordinator's shortcut for a blind put equals the general update."""
    pool = list(dict.fromkeys(run(data, read_your_writes=False, steps=30).pool))
    state = data.draw(st.sampled_from(pool))
    # Beside the run's nodes, new ones that sort first and last.
    node = data.draw(st.sampled_from(["a0", "n0", "n1", "n2", "n3", "n9"]))
    value = data.draw(st.none() | st.binary(max_size=4))
    own = DVVSet(((node, 3, (b"x", b"y")),))  # the usual state: the node's own entry
    for s in (state, own):
        fast = s.overwrite(value, node)
        assert fast.entries == s.update(s.context(), value, node).entries
    assert fast.summary() == (1, 0 if value is None else 1, 0 if value is None else len(value))


_contexts = st.dictionaries(st.sampled_from(["a", "b", "c", "n"]), st.integers(1, 6),
                            max_size=4)


@settings(max_examples=400)
@given(any_states(), _contexts, st.none() | st.binary(max_size=3),
       st.sampled_from(["a", "b", "c", "n", "0"]))
def test_an_update_descends_from_the_state_it_was_made_over(
        base: DVVSet, ctx: dict[str, int], value: bytes | None, node: str) -> None:
    """What a replica whose copy is exactly a write's base relies on (REPLICA_PUT's
    `base`): merging the write into that copy gives the write itself, and a blind
    write passes the checked-write test against it."""
    for new in (base.update(ctx, value, node), base.overwrite(value, node)):
        assert base.sync(new) == new and new.sync(base) == new
    assert base.overwrite(value, node).supersedes(base)
