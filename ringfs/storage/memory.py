"""An in-memory engine with the durability semantics of a real disk.

The simulator hands it to nodes and crashes it: `crash()` throws away exactly
the writes that no `sync()` covered, as a power cut would. It keeps an undo log of
unsynced writes, so every operation, sync and crash included, costs O(1) per
write rather than a copy of the whole store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ringfs.hashing import in_range, key_token
from ringfs.storage.engine import EngineStats, Record, TombstonePolicy, new_record


class MemoryEngine:
    """A dict-backed StorageEngine that can lose its unsynced writes on `crash()`."""

    sync_blocks = False
    """sync() never waits on a device, so drivers may call it inline."""

    def __init__(self, may_drop_tombstone: TombstonePolicy | None = None) -> None:
        self._data: dict[bytes, Record] = {}
        self._tokens: dict[bytes, int] = {}
        # (seq, key, record it replaced) for every write not yet covered by a sync.
        self._undo: list[tuple[int, bytes, Record | None]] = []
        self._last_seq = 0
        self._durable_seq = 0
        self._merges = 0
        self._may_drop = may_drop_tombstone
        self._lock = threading.Lock()
        self._closed = False
        self._rotten: set[bytes] = set()
        self._repair: set[bytes] = set()
        self._corrupt = 0

    # -- bit rot (the simulator's disks) ---------------------------------------------
    def rot(self, key: bytes) -> bool:
        """Damage the stored record of `key` as bit rot would: like the log store, the
        engine finds it on the next read (a checksum that fails), counts it, never
        serves it and reports the key in needs_repair(). False if `key` is absent."""
        if key not in self._data:
            return False
        self._rotten.add(key)
        return True

    def _detect(self, key: bytes) -> None:
        """A read found `key` rotten: drop it, count it, ask for its repair."""
        self._rotten.discard(key)
        self._data.pop(key, None)
        self._tokens.pop(key, None)
        self._repair.add(key)
        self._corrupt += 1

    def needs_repair(self) -> frozenset[bytes]:
        """Keys whose record was found damaged and dropped; a write takes a key out."""
        return frozenset(self._repair)

    # -- reads -----------------------------------------------------------------
    def get(self, key: bytes) -> Record | None:
        if self._rotten and key in self._rotten:
            self._detect(key)
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: bytes) -> bool:
        return key in self._data

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        """Every stored key starting with `prefix` (tombstones included), unordered."""
        return [k for k in self._data if k.startswith(prefix)]

    def iter_range(self, start: int, end: int) -> Iterator[tuple[bytes, Record]]:
        whole = start == end
        picked = [
            (tok, k)
            for k, tok in self._tokens.items()
            if whole or in_range(tok, start, end)
        ]
        # Wrapping ranges list the tail of the ring (after start) first.
        picked.sort(key=lambda tk: (not whole and start >= end and tk[0] <= end, tk[0]))
        for _, k in picked:
            if k in self._rotten:
                self._detect(k)
        snapshot = [(k, self._data[k]) for _, k in picked if k in self._data]
        return iter(snapshot)

    # -- writes ----------------------------------------------------------------
    def _write(self, key: bytes, value: bytes, meta: bytes, tombstone: bool) -> int:
        self._check_open()
        with self._lock:
            self._last_seq += 1
            seq = self._last_seq
            self._undo.append((seq, key, self._data.get(key)))
        self._rotten.discard(key)
        self._repair.discard(key)
        self._data[key] = new_record(Record, (value, meta, tombstone, seq))
        if key not in self._tokens:
            self._tokens[key] = key_token(key)
        return seq

    def put(self, key: bytes, value: bytes, meta: bytes = b"") -> int:
        return self._write(key, value, meta, False)

    def delete(self, key: bytes, meta: bytes = b"") -> int:
        return self._write(key, b"", meta, True)

    def purge(self, key: bytes) -> None:
        self._check_open()
        self._rotten.discard(key)
        old = self._data.pop(key, None)
        if old is not None:
            self._tokens.pop(key, None)
            with self._lock:
                # A purge is undone by a crash too, like any unsynced change.
                self._undo.append((self._last_seq, key, old))

    # -- durability ------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    def sync(self) -> int:
        with self._lock:
            self._undo.clear()
            self._durable_seq = self._last_seq
            return self._durable_seq

    def crash(self) -> None:
        """Lose every write since the last sync, as a power cut would."""
        with self._lock:
            for _, key, old in reversed(self._undo):
                if old is None:
                    self._data.pop(key, None)
                    self._tokens.pop(key, None)
                else:
                    self._data[key] = old
                    self._tokens[key] = key_token(key)
            self._undo.clear()
            self._last_seq = self._durable_seq

    # -- maintenance -----------------------------------------------------------
    def maintenance_sync_wanted(self, max_unsynced: int) -> bool:
        return False  # maintenance here never writes anything

    def sync_maintenance(self) -> None:
        return None

    def maybe_merge(self) -> bool:
        if self._may_drop is None:
            return False
        doomed = [k for k, r in self._data.items() if r.tombstone and self._may_drop(k, r)]
        for k in doomed:
            self.purge(k)
        if doomed:
            self._merges += 1
        return bool(doomed)

    def stats(self) -> EngineStats:
        live = sum(len(k) + len(r.value) + len(r.meta) for k, r in self._data.items())
        return EngineStats(
            keys=len(self._data),
            tombstones=sum(1 for r in self._data.values() if r.tombstone),
            last_seq=self._last_seq,
            durable_seq=self._durable_seq,
            data_bytes=live,
            live_bytes=live,
            segments=1,
            corrupt_records=self._corrupt,
            merges=self._merges,
        )

    def close(self) -> None:
        if not self._closed:
            self.sync()
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")
