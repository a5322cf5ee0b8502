"""The log store's behaviour: reads, writes, reopening, hints, merges, limits, token order."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfs.hashing import TOKEN_SPACE, in_range, key_token
from ringfs.storage.engine import Record, StorageEngine
from ringfs.storage.logstore import (
    LogStore,
    NotAStoreError,
    StoreFailedError,
    StoreLockedError,
)
from ringfs.storage.segment import CRC_RESIDUE


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_dir: Path) -> Iterator[LogStore]:
    s = LogStore(store_dir, segment_bytes=4096, merge_step_bytes=1024)
    yield s
    s.close()


def drain(store: LogStore, limit: int = 100_000) -> int:
    """Run maybe_merge until it reports no work; returns the number of calls that did work."""
    for n in range(limit):
        if not store.maybe_merge():
            return n
    raise AssertionError("maybe_merge never ran out of work")


def settle(store: LogStore) -> None:
    """Merge until nothing is left to do, syncing so that waiting swaps can happen."""
    for _ in range(1000):
        store.sync()
        if not drain(store):
            return
    raise AssertionError("merges did not settle")


def merging(store: LogStore) -> bool:
    """Whether a merge is under way (a function, so type narrowing does not stick)."""
    return store._merge is not None


def seg_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


# -- basics ------------------------------------------------------------------------------


def test_is_a_storage_engine(store: LogStore) -> None:
    assert isinstance(store, StorageEngine)


def test_put_get_delete_purge(store: LogStore) -> None:
    assert store.get(b"k") is None
    assert store.put(b"k", b"v1", b"m1") == 1
    assert store.get(b"k") == Record(b"v1", b"m1", False, 1)
    assert store.put(b"k", b"v2") == 2
    assert store.get(b"k") == Record(b"v2", b"", False, 2)
    assert store.delete(b"k", b"ctx") == 3
    assert store.get(b"k") == Record(b"", b"ctx", True, 3)
    assert len(store) == 1
    assert store.stats().tombstones == 1
    store.purge(b"k")
    assert store.get(b"k") is None
    assert len(store) == 0
    store.purge(b"absent")  # forgetting an unknown key is a no-op
    assert store.last_seq == 3
    assert store.put(b"k", b"v4") == 4


def test_empty_key_and_value(store: LogStore) -> None:
    store.put(b"", b"")
    assert store.get(b"") == Record(b"", b"", False, 1)


def test_bytes_like_keys_are_accepted(store: LogStore) -> None:
    store.put(bytearray(b"ba"), b"1")  # type: ignore[arg-type]
    store.put(memoryview(b"mv"), b"2")  # type: ignore[arg-type]
    assert store.get(b"ba") is not None
    assert store.get(b"mv") is not None
    with pytest.raises(TypeError):
        store.put("text", b"v")  # type: ignore[arg-type]


def test_seq_and_data_survive_reopen(store_dir: Path) -> None:
    with LogStore(store_dir, segment_bytes=1024) as s:
        for i in range(200):
            s.put(b"k%d" % (i % 37), b"v%d" % i, b"m%d" % i)
        s.delete(b"k3")
        s.purge(b"k4")
        expected = {k: s.get(k) for k in (b"k%d" % j for j in range(37))}
        last = s.last_seq
    with LogStore(store_dir, segment_bytes=1024) as s:
        assert s.last_seq == s.durable_seq == last
        assert {k: s.get(k) for k in expected} == expected
        assert s.get(b"k4") is None
        assert s.put(b"new", b"x") == last + 1
        s.check_invariants()


def test_large_values_round_trip(store_dir: Path) -> None:
    """Records too big to keep their size in the keydir take the header-first read path."""
    big = os.urandom(100_000)
    with LogStore(store_dir, segment_bytes=64 * 1024) as s:
        s.put(b"big", big)
        s.put(b"small", b"x")
        s.put(b"big2", big[::-1], b"meta" * 5000)
        s.put(b"bigmeta", b"", big[:70_000])  # written from its parts, the meta alone big
        assert s.get(b"big") == Record(big, b"", False, 1)
        s.put(b"big", b"now small")  # overwriting accounts the big record's real size
        s.check_invariants()
        settle(s)
        s.check_invariants()
    with LogStore(store_dir, segment_bytes=64 * 1024) as s:
        assert s.get(b"big2") == Record(big[::-1], b"meta" * 5000, False, 3)
        assert s.get(b"big") == Record(b"now small", b"", False, 5)
        assert s.get(b"bigmeta") == Record(b"", big[:70_000], False, 4)
        s.check_invariants()


def test_context_manager_and_closed_engine(store_dir: Path) -> None:
    with LogStore(store_dir) as s:
        s.put(b"a", b"1")
    for call in (
        lambda: s.get(b"a"),
        lambda: s.put(b"a", b"2"),
        lambda: s.delete(b"a"),
        lambda: s.purge(b"a"),
        lambda: s.sync(),
        lambda: s.maybe_merge(),
        lambda: s.iter_range(0, 0),
    ):
        with pytest.raises(RuntimeError):
            call()
    s.close()  # idempotent


def test_close_syncs(store_dir: Path) -> None:
    s = LogStore(store_dir)
    s.put(b"a", b"1")
    assert s.durable_seq == 0
    s.close()
    assert s.durable_seq == 1


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"segment_bytes": 100}, ValueError),
        ({"segment_bytes": 2 << 30}, ValueError),
        ({"segment_bytes": 4096.0}, TypeError),
        ({"segment_bytes": True}, TypeError),
        ({"merge_fragmentation": 0.0}, ValueError),
        ({"merge_fragmentation": 1.5}, ValueError),
        ({"merge_fragmentation": "half"}, TypeError),
        ({"max_key_bytes": 0}, ValueError),
        ({"max_key_bytes": 70_000}, ValueError),
        ({"max_value_bytes": -1}, ValueError),
        ({"max_value_bytes": 1 << 30}, ValueError),
        ({"merge_step_bytes": 10}, ValueError),
        ({"may_drop_tombstone": 42}, TypeError),
    ],
)
def test_bad_arguments(store_dir: Path, kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        LogStore(store_dir, **kwargs)  # type: ignore[arg-type]
    # A rejected open leaves no lock behind.
    LogStore(store_dir).close()


def test_size_limits(store_dir: Path) -> None:
    with LogStore(store_dir, max_key_bytes=8, max_value_bytes=16) as s:
        s.put(b"k" * 8, b"v" * 16, b"m" * 16)
        with pytest.raises(ValueError):
            s.put(b"k" * 9, b"v")
        with pytest.raises(ValueError):
            s.put(b"k", b"v" * 17)
        with pytest.raises(ValueError):
            s.delete(b"k", b"m" * 17)
        assert s.last_seq == 1


def test_directory_with_other_files_is_refused(store_dir: Path) -> None:
    store_dir.mkdir()
    (store_dir / "notes.txt").write_text("not a store")
    with pytest.raises(NotAStoreError, match="not a ringfs log store"):
        LogStore(store_dir)
    assert sorted(os.listdir(store_dir)) == ["LOCK", "notes.txt"]


def test_bad_format_file_is_refused(store_dir: Path) -> None:
    LogStore(store_dir).close()
    (store_dir / "FORMAT").write_text("something else\n")
    with pytest.raises(NotAStoreError):
        LogStore(store_dir)
    (store_dir / "FORMAT").write_text("ringfs-logstore\nversion 99\nsalt 00000000\n")
    with pytest.raises(NotAStoreError, match="format 99"):
        LogStore(store_dir)


def test_stray_file_in_a_store_is_ignored_with_a_warning(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with LogStore(store_dir) as s:
        s.put(b"a", b"1")
    (store_dir / "README").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="ringfs.storage"), LogStore(store_dir) as s:
        assert s.get(b"a") is not None
    assert "README" in caplog.text


def test_directory_lock(store_dir: Path) -> None:
    first = LogStore(store_dir)
    with pytest.raises(StoreLockedError):
        LogStore(store_dir)
    first.close()
    LogStore(store_dir).close()


# -- segments and hints --------------------------------------------------------------------


def test_rollover_and_hints_make_reopen_scan_nothing(store_dir: Path) -> None:
    with LogStore(store_dir, segment_bytes=1024) as s:
        for i in range(300):
            s.put(b"key%03d" % i, b"value%d" % i)
        assert s.stats().segments > 5
        # Every segment stays below its size limit (plus at most one record).
        assert all(p.stat().st_size <= 1024 for p in seg_files(store_dir))
        settle(s)  # hint files are renamed into place once a sync has covered them
        hints = list(store_dir.glob("*.hint"))
        assert len(hints) == s.stats().segments - 1  # all but the active segment
    # close() wrote the active segment's hint as well.
    with LogStore(store_dir, segment_bytes=1024) as s:
        assert s.recovery.segments_scanned == 0
        assert s.recovery.segments_from_hints == len(seg_files(store_dir))
        assert all(s.get(b"key%03d" % i) is not None for i in range(300))
        s.check_invariants()


def test_damaged_hint_falls_back_to_scanning(store_dir: Path) -> None:
    with LogStore(store_dir, segment_bytes=1024) as s:
        for i in range(100):
            s.put(b"key%03d" % i, b"v%d" % i)
    hint = sorted(store_dir.glob("*.hint"))[0]
    data = bytearray(hint.read_bytes())
    data[len(data) // 2] ^= 0x40
    hint.write_bytes(bytes(data))
    with LogStore(store_dir, segment_bytes=1024) as s:
        assert s.recovery.segments_scanned == 1
        assert s.stats().corrupt_records == 0  # a bad hint is not bad data
        assert all(
            s.get(b"key%03d" % i) == Record(b"v%d" % i, b"", False, i + 1) for i in range(100)
        )
        drain(s)  # writes a fresh hint
    with LogStore(store_dir, segment_bytes=1024) as s:
        assert s.recovery.segments_scanned == 0


def test_hint_for_another_length_is_not_trusted(store_dir: Path) -> None:
    with LogStore(store_dir, segment_bytes=1024) as s:
        for i in range(50):
            s.put(b"key%03d" % i, b"v")
    seg = seg_files(store_dir)[0]
    with open(seg, "ab") as f:
        f.write(b"\0" * 10)  # the hint no longer describes this file
    with LogStore(store_dir, segment_bytes=1024) as s:
        assert s.recovery.segments_scanned == 1
        assert len(s) == 50


def test_group_commit_one_fsync_covers_many_writes(
    store: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    for i in range(64):
        store.put(b"k%d" % i, b"v")
    assert store.sync() == 64
    assert len(calls) == 1
    assert store.sync() == 64  # nothing new: no fsync at all
    assert len(calls) == 1


def test_sync_covers_segments_retired_since_the_last_sync(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: set[int] = set()
    real = os.fdatasync

    def recording(fd: int) -> None:
        synced.add(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", recording)
    with LogStore(store_dir, segment_bytes=512) as s:
        for i in range(40):
            s.put(b"k%d" % i, b"x" * 40)
        segments = s.stats().segments
        assert segments >= 3
        s.sync()
        assert len(synced) == segments


# -- merges ----------------------------------------------------------------------------------


def test_merge_reclaims_overwritten_and_deleted_space(store_dir: Path) -> None:
    with LogStore(store_dir, segment_bytes=2048, merge_step_bytes=512) as s:
        for rnd in range(20):
            for i in range(50):
                s.put(b"k%02d" % i, b"%d-%d" % (rnd, i) * 4)
        for i in range(25):
            s.delete(b"k%02d" % i)
        before = s.stats()
        settle(s)
        after = s.stats()
        assert after.merges > 0
        assert after.data_bytes < before.data_bytes / 4
        assert after.live_bytes == before.live_bytes
        s.check_invariants()
        for i in range(50):
            r = s.get(b"k%02d" % i)
            assert r is not None
            assert r.tombstone == (i < 25)
            if i >= 25:
                assert r.value == b"19-%d" % i * 4
    with LogStore(store_dir, segment_bytes=2048) as s:
        assert len(s) == 50
        s.check_invariants()


def test_merge_runs_in_bounded_steps_while_writes_continue(store_dir: Path) -> None:
    with LogStore(store_dir, segment_bytes=8192, merge_step_bytes=512) as s:
        model: dict[bytes, bytes] = {}
        rng = random.Random(7)
        for i in range(2000):
            k = b"k%03d" % rng.randrange(300)
            model[k] = b"%d" % i * 3
            s.put(k, model[k])
        s.sync()
        steps = 0
        for _ in range(3000):
            # Reads and writes go on between the slices of a merge.
            k = b"k%03d" % rng.randrange(300)
            model[k] = os.urandom(8)
            s.put(k, model[k])
            probe = b"k%03d" % rng.randrange(300)
            rec = s.get(probe)
            assert (rec.value if rec else None) == model.get(probe)
            if rng.random() < 0.2:
                s.sync()
            steps += s.maybe_merge()
        merges = s.stats().merges
        assert merges > 0
        # Slices of 512 bytes over 8 KiB segments: a merge takes many calls.
        assert steps > 4 * merges
        s.check_invariants()
        for k, v in model.items():
            rec = s.get(k)
            assert rec is not None and rec.value == v


def test_merge_swap_waits_for_superseding_writes_to_be_durable(store_dir: Path) -> None:
    with LogStore(store_dir, segment_bytes=512, merge_step_bytes=256) as s:
        for i in range(60):
            s.put(b"k%d" % (i % 5), b"x" * 30)
        s.sync()
        while s._merge is None:
            assert s.maybe_merge()
        s.put(b"k0", b"overwrite, not yet durable")
        while s.maybe_merge():
            pass
        # All copied, but the inputs may hold k0's old record, whose replacement
        # a crash could still lose: the swap waits for a sync.
        assert s._merge is not None and s._merge.idx == len(s._merge.inputs)
        for _ in range(20):  # however long it waits: only a sync() can cover a client write
            assert not s.maybe_merge()
        assert s._merge.stage == 1
        merges = s.stats().merges
        s.sync()
        while merging(s):  # the swap, then the inputs deleted a step at a time
            if not s.maybe_merge():
                s.sync()  # the swap's rename must be durable before inputs go
        assert s.stats().merges == merges + 1
        s.check_invariants()


def test_merges_need_no_fsync_on_the_owner_thread_when_maintenance_is_synced(
    store_dir: Path,
) -> None:
    """Driven as the runtime drives it (merge and hint output fsynced by
    sync_maintenance() on another thread once it piles up or a job waits for it),
    maybe_merge() itself never fsyncs: the event loop never waits for a disk."""
    with LogStore(store_dir, segment_bytes=2048, merge_step_bytes=512) as s:
        inline: list[bool] = []
        in_merge = False
        real_sync = s._sync

        def watched_sync(*, data: bool) -> int:
            inline.append(in_merge)
            return real_sync(data=data)

        s._sync = watched_sync  # type: ignore[method-assign]
        for rnd in range(30):
            for i in range(40):
                s.put(b"k%02d" % i, b"%d-%d" % (rnd, i) * 6)
            s.sync()
        merges = s.stats().merges
        idle = 0
        while idle < 20:
            in_merge = True
            busy = s.maybe_merge()
            in_merge = False
            if s.maintenance_sync_wanted(1024):
                s.sync_maintenance()
                assert not s.maintenance_sync_wanted(0)
                busy = True
            idle = 0 if busy else idle + 1
        assert s.stats().merges > merges
        assert inline and not any(inline)
        s.check_invariants()
    # Left alone, the same work fsyncs inline once it has waited long enough.
    with LogStore(store_dir.parent / "left-alone", segment_bytes=2048,
                  merge_step_bytes=512) as s:
        calls: list[bool] = []
        real = s._sync
        s._sync = lambda *, data: calls.append(data) or real(data=data)  # type: ignore[method-assign]
        for rnd in range(30):
            for i in range(40):
                s.put(b"k%02d" % i, b"%d-%d" % (rnd, i) * 6)
            s.sync()
        calls.clear()
        before = s.stats().merges
        for _ in range(5000):
            if s.stats().merges > before:
                break
            s.maybe_merge()
        assert s.stats().merges > before
        assert False in calls  # maintenance-only fsyncs, made inside maybe_merge()


def test_tombstones_stay_until_the_hook_allows(store_dir: Path) -> None:
    allowed: set[bytes] = set()
    asked: list[bytes] = []

    def may_drop(key: bytes, record: Record) -> bool:
        assert record.tombstone
        asked.append(key)
        return key in allowed

    with LogStore(store_dir, segment_bytes=1024, may_drop_tombstone=may_drop) as s:
        for i in range(10):
            s.put(b"k%d" % i, b"v")
            s.delete(b"k%d" % i)
        settle(s)
        assert len(s) == 10
        assert set(asked) == {b"k%d" % i for i in range(10)}
        allowed.update({b"k1", b"k2"})
        settle(s)
        assert s.get(b"k1") is None and s.get(b"k2") is None
        assert s.get(b"k3") is not None
        assert len(s) == 8
    with LogStore(store_dir, segment_bytes=1024) as s:
        assert s.get(b"k1") is None and s.get(b"k2") is None
        assert len(s) == 8


def test_purge_marker_outlives_older_records_elsewhere(store_dir: Path) -> None:
    """A merge may drop a purge marker only if no older record of its key can remain."""
    opts = {"segment_bytes": 512, "merge_step_bytes": 4096, "merge_fragmentation": 0.6}
    with LogStore(store_dir, **opts) as s:  # type: ignore[arg-type]
        s.put(b"victim", b"old value")
        for i in range(8):
            s.put(b"keep%d" % i, b"x" * 40)
        s.put(b"keep0", b"y")  # the first segment now holds a dead record: it blocks drops
        s.delete(b"victim")
        s.purge(b"victim")
        # Leave the marker nearly alone in its segment, so that segment gets merged
        # while the first one (old value, some dead bytes, too few to merge) stays.
        for k in (b"keep0", b"keep5", b"keep6", b"keep7"):
            s.put(k, b"w")
        for i in range(40):
            s.put(b"churn%d" % (i % 4), b"z" * 40)
        first = seg_files(store_dir)[0]
        settle(s)
        assert s.stats().merges > 0
        assert first.exists()  # still holds the old value of the victim
        assert s.get(b"victim") is None
        s.check_invariants()
    with LogStore(store_dir, **opts) as s:  # type: ignore[arg-type]
        assert s.get(b"victim") is None
        assert s.get(b"keep0") == Record(b"w", b"", False, 12)


def test_everything_deleted_and_purged_leaves_almost_nothing(store_dir: Path) -> None:
    with LogStore(store_dir, segment_bytes=1024, merge_step_bytes=1024) as s:
        for i in range(200):
            s.put(b"k%03d" % i, b"v" * 30)
        for i in range(200):
            s.delete(b"k%03d" % i)
            s.purge(b"k%03d" % i)
        for _ in range(20):
            settle(s)
            s.put(b"tick", b"t" * 200)  # newer segments let the oldest markers go
        assert len(s) == 1
        assert s.stats().data_bytes < 4096
        s.check_invariants()
    with LogStore(store_dir, segment_bytes=1024) as s:
        assert len(s) == 1


# -- token order -------------------------------------------------------------------------------


def expected_range(model: dict[bytes, Record], start: int, end: int) -> list[bytes]:
    keys = [k for k in model if start == end or in_range(key_token(k), start, end)]
    wraps = start > end
    return sorted(keys, key=lambda k: (wraps and key_token(k) <= end, key_token(k)))


def test_iter_range_matches_brute_force(store: LogStore) -> None:
    rng = random.Random(3)
    model: dict[bytes, Record] = {}
    for i in range(600):
        k = b"key-%d" % i
        model[k] = Record(b"v", b"", False, store.put(k, b"v"))
    points = [0, 1, TOKEN_SPACE - 1, *(rng.randrange(TOKEN_SPACE) for _ in range(20))]
    points += [key_token(k) for k in list(model)[:5]]
    for start in points:
        for end in points[:8]:
            got = list(store.iter_range(start, end))
            assert [k for k, _ in got] == expected_range(model, start, end)
            assert all(r == model[k] for k, r in got)
    # Keys added, purged and re-added after the index was built are found exactly once.
    store.purge(b"key-1")
    del model[b"key-1"]
    for i in range(600, 650):
        k = b"key-%d" % i
        model[k] = Record(b"w", b"", False, store.put(k, b"w"))
    model[b"key-1"] = Record(b"back", b"", False, store.put(b"key-1", b"back"))
    assert [k for k, _ in store.iter_range(5, 5)] == expected_range(model, 5, 5)


def test_iter_range_snapshot_of_keys(store: LogStore) -> None:
    for i in range(20):
        store.put(b"k%d" % i, b"v")
    order = [k for k, _ in store.iter_range(0, 0)]
    it = store.iter_range(0, 0)
    store.put(b"new", b"v")
    assert next(it)[0] == order[0]
    store.purge(order[-1])
    store.put(order[1], b"changed")
    rest = list(it)
    assert [k for k, _ in rest] == order[1:-1]
    assert rest[0][1].value == b"changed"


def test_hint_with_a_valid_checksum_but_bad_entries_is_dropped(store_dir: Path) -> None:
    import zlib

    with LogStore(store_dir, segment_bytes=1024) as s:
        for i in range(60):
            s.put(b"key%03d" % i, b"v")
    salt = int((store_dir / "FORMAT").read_text().splitlines()[2].removeprefix("salt "), 16)
    hint = sorted(store_dir.glob("*.hint"))[-1]
    data = bytearray(hint.read_bytes()[:-4])
    count = int.from_bytes(data[-4:], "little")
    data[-4:] = (count + 1).to_bytes(4, "little")  # one entry more than the file holds
    hint.write_bytes(bytes(data) + zlib.crc32(bytes(data), salt).to_bytes(4, "little"))
    with LogStore(store_dir, segment_bytes=1024) as s:
        assert s.recovery.segments_scanned == 1
        assert len(s) == 60
        s.check_invariants()


# -- injected faults -----------------------------------------------------------------------


def test_failed_fsync_fails_the_store_until_reopened(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = LogStore(store_dir)
    s.put(b"durable", b"1")
    s.sync()
    s.put(b"maybe", b"2")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StoreFailedError):
        s.sync()
    monkeypatch.undo()
    # Retrying could report durability the kernel no longer backs: refuse instead.
    with pytest.raises(StoreFailedError):
        s.sync()
    with pytest.raises(StoreFailedError):
        s.put(b"x", b"y")
    assert s.durable_seq == 1
    s.close()
    with LogStore(store_dir) as again:
        assert again.get(b"durable") is not None


def test_a_full_disk_fails_the_put_before_anything_is_written(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends go through a map of preallocated space: a full disk shows when the next
    stretch is allocated, as an OSError, never as a torn record or a SIGBUS."""
    s = LogStore(store_dir, segment_bytes=256)
    s.put(b"a", b"1" * 100)
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, size: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        s.put(b"b", b"2" * 200)  # does not fit: a new segment, whose space is refused
    with pytest.raises(OSError):
        s.put(b"b", b"2" * 200)
    monkeypatch.setattr(os, "posix_fallocate", real)
    assert s.get(b"b") is None
    assert s.put(b"c", b"3") == 2  # the failed puts took no sequence number
    s.check_invariants()
    s.close()
    with LogStore(store_dir, segment_bytes=256) as again:
        assert again.recovery.truncated_bytes == 0
        assert again.stats().corrupt_records == 0
        assert again.get(b"c") == Record(b"3", b"", False, 2)
        assert again.get(b"a") == Record(b"1" * 100, b"", False, 1)


