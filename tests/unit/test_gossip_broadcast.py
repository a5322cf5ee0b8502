"""The transmit-limited broadcast queue: limits, order, replacement, MTU."""

from __future__ import annotations

from ringfs.gossip.broadcast import BroadcastQueue


def test_each_update_is_sent_at_most_transmit_limit_times() -> None:
    q = BroadcastQueue(100)
    q.queue("a", b"aaaa")
    sent = 0
    for _ in range(10):
        sent += len(q.take(1000, transmit_limit=3))
    assert sent == 3 and len(q) == 0
    q.check_invariants()


def test_least_transmitted_first_then_newest() -> None:
    q = BroadcastQueue(100)
    q.queue("a", b"a" * 10)
    assert q.take(10, 5) == [b"a" * 10]  # a sent once
    q.queue("b", b"b" * 10)
    q.queue("c", b"c" * 10)
    # Room for one: the never-sent ones first, the newest of them first.
    assert q.take(10, 5) == [b"c" * 10]
    assert q.take(10, 5) == [b"b" * 10]
    # All sent once now; among equals the one that reached that count last goes first.
    assert q.take(30, 5) == [b"b" * 10, b"c" * 10, b"a" * 10]
    q.check_invariants()


def test_newer_update_replaces_older_about_same_member() -> None:
    q = BroadcastQueue(100)
    q.queue("x", b"suspect-x")
    q.take(100, 5)
    q.queue("x", b"alive-x-v2")
    assert len(q) == 1 and q.transmits("x") == 0 and q.replaced == 1
    assert q.take(100, 5) == [b"alive-x-v2"]


def test_take_respects_the_byte_budget_and_skips_large_items() -> None:
    q = BroadcastQueue(100)
    q.queue("big", b"B" * 50)
    q.queue("small", b"s" * 8)
    out = q.take(20, 5)
    assert out == [b"s" * 8]
    assert sum(map(len, out)) <= 20
    assert q.transmits("big") == 0
    assert q.take(3, 5) == []


def test_buddy_first_item_is_taken_first() -> None:
    q = BroadcastQueue(100)
    q.queue("a", b"aaaa")
    q.queue("b", b"bbbb")
    assert q.take(100, 5, first="a")[0] == b"aaaa"


def test_overflow_drops_the_most_transmitted() -> None:
    q = BroadcastQueue(3)
    q.queue("old", b"1111")
    q.take(4, 10)  # old sent once
    q.queue("n1", b"2222")
    q.queue("n2", b"3333")
    q.queue("n3", b"4444")
    assert len(q) == 3 and "old" not in q and q.dropped == 1
    q.remove("n1")
    assert "n1" not in q
    q.check_invariants()
