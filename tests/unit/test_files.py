"""Manifests, chunk states and name rules (ringfs/files.py), property-tested."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringfs.dvv import DVVSet
from ringfs.files import (
    MAX_META_BYTES,
    MAX_NAME_BYTES,
    Manifest,
    _skeleton,
    check_name,
    chunk_count,
    chunk_data,
    chunk_state,
    pick_version,
)


def manifest(size: int, cs: int, name: str = "f") -> Manifest:
    n = chunk_count(size, cs)
    chunks = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(n))
    return Manifest(name, size, hashlib.sha256(b"x").digest(), cs, chunks, {"a": "b"}, 3.5)


@given(st.integers(0, 10_000), st.integers(1, 1000))
def test_chunk_lengths_add_up_to_the_size(size: int, cs: int) -> None:
    m = manifest(size, cs)
    n = len(m.digests)
    assert n == chunk_count(size, cs)
    assert sum(m.chunk_len(i) for i in range(n)) == size
    assert all(1 <= m.chunk_len(i) <= cs for i in range(n))


@given(st.integers(0, 10_000), st.integers(1, 1000),
       st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s))
def test_manifests_round_trip(size: int, cs: int, name: str) -> None:
    m = manifest(size, cs, name)
    assert Manifest.decode(m.encode()) == m
    assert Manifest.from_wire(m.to_wire(), cs) == m


@pytest.mark.parametrize("change", [
    {"size": -1}, {"size": 10_001}, {"chunk_size": 0}, {"sha256": b"short"},
    {"chunks": b"x" * 31}, {"name": "a\x00b"}, {"name": ""}, {"name": "x" * 513},
    {"meta": {"k": 1}}, {"mtime": "yesterday"}, {"mtime": float("nan")},
    {"mtime": float("inf")}, {"meta": {"k": "\u00e9" * (MAX_META_BYTES // 2)}},
])
def test_bad_manifests_are_refused(change: dict[str, object]) -> None:
    wire = {**manifest(10_000, 100).to_wire(), **change}
    with pytest.raises(ValueError):
        Manifest.from_wire(wire, 1 << 20)


def test_name_rules() -> None:
    assert check_name("é" * (MAX_NAME_BYTES // 2)) == "é" * (MAX_NAME_BYTES // 2)
    for bad in ("", "a\x00", "é" * (MAX_NAME_BYTES // 2 + 1), b"bytes", None, "\ud800"):
        with pytest.raises(ValueError):
            check_name(bad)


@given(st.binary(max_size=200))
def test_chunk_states_are_identical_everywhere_and_merge_to_themselves(data: bytes) -> None:
    a, b = chunk_state(data), chunk_state(bytes(data))
    assert a == b and a.sync(b) == a and chunk_data(a) == data
    assert chunk_data(DVVSet.new("n1@1", data)) is None


def test_pick_version_is_the_latest_upload() -> None:
    old, new = manifest(10, 4), manifest(20, 4)
    new = Manifest(new.name, new.size, new.sha256, new.chunk_size, new.chunks, {}, 9.0)
    assert pick_version([old, new]) is new and pick_version([new, old]) is new


ops = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans(), st.booleans()),
               max_size=12)


@given(ops, ops)
def test_skeletons_merge_to_the_same_liveness(xs: list[tuple[str, bool, bool]],
                                              ys: list[tuple[str, bool, bool]]) -> None:
    """FILE_LIST merges value-less skeletons: liveness must match merging the real states."""
    def build(steps: list[tuple[str, bool, bool]]) -> DVVSet:
        s = DVVSet()
        for actor, with_ctx, live in steps:
            s = s.update(s.context() if with_ctx else {}, b"v" if live else None, actor)
        return s

    a, b = build(xs), build(ys)
    real = a.sync(b)
    skel = _skeleton(a).sync(_skeleton(b))
    assert bool(real.live_values()) == bool(skel.live_values())
