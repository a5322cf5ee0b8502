"""Both storage engines against a dict model: put, delete, purge, sync, merge, reopen, crash.

The same state machine drives the log store and the memory engine. A crash loses
exactly the writes no sync covered: the memory engine's crash() does that itself;
for the log store a tracker watches every fsync, rename and unlink the engine makes,
and the crash cuts each file back to what its last fsync covered (deleting files
never fsynced), which is what a power cut may leave behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ringfs.hashing import TOKEN_SPACE, in_range, key_token
from ringfs.storage.engine import Record
from ringfs.storage.logstore import LogStore
from ringfs.storage.memory import MemoryEngine

KEYS = [b"a", b"b", b"c", b"d", b"e", b"f", b"key-with-a-longer-name", b""]
keys = st.sampled_from(KEYS)
values = st.binary(max_size=48)
metas = st.binary(max_size=8)
tokens = st.one_of(
    st.sampled_from([0, 1, TOKEN_SPACE - 1, TOKEN_SPACE // 2]),
    st.sampled_from(KEYS).map(key_token),
    st.sampled_from(KEYS).map(lambda k: (key_token(k) - 1) % TOKEN_SPACE),
    st.integers(0, TOKEN_SPACE - 1),
)


class FsyncTracker:
    """Remembers, per file name under `root`, what the last fsync covered: the file's
    bytes as they were when it started (not only a length: the active segment's file
    is preallocated ahead of its records)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.durable: dict[str, bytes] = {}
        self._saved: dict[str, Callable[..., Any]] = {}

    def install(self) -> None:
        real_fsync, real_fdatasync = os.fsync, os.fdatasync
        real_rename, real_replace, real_unlink = os.rename, os.replace, os.unlink

        def note(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.startswith(self.root + os.sep) and not os.path.isdir(path):
                # Read before the fsync starts: every byte written by then is covered.
                with open(path, "rb") as f:  # (the descriptor may be write-only)
                    self.durable[path] = f.read()

        def fsync(fd: int) -> None:
            note(fd)
            real_fsync(fd)

        def fdatasync(fd: int) -> None:
            note(fd)
            real_fdatasync(fd)

        def moved(src: Any, dst: Any) -> None:
            kept = self.durable.pop(os.fspath(src), None)
            if kept is None:
                self.durable.pop(os.fspath(dst), None)
            else:
                self.durable[os.fspath(dst)] = kept

        def rename(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            real_rename(src, dst, *args, **kw)
            moved(src, dst)

        def replace(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            real_replace(src, dst, *args, **kw)
            moved(src, dst)

        def unlink(path: Any, *args: Any, **kw: Any) -> None:
            real_unlink(path, *args, **kw)
            self.durable.pop(os.fspath(path), None)

        self._saved = {
            "fsync": real_fsync,
            "fdatasync": real_fdatasync,
            "rename": real_rename,
            "replace": real_replace,
            "unlink": real_unlink,
        }
        for name, fn in (
            ("fsync", fsync),
            ("fdatasync", fdatasync),
            ("rename", rename),
            ("replace", replace),
            ("unlink", unlink),
        ):
            setattr(os, name, fn)

    def uninstall(self) -> None:
        for name, fn in self._saved.items():
            setattr(os, name, fn)
        self._saved = {}

    def power_cut(self) -> None:
        """Leave on disk only what fsync covered; the engine must already be abandoned."""
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            keep = self.durable.get(path)
            if keep is None:
                self._saved.get("unlink", os.unlink)(path)
            else:
                with open(path, "r+b") as f:
                    f.write(keep)
                    f.truncate(len(keep))


class EngineMachine(RuleBasedStateMachine):
    """Drives one engine and a dict model through the same operations."""

    kind = "log"

    def __init__(self) -> None:
        super().__init__()
        self.reapable: set[bytes] = set()
        self.model: dict[bytes, Record] = {}
        self.durable: dict[bytes, Record] = {}
        self.last_seq = 0
        self.durable_seq = 0
        self.dir = ""
        self.tracker: FsyncTracker | None = None
        self.engine: LogStore | MemoryEngine

    def _may_drop(self, key: bytes, record: Record) -> bool:
        assert record.tombstone
        return key in self.reapable

    def _open(self) -> LogStore:
        return LogStore(
            self.dir,
            segment_bytes=512,
            merge_step_bytes=256,
            merge_fragmentation=0.4,
            may_drop_tombstone=self._may_drop,
        )

    @initialize()
    def start(self) -> None:
        if self.kind == "memory":
            self.engine = MemoryEngine(may_drop_tombstone=self._may_drop)
            return
        self.dir = tempfile.mkdtemp(prefix="ringfs-model-")
        self.tracker = FsyncTracker(self.dir)
        self.tracker.install()
        self.engine = self._open()

    def teardown(self) -> None:
        engine = getattr(self, "engine", None)
        if isinstance(engine, LogStore):
            engine.abandon()
        if self.tracker is not None:
            self.tracker.uninstall()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- writes ----------------------------------------------------------------------

    @rule(key=keys, value=values, meta=metas)
    def put(self, key: bytes, value: bytes, meta: bytes) -> None:
        seq = self.engine.put(key, value, meta)
        self.last_seq += 1
        assert seq == self.last_seq
        self.model[key] = Record(value, meta, False, seq)

    @rule(writes=st.lists(st.tuples(keys, st.one_of(st.none(), values)), max_size=12))
    def write_many(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        """Several writes in one step (None deletes), so segments fill and roll often."""
        for key, value in writes:
            if value is None:
                self.delete(key, b"")
            else:
                self.put(key, value, b"m")

    @rule(key=keys, meta=metas)
    def delete(self, key: bytes, meta: bytes) -> None:
        seq = self.engine.delete(key, meta)
        self.last_seq += 1
        assert seq == self.last_seq
        self.model[key] = Record(b"", meta, True, seq)

    @rule(key=keys)
    def purge(self, key: bytes) -> None:
        self.engine.purge(key)
        self.model.pop(key, None)

    @rule(key=keys)
    def allow_reaping(self, key: bytes) -> None:
        self.reapable.add(key)

    # -- durability and maintenance ---------------------------------------------------

    @rule()
    def sync(self) -> None:
        assert self.engine.sync() == self.last_seq
        self.durable = dict(self.model)
        self.durable_seq = self.last_seq

    @rule()
    def merge(self) -> None:
        """Background work while no sync comes: the timer ticks until nothing is left.

        Several idle rounds, because the log store waits a few calls for the
        runtime's sync() before fsyncing its merge and hint files itself.
        """
        for _ in range(12):
            for _ in range(10_000):
                if not self.engine.maybe_merge():
                    break
            else:
                raise AssertionError("maybe_merge() never ran out of work")
        # A full round asks the hook about every tombstone; approved ones are purged
        # (not yet durably, exactly like purge()).
        for key, record in list(self.model.items()):
            if record.tombstone and key in self.reapable:
                del self.model[key]

    @rule()
    def quiet_period(self) -> None:
        """The runtime syncs and the background work runs to the end, twice over."""
        for _ in range(3):
            self.sync()
            self.merge()

    @rule()
    def reopen(self) -> None:
        if isinstance(self.engine, LogStore):
            self.engine.close()
            self.engine = self._open()
        else:
            self.engine.sync()  # what close() would have done
        self.durable = dict(self.model)
        self.durable_seq = self.last_seq

    @rule()
    def crash(self) -> None:
        if isinstance(self.engine, LogStore):
            assert self.tracker is not None
            self.engine.abandon()
            self.tracker.power_cut()
            self.engine = self._open()
        else:
            self.engine.crash()
        self.model = dict(self.durable)
        self.last_seq = self.durable_seq
        assert self.engine.last_seq == self.last_seq

    # -- reads -----------------------------------------------------------------------

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.engine.get(key) == self.model.get(key)

    @rule(start=tokens, end=tokens)
    def iter_range(self, start: int, end: int) -> None:
        got = list(self.engine.iter_range(start, end))
        picked = [k for k in self.model if start == end or in_range(key_token(k), start, end)]
        wraps = start >= end and start != end
        picked.sort(key=lambda k: (wraps and key_token(k) <= end, key_token(k)))
        assert got == [(k, self.model[k]) for k in picked]

    @precondition(lambda self: self.kind == "log")
    @rule()
    def check_log_invariants(self) -> None:
        assert isinstance(self.engine, LogStore)
        self.engine.check_invariants()

    @invariant()
    def agrees_with_model(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is None:
            return
        assert len(engine) == len(self.model)
        assert engine.last_seq == self.last_seq
        assert engine.durable_seq <= engine.last_seq
        stats = engine.stats()
        assert stats.keys == len(self.model)
        assert stats.tombstones == sum(r.tombstone for r in self.model.values())
        assert stats.corrupt_records == 0


class LogStoreMachine(EngineMachine):
    kind = "log"


class MemoryMachine(EngineMachine):
    kind = "memory"


MACHINES = {"log": LogStoreMachine, "memory": MemoryMachine}


@pytest.mark.parametrize("kind", sorted(MACHINES))
def test_engine_matches_model(kind: str) -> None:
    """Quick run for every `make test`; the soak profile runs the long one below."""
    profile = settings()
    quick = settings(
        profile,
        max_examples=min(profile.max_examples, 60),
        stateful_step_count=min(profile.stateful_step_count, 50),
    )
    run_state_machine_as_test(MACHINES[kind], settings=quick)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(MACHINES))
def test_engine_matches_model_soak(kind: str) -> None:
    """The same machine with the loaded profile's full budget (make soak)."""
    profile = settings()
    if profile.max_examples <= settings.get_profile("default").max_examples:
        pytest.skip("long campaign; runs under the soak profile")
    run_state_machine_as_test(MACHINES[kind], settings=profile)