@pytest.mark.parametrize("how", ["unsupported", "missing"])
def test_without_fallocate_the_space_is_written_with_zeros(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "missing":
        monkeypatch.delattr(os, "posix_fallocate")
    else:
        monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, size: (_ for _ in ()).throw(
            OSError(errno.EOPNOTSUPP, "Operation not supported")))
    with LogStore(store_dir, segment_bytes=4096) as s:
        for i in range(100):
            s.put(b"k%d" % i, b"v" * 50)
        s.check_invariants()
        sizes = [p.stat().st_size for p in seg_files(store_dir)]
        assert max(sizes) == 4096  # the active segment, preallocated in full
    assert all(p.stat().st_size < 4096 for p in seg_files(store_dir))  # cut back at close
    with LogStore(store_dir, segment_bytes=4096) as s:
        assert len(s) == 100 and s.get(b"k99") == Record(b"v" * 50, b"", False, 100)


def test_preallocated_space_left_by_a_crash_is_not_a_torn_tail(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = LogStore(store_dir)
    for i in range(50):
        s.put(b"k%d" % i, b"v%d" % i)
    s.sync()
    s.abandon()  # as a killed process leaves it: the active segment's file runs on in zeros
    seg = seg_files(store_dir)[-1]
    with open(seg, "rb") as f:
        data = f.read()
    assert len(data) > 100_000 and data.endswith(bytes(100_000))
    with caplog.at_level(logging.WARNING), LogStore(store_dir) as again:
        assert again.recovery.truncated_bytes == 0
        assert again.stats().corrupt_records == 0
        assert not again.needs_repair()
        assert len(again) == 50 and again.get(b"k49") == Record(b"v49", b"", False, 50)
        assert seg.stat().st_size < 4096  # the zeros are gone
    assert not caplog.records


def test_a_removed_directory_fails_the_next_sync_and_close_still_closes(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = LogStore(store_dir)
    s.put(b"durable", b"1")
    s.sync()
    shutil.rmtree(store_dir)
    s.put(b"lost", b"2")  # lands in the unlinked segment: no error yet ...
    with pytest.raises(StoreFailedError):
        s.sync()  # ... but it can never become durable, and the store says so
    with pytest.raises(OSError):  # what the node catches to answer STORAGE_ERROR
        s.put(b"x", b"y")
    assert s.durable_seq == 1
    with caplog.at_level(logging.WARNING):
        s.close()  # the hint files it cannot write any more are only an optimisation
    assert not store_dir.exists()


def test_the_nodes_epoch_file_beside_the_store_is_left_alone(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store_dir.mkdir(exist_ok=True)
    (store_dir / "EPOCH").write_text("1\n")  # a node may record its run first
    with caplog.at_level(logging.WARNING):
        with LogStore(store_dir) as s:
            s.put(b"k", b"v")
        with LogStore(store_dir) as s:
            assert s.get(b"k") is not None
    assert not [r for r in caplog.records if "EPOCH" in r.getMessage()]
    assert (store_dir / "EPOCH").read_text() == "1\n"


def test_merge_and_hint_writes_resume_after_a_failed_write(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = LogStore(store_dir, segment_bytes=1024, merge_step_bytes=256)
    model: dict[bytes, bytes] = {}
    for i in range(400):
        model[b"k%02d" % (i % 40)] = b"%d" % i * 4
        s.put(b"k%02d" % (i % 40), model[b"k%02d" % (i % 40)])
    s.sync()
    real = os.pwrite
    failures = 0

    def flaky(fd: int, data: bytes, offset: int) -> int:
        nonlocal failures
        if failures < 6 and offset > 0 and len(data) > 100:
            failures += 1
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", flaky)
    errors = 0
    for _ in range(10_000):
        try:
            if not s.maybe_merge():
                s.sync()
                if not s.maybe_merge():
                    break
        except OSError:
            errors += 1
    monkeypatch.undo()
    assert errors == failures == 6
    assert s.stats().merges > 0
    s.check_invariants()
    assert {k: s.get(k).value for k in model} == model  # type: ignore[union-attr]
    s.close()
    with LogStore(store_dir, segment_bytes=1024) as again:
        assert again.recovery.segments_scanned == 0
        assert {k: again.get(k).value for k in model} == model  # type: ignore[union-attr]
        again.check_invariants()


def test_a_record_of_another_key_is_never_served(store_dir: Path) -> None:
    """A get checks the record's own key, its length included: a prefix is not the key."""
    with LogStore(store_dir) as s:
        for k in (b"ab", b"abc", b"xy"):
            s.put(k, b"value of " + k)
    s = LogStore(store_dir)  # reopened: the segment is read through its map
    try:
        kd = s._kd
        # ab -> the record of abc (ab is its prefix), abc -> xy's (shorter), xy -> ab's.
        kd[b"ab"], kd[b"abc"], kd[b"xy"] = kd[b"abc"], kd[b"xy"], kd[b"ab"]
        assert [s.get(k) for k in (b"ab", b"abc", b"xy")] == [None, None, None]
        assert s.needs_repair() == {b"ab", b"abc", b"xy"}
    finally:
        s.abandon()


def test_reads_when_the_checksum_of_nothing_is_the_residue(store_dir: Path) -> None:
    """A record the maps do not cover reads as an empty slice, whose CRC is the salt; a
    salt equal to CRC_RESIDUE passes the checksum, and the read must still go to pread."""
    s = LogStore(store_dir)
    try:
        s._salt = CRC_RESIDUE
        big = os.urandom(20_000)  # too big to keep its size in the keydir
        s.put(b"k", b"v")  # the active segment, not mapped yet
        s.put(b"big", big)
        assert s.get(b"k") == Record(b"v", b"", False, 1)
        assert s.get(b"big") == Record(big, b"", False, 2)
        assert not s.needs_repair()
    finally:
        s.abandon()


def test_reads_of_a_growing_active_segment(store_dir: Path) -> None:
    """The active segment is read through a map remapped as it grows, pread past it."""
    with LogStore(store_dir) as s:
        values = {b"k%05d" % i: os.urandom(300) for i in range(8000)}  # ~2.6 MB, one segment
        for i, (k, v) in enumerate(values.items()):
            s.put(k, v)
            if i % 1000 == 999:  # reads now and then, so some land past the current map
                assert s.get(k) == Record(v, b"", False, i + 1)
                assert s.get(b"k%05d" % (i // 2)) is not None
        assert s.stats().segments == 1
        for i, (k, v) in enumerate(values.items()):
            assert s.get(k) == Record(v, b"", False, i + 1)
        s.put(b"k00000", b"overwritten after the map was made")
        assert s.get(b"k00000") == Record(b"overwritten after the map was made", b"", False, 8001)
