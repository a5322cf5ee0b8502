"""The synchronous storage-engine interface.

A node owns exactly one engine. The engine never blocks on durability during a
write: `put` and `delete` hand the record to the OS at once (or, for the memory
engine, to its volatile buffer) and return the record's sequence number. Making
writes durable is a separate step, `sync()`, which the runtime runs in a worker
thread (group commit) and the simulator runs inline; a write is acknowledged to a
client only once `durable_seq` has reached its sequence number.

Thread-safety contract: `sync()` may run in one worker thread while the event loop
thread keeps calling `put`/`delete`/`get`. Every other method is called from one
thread only.

Values are opaque bytes to the engine. The replication layer stores its causal
metadata (the encoded version vector and siblings) in `meta` beside the bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast, runtime_checkable

EPOCH_FILE = "EPOCH"
"""The node's run counter (ringfs/runtime/server.py, next_epoch), a file it keeps in
its data directory beside the engine's own; an engine leaves it alone."""


class Record(NamedTuple):
    """One stored version of a key, as the engine returns it."""

    value: bytes
    """The payload; empty for a tombstone unless the writer stored bytes in it."""
    meta: bytes
    """Replication metadata (causal context), opaque to the engine."""
    tombstone: bool
    """True when this record marks a deletion that must still be replicated."""
    seq: int
    """The engine-wide sequence number assigned when the record was written."""


new_record = cast(Callable[[type[Record], tuple[bytes, bytes, bool, int]], Record],
                  tuple.__new__)
"""`new_record(Record, (value, meta, tombstone, seq))` builds the same Record as
`Record(value, meta, tombstone, seq)`, three times faster: Record's own constructor is
a Python function. For the engines' hot paths."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of an engine's counters, for `ringfs status` and benchmarks."""

    keys: int
    """Live keys, tombstones included."""
    tombstones: int
    """Keys whose newest record is a tombstone."""
    last_seq: int
    """Highest sequence number handed out."""
    durable_seq: int
    """Highest sequence number known to be on stable storage."""
    data_bytes: int
    """Bytes the engine occupies on its medium (all segments, hint files)."""
    live_bytes: int
    """Bytes of the newest record of every key; data_bytes - live_bytes is reclaimable."""
    segments: int
    """Number of segment files (1 for the memory engine)."""
    corrupt_records: int
    """Records found corrupted since open; they are never served and need repair."""
    merges: int
    """Completed merges (compactions) since open."""


TombstonePolicy = Callable[[bytes, Record], bool]
"""Asked during merge whether a tombstone may be dropped for good (the reaping hook)."""


@runtime_checkable
class StorageEngine(Protocol):
    """What every engine offers the node. See the module docstring for the contract."""

    def get(self, key: bytes) -> Record | None:
        """The newest record of `key` (possibly a tombstone), or None if absent."""
        ...

    def put(self, key: bytes, value: bytes, meta: bytes = b"") -> int:
        """Store a new version of `key`; returns its sequence number. Not yet durable."""
        ...

    def delete(self, key: bytes, meta: bytes = b"") -> int:
        """Write a tombstone for `key` carrying `meta`; returns its sequence number."""
        ...

    def purge(self, key: bytes) -> None:
        """Forget `key` entirely (a reaped tombstone); need not be durable at once."""
        ...

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        """Every stored key starting with `prefix` (tombstones included), unordered."""
        ...

    def iter_range(self, start: int, end: int) -> Iterator[tuple[bytes, Record]]:
        """Keys whose token (ringfs.hashing.key_token) lies in (start, end], in token order.

        The range wraps when start >= end; start == end means the whole ring.
        Tombstones are included. The iterator reflects a snapshot taken when it is
        created; writes made while iterating may or may not appear.
        """
        ...

    def __len__(self) -> int:
        """Number of keys, tombstones included."""
        ...

    @property
    def last_seq(self) -> int:
        """Highest sequence number handed out so far."""
        ...

    @property
    def durable_seq(self) -> int:
        """Highest sequence number known to be durable."""
        ...

    def sync(self) -> int:
        """Make every write issued before the call durable; returns the new durable_seq.

        Blocking; safe to call from a worker thread while the owner keeps writing.
        """
        ...

    def stats(self) -> EngineStats:
        """Counters for status pages and benchmarks."""
        ...

    def needs_repair(self) -> frozenset[bytes]:
        """Keys whose newest record was found damaged (and dropped, never served): the
        node fetches them from other replicas. A key leaves the set when written again."""
        ...

    def maybe_merge(self) -> bool:
        """Run a merge step if fragmentation warrants it; True if work was done."""
        ...

    def maintenance_sync_wanted(self, max_unsynced: int) -> bool:
        """Whether maintenance (merges, hints) waits for an fsync of its output, or has
        more than `max_unsynced` bytes of it unsynced: then the runtime calls
        sync_maintenance() on a worker thread."""
        ...

    def sync_maintenance(self) -> None:
        """fsync the maintenance output only; blocking, safe in a worker thread."""
        ...

    def close(self) -> None:
        """Sync and release files. The engine is unusable afterwards."""
        ...
