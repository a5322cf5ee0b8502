"""Hash trees for anti-entropy: incremental upkeep equals a rebuild; diffs find differences."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfs.antientropy import (
    BUCKETS,
    HashTrees,
    differing,
    differing_keys,
    is_local_key,
    item_hash,
)
from ringfs.hashing import in_range, key_token
from ringfs.ring import Ring, RingMember

RING = Ring.build([RingMember(n, f"10.0.0.{i}:1") for i, n in enumerate(["a", "b", "c", "d"])],
                  vnodes_per_capacity=16)


def scan_of(store: dict[bytes, bytes]):  # type: ignore[no-untyped-def]
    def scan(start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        items = [(key_token(k), k, m) for k, m in store.items()
                 if start == end or in_range(key_token(k), start, end)]
        for _t, k, m in sorted(items):
            yield k, m
    return scan


def built(me: str, store: dict[bytes, bytes], ring: Ring = RING) -> HashTrees:
    t = HashTrees(me, 3)
    t.set_ring(ring)
    t.build_step(scan_of(store), 10**9)
    assert t.unbuilt == 0
    return t


keys = st.binary(min_size=1, max_size=6).filter(lambda k: not is_local_key(k))
metas = st.binary(min_size=0, max_size=8)
stores = st.dictionaries(keys, metas, max_size=60)


@settings(max_examples=60)
@given(stores, st.lists(st.tuples(keys, st.none() | metas), max_size=40))
def test_incremental_upkeep_equals_a_rebuild(initial: dict[bytes, bytes],
                                             writes: list[tuple[bytes, bytes | None]]) -> None:
    store = dict(initial)
    trees = built("a", store)
    for k, meta in writes:
        old = store.get(k)
        if meta is None:
            store.pop(k, None)
        else:
            store[k] = meta
        trees.note_write(k, old, meta)
    fresh = built("a", store)
    for peer in ("b", "c", "d"):
        assert trees.root(peer) == fresh.root(peer)
        assert trees.group_hashes(peer) == fresh.group_hashes(peer)


@settings(max_examples=60)
@given(stores, stores)
def test_equal_shared_contents_give_equal_roots_and_the_descent_finds_every_difference(
        mine: dict[bytes, bytes], theirs: dict[bytes, bytes]) -> None:
    a, b = built("a", mine), built("b", theirs)
    shared = {k for k in set(mine) | set(theirs)
              if {"a", "b"} <= set(RING.preference_list(k, 3))}
    differ = sorted(k for k in shared if mine.get(k) != theirs.get(k))
    if not differ:
        assert a.root("b") == b.root("a")
        return
    assert a.root("b") != b.root("a")
    # The descent: groups, arcs, leaves, then key lists of the differing leaves.
    found: set[bytes] = set()
    for g in differing(a.group_hashes("b"), b.group_hashes("a")):
        for i in differing(a.arc_hashes("b", g), b.arc_hashes("a", g)):
            arc = g * 64 + i
            leaves = [(arc, x) for x in differing(a.leaf_hashes("b", arc),
                                                  b.leaf_hashes("a", arc))]
            items_a = a.leaf_items("b", leaves, scan_of(mine))
            items_b = b.leaf_items("a", leaves, scan_of(theirs))
            found |= set(differing_keys(items_a, items_b))
    assert found == set(differ)


def test_keys_outside_the_shared_arcs_do_not_count() -> None:
    other = next(k for k in (b"x%d" % i for i in range(1000))
                 if "a" not in RING.preference_list(k, 3))
    a = built("a", {})
    before = a.root("b")
    a.note_write(other, None, b"m")  # not a's key: ignored
    assert a.root("b") == before


def test_local_keys_are_never_hashed() -> None:
    a = built("a", {b"\x00hb\x00k": b"hint", b"\x00lx": b"local"})
    assert a.root("b") == built("a", {}).root("b")


def test_a_ring_change_keeps_the_trees_of_unmoved_arcs_and_rebuilds_the_rest() -> None:
    store = {b"k%d" % i: b"v" for i in range(200)}
    trees = built("a", store)
    bigger = Ring.build([*RING.members.values(), RingMember("e", "10.0.0.9:1")],
                        vnodes_per_capacity=16)
    trees.set_ring(bigger)
    assert 0 < trees.unbuilt < trees.stats().arcs
    trees.build_step(scan_of(store), 10**9)
    assert trees.root("b") == built("a", store, bigger).root("b")


def test_item_hash_separates_key_and_meta() -> None:
    assert item_hash(b"ab", b"c") != item_hash(b"a", b"bc")
    assert 0 <= item_hash(b"k", b"") < 2**64


def test_owned_and_foreign_arcs_partition_the_ring() -> None:
    trees = built("a", {})
    for i in range(300):
        k = b"p%d" % i
        t = key_token(k)
        mine = "a" in RING.preference_list(k, 3)
        assert trees.owns_token(t) == mine
        assert any(in_range(t, s, e) for s, e in trees.foreign_arcs()) == (not mine)
    assert BUCKETS == 64


def _arc_by_bisect(trees: HashTrees, token: int) -> object:
    """What HashTrees._arc_for must return: the arc of the first end >= token (the
    first arc past the last end), found by a plain binary search over every end."""
    ends = trees._ends
    i = bisect.bisect_left(ends, token)
    return trees._arc_at[0 if i == len(ends) else i]


@settings(max_examples=40)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=5,
                unique=True),
       st.integers(1, 64),
       st.lists(st.integers(0, 2**128 - 1), max_size=30))
def test_the_slot_index_finds_the_arc_a_binary_search_finds(
        names: list[str], vnodes: int, tokens: list[int]) -> None:
    ring = Ring.build([RingMember(n, f"10.0.0.{i}:1") for i, n in enumerate(names)],
                      vnodes_per_capacity=vnodes)
    trees = HashTrees(names[0], 3)
    trees.set_ring(ring)
    ends = trees._ends
    edge = [0, 2**128 - 1]
    # Arc bounds across the ring and their neighbours, where an off-by-one would show.
    for e in ends[::max(1, len(ends) // 50)] + ends[-3:]:
        edge += [e - 1, e, e + 1]
    for t in [*tokens, *edge]:
        t %= 2**128
        assert trees._arc_for(t) is _arc_by_bisect(trees, t)


def test_a_node_alone_keeps_no_trees_and_builds_them_once_it_has_company() -> None:
    """On a ring of one node no tree is ever compared, so writes leave them alone;
    when the ring grows (back to arcs of the same bounds, even) every shared arc is
    scanned afresh: nothing stale from the lonely spell survives."""
    store = {b"k%d" % i: b"v" for i in range(200)}
    trees = built("a", store)  # the four-node ring: shared arcs, built
    alone = Ring.build([RING.members["a"]], vnodes_per_capacity=16)
    trees.set_ring(alone)
    assert trees.unbuilt == 0 and not any(t.built for t in trees._trees.values())
    for i in range(100):  # writes while alone: replaced, new and deleted keys
        k = b"k%d" % (i * 3)
        old = store.get(k)
        if i % 4 == 0:
            store.pop(k, None)
            trees.note_write(k, old, None)
        else:
            store[k] = b"w%d" % i
            trees.note_write(k, old, store[k])
    assert not any(t.built for t in trees._trees.values())
    trees.set_ring(RING)
    assert trees.unbuilt > 0
    trees.build_step(scan_of(store), 10**9)
    fresh = built("a", store)
    for peer in ("b", "c", "d"):
        assert trees.root(peer) == fresh.root(peer)


def test_an_arc_with_one_replica_has_no_tree_to_keep() -> None:
    """With N=1 every arc has a single replica: nothing is compared, nothing built,
    and writes of keys the node does not hold are still told apart."""
    t = HashTrees("a", 1)
    t.set_ring(RING)
    assert t.unbuilt == 0 and t.peers() == []
    mine = next(k for k in (b"m%d" % i for i in range(1000))
                if RING.preference_list(k, 1) == ("a",))
    theirs = next(k for k in (b"m%d" % i for i in range(1000))
                  if RING.preference_list(k, 1) != ("a",))
    assert t.note_write(mine, None, b"x") is True
    assert t.note_write(theirs, None, b"x") is False
    assert not any(tree.built for tree in t._trees.values())
