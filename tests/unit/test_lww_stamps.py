"""Last-write-wins keys (ringfs.lww): stamps, and which sibling a read returns."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from ringfs.dvv import DVVSet
from ringfs.lww import STAMP_BYTES, STAMP_MAGIC, digest, matches, newest, stamp, unstamp

values = st.binary(max_size=40)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(values, times)
def test_a_stamp_round_trips(value: bytes, wall_s: float) -> None:
    stored = stamp(value, wall_s)
    assert len(stored) == len(value) + STAMP_BYTES
    assert unstamp(stored) == (int(wall_s * 1_000_000), value)


@given(values)
def test_an_unstamped_value_comes_back_whole_and_ranks_lowest(value: bytes) -> None:
    if not value.startswith(STAMP_MAGIC):
        assert unstamp(value) == (-1, value)
    older = DVVSet.new("a", value).sync(DVVSet.new("b", stamp(b"stamped", 0.0)))
    assert newest(older) == b"stamped"


def test_out_of_range_times_are_clamped() -> None:
    assert unstamp(stamp(b"v", -5.0)) == (0, b"v")
    assert unstamp(stamp(b"v", 1e30)) == ((1 << 64) - 1, b"v")


@given(st.lists(st.tuples(values, st.integers(0, 10**6)), min_size=1, max_size=8),
       st.randoms(use_true_random=False))
def test_concurrent_writes_read_as_the_newest_whatever_the_merge_order(
        writes: list[tuple[bytes, int]], rnd: random.Random) -> None:
    """Each write coordinated by a different node, none seeing the others: the siblings
    of their merge read as the write with the newest stamp (the highest node id among
    equal stamps), whichever order the replicas merged them in."""
    states = [DVVSet.new(f"n{i:02d}", stamp(v, us / 1e6)) for i, (v, us) in enumerate(writes)]
    rank = max(range(len(writes)), key=lambda i: (writes[i][1], f"n{i:02d}"))
    expected = writes[rank][0]
    for _ in range(3):
        rnd.shuffle(states)
        merged = DVVSet()
        for s in states:
            merged = merged.sync(s) if rnd.random() < 0.5 else s.sync(merged)
        assert newest(merged) == expected


def test_tombstones_are_skipped_and_all_tombstones_read_as_absent() -> None:
    dead = DVVSet.new("a", None)
    assert newest(dead) is None
    both = dead.sync(DVVSet.new("b", stamp(b"v", 1.0)))
    assert newest(both) == b"v"


def test_a_write_with_the_read_context_replaces_every_sibling() -> None:
    merged = DVVSet.new("a", stamp(b"x", 2.0)).sync(DVVSet.new("b", stamp(b"y", 1.0)))
    assert newest(merged) == b"x"
    after = merged.update(merged.context(), stamp(b"z", 0.5), "b")
    assert after.live_values() == [stamp(b"z", 0.5)]
    assert newest(after) == b"z"  # an older stamp, but it saw the others: it replaced them


def test_matches() -> None:
    assert not matches(b"cache/x", ())
    assert matches(b"cache/x", (b"cache/",))
    assert not matches(b"cach", (b"cache/",))
    assert matches(b"anything", (b"",))


def test_the_prefix_fingerprint_ignores_order_and_repeats() -> None:
    assert digest([]) == ""
    assert digest(["a/", "b/"]) == digest(["b/", "a/", "a/"]) != digest(["a/"])
    assert digest([""]) != "" and len(digest(["x"])) == 16
    assert digest(["a", "b"]) != digest(["a\x00b"])


def test_reserved_keys_are_never_lww() -> None:
    assert not matches(b"\x00fdocs/a.bin", (b"",))
    assert not matches(b"\x00c" + bytes(32), (b"",))
