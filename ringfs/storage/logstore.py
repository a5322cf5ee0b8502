"""The log-structured storage engine (the Bitcask model): the default engine of every node.

Theory of operation. Every put, delete and purge appends one checksummed record
to the active segment by copying it into a shared writable map of the file: the
bytes are in the OS page cache at once, without a system call, and sync() only
has to fsync. The file is preallocated ahead of the appends (posix_fallocate, a
few MiB at a time) so that a write through the map can never meet a full disk,
which would raise SIGBUS; a full disk shows as an OSError when the next stretch
is allocated, before anything is written. An in-memory key directory (keydir)
maps each key to the location of its newest record, packed into one int; a get
is one dict lookup, one read (a slice of the segment's map) and one checksum.
When the active segment reaches `segment_bytes` it is retired (immutable): its
writable map is dropped, the file is cut to the records' end and mapped
read-only, and a new segment is started. Retired segments get a hint file (each
record's key and location) so a restart reads hints instead of whole segments.
After a crash the active segment's preallocated, never written bytes read as
zeros: recovery cuts them off without counting them as a torn tail.

Overwrites and deletes leave dead records behind. maybe_merge() reclaims them a
bounded slice at a time: it copies the live records of the most fragmented
segments into a new segment, and once an fsync covers it and its hint, renames
it into place (its header names the segments it supersedes, which makes the swap
atomic) and only then deletes the old files. Its fsyncs ride on the runtime's
sync() calls, so the event loop does not wait on the disk. Purges write a small
marker record so that a reaped key stays gone across restarts; a marker is
dropped by a merge only once no older record of its key can exist outside the
merge (see docs/storage.md).

Recovery trusts nothing it has not checked: every record and hint is verified,
a torn tail is truncated, and a damaged record in the middle of a segment is
skipped, counted and reported through needs_repair(), never served.

Thread-safety: as the StorageEngine contract says, sync() may run in a worker
thread while the owner thread calls everything else. The two share only the
sequence counters and the lists of files that need an fsync, guarded by one lock
held for a few instructions; syncs are serialised by a second one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import re
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ringfs.hashing import TOKEN_SPACE, key_token
from ringfs.storage.checksum import crc32
from ringfs.storage.engine import (
    EPOCH_FILE,
    EngineStats,
    Record,
    TombstonePolicy,
    new_record,
)
from ringfs.storage.segment import (
    CRC_RESIDUE,
    FLAG_PURGE,
    FLAG_TOMBSTONE,
    HEADER_BYTES,
    KIND_LOG,
    KIND_MERGED,
    MAX_KEY_BYTES,
    RECORD_FIELDS,
    RECORD_HEADER,
    RECORD_OVERHEAD,
    RECORD_READ,
    CorruptRegion,
    FormatError,
    SegmentScanner,
    data_end,
    encode_hint_entry,
    encode_record,
    encode_segment_header,
    hint_file_footer,
    hint_file_header,
    parse_hint_file,
    read_segment_header,
    segment_header_bytes,
)

log = logging.getLogger("ringfs.storage")

__all__ = [
    "LogStore",
    "NotAStoreError",
    "RecoveryReport",
    "StorageError",
    "StoreFailedError",
    "StoreLockedError",
]

KiB = 1024
MiB = 1024 * KiB

FORMAT_FILE = "FORMAT"
LOCK_FILE = "LOCK"
_FORMAT_TAG = "ringfs-logstore"
_FORMAT_VERSION = 1
_SEG_NAME = re.compile(r"^([0-9a-f]{16})\.seg$")
_HINT_NAME = re.compile(r"^([0-9a-f]{16})\.hint$")
_TMP_NAME = re.compile(r"^[0-9a-f]{16}\.(seg|hint)\.tmp$|^FORMAT\.tmp$")
_QUARANTINE_SUFFIX = ".corrupt"

# A keydir location is one int below 2**60, so CPython stores it in 32 bytes:
# segment slot (14 bits) | offset in the segment (32 bits) | record size (14 bits).
# A size that does not fit is stored as 0, and the reader fetches the header first.
_SLOT_SHIFT = 46
_OFF_SHIFT = 14
_OFF_MASK = 0xFFFFFFFF
_SIZE_MASK = 0x3FFF
_MAX_SLOTS = 1 << 14
_LOC_MASK = (1 << 60) - 1
# While recovering, the keydir holds wider ints: the location above, then the exact
# size (32 bits), the tombstone and purge flags, and the sequence number on top, so
# that `value >> 93` orders records by (seq, is purge marker).
_LOAD_SIZE_SHIFT = 60
_LOAD_FLAGS_SHIFT = 92
_LOAD_RANK_SHIFT = 93
_LOAD_SEQ_SHIFT = 94

_GROW_BYTES = 4 * MiB
"""The active segment's file is preallocated and mapped this much further at a time
(never past segment_bytes, unless one record needs more)."""

_NO_SEQ = 1 << 62
"""min_seq of a segment holding no record yet."""

_TOKEN_BUCKET_BITS = 12
_TOKEN_SHIFT = 128 - _TOKEN_BUCKET_BITS

_crc32 = crc32
_unpack_read = RECORD_READ.unpack_from
# get() spells these out as literals; keep them in step.
assert (_SLOT_SHIFT, _OFF_SHIFT, _OFF_MASK, _SIZE_MASK) == (46, 14, 0xFFFFFFFF, 0x3FFF)
assert (CRC_RESIDUE, HEADER_BYTES) == (0x2144DF1C, 24)

_NO_MAP = b""
"""What _maps holds for a segment without a map: any slice of it is empty."""

_GATHER_BYTES = 64 * KiB
"""Records with at least this much value and meta are written from their parts."""
_PACK_FIELDS = RECORD_FIELDS.pack
_PACK_U32 = struct.Struct("<I").pack

_INLINE_SYNC_AFTER = 8
"""Calls a finished hint or merge waits for the runtime's next sync() to fsync its
files before maybe_merge() fsyncs them itself (the store is then idle anyway)."""

_INLINE_FLUSH_BYTES = 2 * MiB
"""Unsynced merge or hint bytes after which maybe_merge() fsyncs them itself: no sync()
has come for many calls, and a bounded fsync now beats one huge fsync later (a 100 MB
file sealed by a single fdatasync stalled ~45 ms on the test machine, 2 MB a few)."""

_TRIM_BYTES = 1 * MiB
"""A merged-away segment (and then its hint file) is shrunk by this much per
maybe_merge() call before it is unlinked: unlinking a 64 MiB file at once takes ~30 ms,
truncating 4 MiB up to 18 ms, 1 MiB 1-3 ms."""



class StorageError(Exception):
    """Base class of the log store's own errors."""


class StoreLockedError(StorageError):
    """Another process (or another LogStore in this one) has the data directory open."""


class NotAStoreError(StorageError):
    """The directory holds files but is not a ringfs log store, or one of another version."""


class _HintInconsistent(StorageError):
    """A hint passed its checksum but its entries do not fit its length (never expected)."""


class StoreFailedError(StorageError, OSError):
    """An fsync or write failed; the store refuses further writes until it is reopened.

    After a failed fsync the kernel may have dropped the dirty pages, so retrying
    could report durability that does not exist. Reopening re-reads what is on disk.
    """


@dataclass(frozen=True)
class RecoveryReport:
    """What opening the store found on disk."""

    segments_from_hints: int
    """Segments whose keys were read from a valid hint file."""
    segments_scanned: int
    """Segments read record by record (no hint, or a bad one)."""
    truncated_bytes: int
    """Bytes of torn tails cut off log segments."""
    removed_files: tuple[str, ...]
    """Leftovers deleted: temporary files, superseded segments, orphan hints, empty segments."""
    corrupt_records: int
    """Damaged records or regions found while scanning; they are skipped, never served."""


class _Segment:
    """One segment file and what the engine knows about it."""

    __slots__ = (
        "data_start",
        "fd",
        "has_hint",
        "hint_bytes",
        "id",
        "kind",
        "live",
        "marker_bytes",
        "marker_max_seq",
        "max_seq",
        "min_seq",
        "name",
        "size",
        "slot",
    )

    def __init__(self, seg_id: int, kind: int, fd: int, name: str, data_start: int, size: int):
        self.id = seg_id
        self.kind = kind
        self.fd = fd
        self.name = name
        self.data_start = data_start
        self.size = size
        """Bytes in the file, header included; the next record goes here."""
        self.slot = -1
        self.live = 0
        """Bytes of records the keydir (or the purge-marker table) points at."""
        self.min_seq = _NO_SEQ
        self.max_seq = 0
        """Highest seq handed out before or while this segment was written (header floor
        included); it survives merges so that sequence numbers are never reused."""
        self.marker_bytes = 0
        """Bytes of live purge markers (part of `live`): reclaimable once safe to drop."""
        self.marker_max_seq = 0
        """Highest seq of a marker placed here; an upper bound for the live ones."""
        self.has_hint = False
        self.hint_bytes = 0

    @property
    def dead(self) -> int:
        """Bytes of records nothing points at any more (or that are damaged)."""
        return self.size - self.data_start - self.live

    def fragmentation(self) -> float:
        body = self.size - self.data_start
        return (body - self.live) / body if body > 0 else 0.0


class _Flush:
    """A file maintenance writes whose fsync the next sync() does on its worker thread.

    Merges and hints never fsync on the owner thread while syncs are coming: on a
    busy disk one fsync can take tens of milliseconds, and the event loop must not
    wait for it. sync() flushes what they wrote so far along with the client writes.
    """

    __slots__ = ("fd", "size", "synced")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        """Bytes written so far."""
        self.synced = 0
        """Bytes an fsync has covered."""

    @property
    def clean(self) -> bool:
        return self.synced >= self.size


class _HintWriter:
    """Writes a hint file under a temporary name, a slice at a time, then renames it."""

    def __init__(self, directory: str, seg_id: int, salt: int) -> None:
        self.final = os.path.join(directory, f"{seg_id:016x}.hint")
        self.tmp = self.final + ".tmp"
        self.seg_id = seg_id
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        head = hint_file_header()
        _pwrite_all(self.fd, head, 0)
        self.crc = crc32(head, salt)
        self.count = 0
        self.sealed = False
        self.flush = _Flush(self.fd, len(head))

    def add(self, entries: bytes, count: int) -> None:
        """Append encoded entries; state advances only once the bytes are written."""
        if not count:
            return
        _pwrite_all(self.fd, entries, self.flush.size)
        self.flush.size += len(entries)
        self.crc = crc32(entries, self.crc)
        self.count += count

    def seal(self, seg_len: int) -> None:
        """Write the footer; the file is complete once an fsync covers it."""
        if not self.sealed:
            footer = hint_file_footer(self.crc, self.seg_id, seg_len, self.count)
            _pwrite_all(self.fd, footer, self.flush.size)
            self.flush.size += len(footer)
            self.sealed = True

    def install(self) -> int:
        """Rename the synced hint into place; returns its size. The caller marks the dir."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        os.rename(self.tmp, self.final)
        return self.flush.size

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class _HintJob:
    """Scanning a retired log segment to write its hint file."""

    __slots__ = ("regions", "scanner", "seg", "waits", "writer")

    def __init__(self, seg: _Segment) -> None:
        self.seg = seg
        self.scanner: SegmentScanner | None = None
        self.writer: _HintWriter | None = None
        self.regions: list[tuple[int, int]] = []
        self.waits = 0


class _MergeJob:
    """One merge in progress: inputs copied a slice per call into one output segment."""

    def __init__(
        self, inputs: list[_Segment], out: _Segment, tmp: str, hint: _HintWriter, floor: int
    ) -> None:
        self.inputs = inputs
        self.out = out
        self.out_flush = _Flush(out.fd, out.size)
        self.tmp = tmp
        self.hint = hint
        self.floor = floor
        """Purge markers with a lower seq may be dropped: no older record can exist outside."""
        self.idx = 0
        self.scanner: SegmentScanner | None = None
        self.regions: list[tuple[int, int]] = []
        self.needed_gen = 0
        """The write generation a sync must cover before the swap (see _merge_finish)."""
        self.stage = 0
        """0 copying, 1 sealed and waiting for fsyncs, 2 swapped (renamed), 3 deleting."""
        self.dir_epoch = 0
        self.deleted = 0
        """Inputs already deleted after the swap."""
        self.waits = 0


class LogStore:
    """A crash-safe, log-structured StorageEngine over one data directory.

    Owns the directory exclusively (flock on LOCK) until close(). See the module
    docstring for the design and docs/storage.md for the on-disk format.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 * MiB,
        merge_fragmentation: float = 0.5,
        max_key_bytes: int = 1 * KiB,
        max_value_bytes: int = 16 * MiB,
        may_drop_tombstone: TombstonePolicy | None = None,
        merge_step_bytes: int = 64 * KiB,
    ) -> None:
        """Open (creating if need be) the store in `path`.

        segment_bytes: the active segment is retired once a record would take it
            past this size (256 bytes to 1 GiB; tiny sizes are for tests).
        merge_fragmentation: a segment is merged once this fraction of its bytes is
            dead, in (0, 1].
        max_key_bytes, max_value_bytes: sanity limits on keys, and on values and
            meta each; a put over them raises ValueError.
        may_drop_tombstone: asked by maybe_merge() whether a tombstone may be
            forgotten; None keeps tombstones until purge() is called.
        merge_step_bytes: segment bytes one maybe_merge() call reads at most
            (plus one record), which bounds how long a call takes.
        """
        _check_int("segment_bytes", segment_bytes, 256, 1024 * MiB)
        _check_int("max_key_bytes", max_key_bytes, 1, MAX_KEY_BYTES)
        _check_int("max_value_bytes", max_value_bytes, 0, 256 * MiB)
        _check_int("merge_step_bytes", merge_step_bytes, 256, 1024 * MiB)
        if isinstance(merge_fragmentation, bool) or not isinstance(
            merge_fragmentation, (int, float)
        ):
            raise TypeError("merge_fragmentation must be a number")
        if not 0.0 < merge_fragmentation <= 1.0:
            raise ValueError("merge_fragmentation must be in (0, 1]")
        if may_drop_tombstone is not None and not callable(may_drop_tombstone):
            raise TypeError("may_drop_tombstone must be callable or None")

        self._dir = os.path.abspath(os.fspath(path))
        self._segment_bytes = segment_bytes
        self._merge_fragmentation = float(merge_fragmentation)
        self._max_key = max_key_bytes
        self._max_value = max_value_bytes
        self._step_bytes = merge_step_bytes
        self._may_drop = may_drop_tombstone

        self._lock = threading.Lock()
        self._sync_mutex = threading.Lock()
        self._closed = False
        self._reset_state()
        self._dir_fd = -1
        self._lock_fd = -1
        try:
            os.makedirs(self._dir, exist_ok=True)
            self._dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._lock_fd = _lock_directory(self._dir)
            try:
                self._recovery = self._recover()
            except _HintInconsistent as exc:
                # Found only after part of it was indexed: drop the hint and start over.
                log.warning("%s; removed it, recovering again", exc)
                self._close_segments()
                self._reset_state()
                self._recovery = self._recover()
        except BaseException:
            self._release_files()
            self._closed = True
            raise

    def _reset_state(self) -> None:
        """Everything recovery rebuilds from the files (also used to start recovery over)."""
        self._kd: dict[bytes, int] = {}
        self._purged: dict[bytes, int] = {}
        """Keys forgotten by purge() whose marker record is still on disk -> its location."""
        self._tombstones: set[bytes] = set()
        self._repair: set[bytes] = set()
        self._repair_all = False
        self._corrupt_seen: set[tuple[int, int]] = set()
        self._corrupt_records = 0
        self._merges = 0

        self._segs: list[_Segment | None] = []
        self._fds: list[int] = []
        self._maps: list[mmap.mmap | bytes] = []
        """Read-only maps of immutable segments: a get from one costs no system call.
        A slot without a map holds _NO_MAP, which slices like a map too short for any
        record, so get() needs no test for it."""
        self._wmap: mmap.mmap | None = None
        """The active segment's writable map (also its entry in _maps), or None before
        its first record: appends are copies into it."""
        self._wcap = 0
        """Bytes of the active segment's file preallocated and mapped by _wmap."""
        self._free_slots: list[int] = []
        self._active: _Segment | None = None
        self._dirty: list[_Segment] = []
        """Retired segments with writes no fsync has covered yet."""
        self._dir_dirty = False
        self._dir_epoch = 0
        """Bumped whenever the directory changes in a way a later step relies on."""
        self._dir_durable_epoch = 0
        self._flushes: list[_Flush] = []
        self._maintenance_waiting = False
        """A finished hint or merge is waiting for an fsync (see maintenance_sync_wanted)."""
        """Files of hints and merges that sync() fsyncs along with the segments."""
        self._next_id = 1
        self._salt = 0

        self._last_seq = 0
        self._durable_seq = 0
        self._gen = 0
        """Counts appends, purge markers included (they take no sequence number)."""
        self._durable_gen = 0
        self._failed: BaseException | None = None

        self._hint_jobs: list[_HintJob] = []
        self._merge: _MergeJob | None = None
        self._reap_queue: list[bytes] = []
        self._reap_round_done = False
        self._buckets: list[list[bytes]] | None = None
        self._unbucketed: list[bytes] = []

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 * MiB,
        merge_fragmentation: float = 0.5,
        max_key_bytes: int = 1 * KiB,
        max_value_bytes: int = 16 * MiB,
        may_drop_tombstone: TombstonePolicy | None = None,
        merge_step_bytes: int = 64 * KiB,
    ) -> LogStore:
        """Same as the constructor; reads better at call sites."""
        return cls(
            path,
            segment_bytes=segment_bytes,
            merge_fragmentation=merge_fragmentation,
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
            may_drop_tombstone=may_drop_tombstone,
            merge_step_bytes=merge_step_bytes,
        )

    # -- reads ---------------------------------------------------------------------

    def get(self, key: bytes) -> Record | None:
        """The newest record of `key`, or None; a record failing its checksum is never returned."""
        loc = self._kd.get(key)
        if loc is None:
            if self._closed:
                raise RuntimeError("engine is closed")
            return None
        # The location layout (see _SLOT_SHIFT) spelled out as literals: this is the
        # hottest path, and literal constants save global lookups on every call. A
        # record without a map (_NO_MAP), of 16 KiB or more (size 0) or past the end
        # of the active segment's map comes out short and fails the checksum.
        off = (loc >> 14) & 0xFFFFFFFF
        buf = self._maps[loc >> 46][off : off + (loc & 0x3FFF)]
        if _crc32(buf, self._salt) != 0x2144DF1C:
            return self._get_slow(key, loc)
        try:
            seq, tombstone, klen, mlen = _unpack_read(buf, 4)
        except struct.error:  # fewer than 20 bytes whose checksum happened to hold
            return self._get_slow(key, loc)
        a = 24 + klen
        # This also checks klen: a record is longer than 24 + klen bytes, so the slice
        # is klen bytes long, and equals `key` only if klen is its length.
        if buf[24:a] != key:
            return self._get_slow(key, loc)
        b = a + mlen
        return new_record(Record, (buf[b:-4], buf[a:b], tombstone, seq))

    def _get_slow(self, key: bytes, loc: int) -> Record | None:
        """get() when the mapped read failed its checks: read again past the map."""
        buf = self._read_unmapped(
            loc >> _SLOT_SHIFT, (loc >> _OFF_SHIFT) & _OFF_MASK, loc & _SIZE_MASK
        )
        if len(buf) >= RECORD_OVERHEAD and _crc32(buf, self._salt) == CRC_RESIDUE:
            seq, tombstone, klen, mlen = _unpack_read(buf, 4)
            a = HEADER_BYTES + klen
            if buf[HEADER_BYTES:a] == key:
                b = a + mlen
                return new_record(Record, (buf[b:-4], buf[a:b], tombstone, seq))
        self._unreadable(key, loc)
        return None

    def __len__(self) -> int:
        return len(self._kd)

    def __contains__(self, key: bytes) -> bool:
        return key in self._kd

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        """Every stored key starting with `prefix` (tombstones included), unordered; reads
        no record."""
        return [k for k in self._kd if k.startswith(prefix)]

    def iter_range(self, start: int, end: int) -> Iterator[tuple[bytes, Record]]:
        """Keys whose token lies in (start, end], in token order; see StorageEngine.

        The key set is captured when this is called; each record is read when the
        iterator reaches it, so a write made meanwhile may show its newer version,
        and a key purged meanwhile is skipped. Cost: O(k + n / 4096) per call for k
        keys in range, after an O(n) index build on first use.
        """
        self._check_open()
        keys = self._keys_in_range(start, end)
        return self._records_of(keys)

    def _records_of(self, keys: list[bytes]) -> Iterator[tuple[bytes, Record]]:
        for key in keys:
            record = self.get(key)
            if record is not None:
                yield key, record

    # -- writes --------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, meta: bytes = b"") -> int:
        """Append a new version of `key`; returns its sequence number. Not yet durable."""
        return self._append(key, value, meta, 0)

    def delete(self, key: bytes, meta: bytes = b"") -> int:
        """Append a tombstone for `key` carrying `meta`; returns its sequence number."""
        return self._append(key, b"", meta, FLAG_TOMBSTONE)

    def purge(self, key: bytes) -> None:
        """Forget `key`; a marker record makes that stick across restarts once synced."""
        self._check_writable()
        key = _as_key(key)
        old = self._kd.get(key)
        if old is None:
            return
        rec = encode_record(self._salt, self._last_seq, FLAG_PURGE, key, b"", b"")
        seg, loc = self._emit(rec, self._last_seq)
        del self._kd[key]
        self._kill(old)
        self._purged[key] = loc
        seg.live += len(rec)
        seg.marker_bytes += len(rec)
        seg.marker_max_seq = max(seg.marker_max_seq, self._last_seq)
        self._tombstones.discard(key)

    def _append(self, key: bytes, value: bytes, meta: bytes, flags: int) -> int:
        if self._closed or self._failed is not None:
            self._check_writable()
        if type(key) is not bytes:
            key = _as_key(key)
        klen = len(key)
        mlen = len(meta)
        vlen = len(value)
        if klen > self._max_key:
            raise ValueError(f"key of {klen} bytes exceeds max_key_bytes={self._max_key}")
        if vlen > self._max_value or mlen > self._max_value:
            raise ValueError(f"value or meta exceeds max_value_bytes={self._max_value}")
        seq = self._last_seq + 1
        # encode_record(), inlined: this is the hottest write path.
        salt = self._salt
        fields = _PACK_FIELDS(seq, flags, 0, klen, mlen, vlen)
        head = _PACK_U32(_crc32(key, _crc32(fields, salt)))
        if vlen + mlen < _GATHER_BYTES:
            body = b"".join((head, fields, key, meta, value))
            rec: bytes | tuple[bytes, ...] = body + _PACK_U32(_crc32(body, salt))
        else:
            # A big record is copied into the map part by part, its checksum chained
            # over them: joining would copy the value twice more.
            crc = _crc32(value, _crc32(meta, _crc32(key, _crc32(fields, _crc32(head, salt)))))
            rec = (head, fields, key, meta, value, _PACK_U32(crc))
        seg, loc = self._emit(rec, seq)
        kd = self._kd
        old = kd.get(key)
        kd[key] = loc
        seg.live += RECORD_OVERHEAD + klen + mlen + vlen
        if old is not None:
            self._kill(old)
        else:
            marker = self._purged.pop(key, None) if self._purged else None
            if marker is not None:
                self._kill(marker, marker=True)
            if self._buckets is not None:
                self._unbucketed.append(key)
        if flags:
            self._tombstones.add(key)
        elif self._tombstones:
            self._tombstones.discard(key)
        if self._repair:
            self._repair.discard(key)
        return seq

    def _emit(self, rec: bytes | tuple[bytes, ...], seq: int) -> tuple[_Segment, int]:
        """Write one encoded record (bytes, or its parts in order) to the active segment;
        returns it and the record's location."""
        size = len(rec) if isinstance(rec, bytes) else sum(map(len, rec))
        seg = self._active
        if seg is None or (seg.size + size > self._segment_bytes and seg.size > seg.data_start):
            seg = self._roll()
        off = seg.size
        end = off + size
        if end > self._wcap:
            self._grow(seg, end)  # may raise OSError (a full disk): nothing written yet
        wmap = self._wmap
        assert wmap is not None
        if isinstance(rec, bytes):
            wmap[off:end] = rec
        else:
            at = off
            for part in rec:
                nxt = at + len(part)
                wmap[at:nxt] = part
                at = nxt
        with self._lock:
            seg.size = end
            self._last_seq = seq
            self._gen += 1
        if seq < seg.min_seq:
            seg.min_seq = seq
        seg.max_seq = seq
        return seg, (seg.slot << _SLOT_SHIFT) | (off << _OFF_SHIFT) | (
            size if size <= _SIZE_MASK else 0
        )

    def _grow(self, seg: _Segment, end: int) -> None:
        """Preallocate the active segment's file and map it up to at least `end` bytes."""
        cap = max(end, min(self._wcap + _GROW_BYTES, self._segment_bytes))
        _preallocate(seg.fd, cap)
        view = mmap.mmap(seg.fd, cap)  # shared and writable: writes go to the page cache
        old = self._wmap
        self._maps[seg.slot] = view
        self._wmap = view
        self._wcap = cap
        if old is not None:
            old.close()

    def _retire_map(self, seg: _Segment) -> None:
        """The active segment `seg` takes no more records: drop its writable map and the
        preallocated bytes past its last record (recovery would cut them anyway)."""
        view = self._maps[seg.slot]
        if isinstance(view, mmap.mmap):
            view.close()
            self._maps[seg.slot] = _NO_MAP
        if self._wmap is view:
            self._wmap = None
            self._wcap = 0
        try:
            os.ftruncate(seg.fd, seg.size)
        except OSError as exc:
            log.warning("could not cut segment %s to its records' end: %s", seg.name, exc)

    def _roll(self) -> _Segment:
        """Start a new active segment; the old one waits for sync() and then its hint."""
        seg = self._create_segment(KIND_LOG)
        with self._lock:
            old = self._active
            if old is not None:
                self._dirty.append(old)
            self._active = seg
            self._dir_dirty = True
            self._dir_epoch += 1
        if old is not None:
            self._retire_map(old)
            self._map(old)
            self._hint_jobs.append(_HintJob(old))
        return seg

    def _create_segment(self, kind: int, superseded: int = 0) -> _Segment:
        seg_id = self._next_id
        self._next_id += 1
        name = f"{seg_id:016x}.seg"
        data_start = segment_header_bytes(superseded)
        if kind == KIND_LOG:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            fd = os.open(os.path.join(self._dir, name), flags, 0o644)
            try:
                header = encode_segment_header(
                    self._salt, seg_id, kind, (), self._last_seq, data_start
                )
                _write_all(fd, header)
            except BaseException:
                os.close(fd)
                os.unlink(os.path.join(self._dir, name))
                raise
        else:
            # A merge output is written under a temporary name; its header, which
            # lists what it supersedes, is written at the swap.
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            fd = os.open(os.path.join(self._dir, name + ".tmp"), flags, 0o644)
        seg = _Segment(seg_id, kind, fd, name, data_start, data_start)
        seg.max_seq = self._last_seq
        self._attach(seg)
        return seg

    def _attach(self, seg: _Segment) -> None:
        if self._free_slots:
            slot = self._free_slots.pop()
            self._segs[slot] = seg
            self._fds[slot] = seg.fd
            self._maps[slot] = _NO_MAP
        else:
            slot = len(self._segs)
            if slot >= _MAX_SLOTS:
                os.close(seg.fd)
                raise StorageError(f"more than {_MAX_SLOTS} segments; raise segment_bytes")
            self._segs.append(seg)
            self._fds.append(seg.fd)
            self._maps.append(_NO_MAP)
        seg.slot = slot

    def _map(self, seg: _Segment) -> None:
        """Map a segment that will not grow any more, for gets without a system call.

        Only immutable segments are mapped: the active one grows, and nothing
        truncates a segment once recovery is over, so a mapped read never faults.
        """
        if seg.size == 0 or isinstance(self._maps[seg.slot], mmap.mmap):
            return
        view = mmap.mmap(seg.fd, seg.size, access=mmap.ACCESS_READ)
        if hasattr(view, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            view.madvise(mmap.MADV_RANDOM)  # point reads: read-ahead would be wasted I/O
        self._maps[seg.slot] = view

    def _detach(self, seg: _Segment) -> None:
        view = self._maps[seg.slot]
        if isinstance(view, mmap.mmap):
            view.close()
            self._maps[seg.slot] = _NO_MAP
        os.close(seg.fd)
        self._segs[seg.slot] = None
        self._fds[seg.slot] = -1
        self._free_slots.append(seg.slot)

    def _kill(self, loc: int, *, marker: bool = False) -> None:
        """Account the record at `loc` as dead."""
        seg = self._segs[loc >> _SLOT_SHIFT]
        assert seg is not None
        size = self._loc_size(loc)
        seg.live -= size
        if marker:
            seg.marker_bytes -= size

    def _loc_size(self, loc: int) -> int:
        size = loc & _SIZE_MASK
        if size:
            return size
        fd = self._fds[loc >> _SLOT_SHIFT]
        head = os.pread(fd, HEADER_BYTES, (loc >> _OFF_SHIFT) & _OFF_MASK)
        _, _, _, _, klen, mlen, vlen = RECORD_HEADER.unpack(head)
        return int(HEADER_BYTES + 4 + klen + mlen + vlen)

    def _read_unmapped(self, slot: int, off: int, size: int) -> bytes:
        """Reads a map cannot serve: large records (the keydir does not hold their
        size), segments without a map, and reads whose mapped copy failed its checks."""
        if not size:
            return self._read_large(slot, off)
        return os.pread(self._fds[slot], size, off)

    def _read_large(self, slot: int, off: int) -> bytes:
        # Large records are rare and their copy dominates; pread keeps this simple.
        fd = self._fds[slot]
        head = os.pread(fd, HEADER_BYTES, off)
        if len(head) < HEADER_BYTES:
            return head
        _, _, _, _, klen, mlen, vlen = RECORD_HEADER.unpack(head)
        return os.pread(fd, HEADER_BYTES + 4 + klen + mlen + vlen, off)

    # -- durability ------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """Highest sequence number handed out so far."""
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        """Highest sequence number an fsync has covered."""
        return self._durable_seq

    def sync(self) -> int:
        """fsync every segment written since the last sync; returns the new durable_seq.

        Safe in a worker thread while the owner keeps writing: the sequence number it
        reports is captured before the fsyncs start, so it never claims a write that
        reached the OS after them. One call covers any number of writes (group commit).
        It also fsyncs what merges and hint writers wrote since the last call, so that
        maybe_merge() need not block on an fsync itself.
        """
        return self._sync(data=True)

    def _sync(self, *, data: bool) -> int:
        """sync(); with data=False only the maintenance files and the directory."""
        with self._sync_mutex:
            with self._lock:
                if self._closed:
                    raise RuntimeError("engine is closed")
                if self._failed is not None:
                    raise StoreFailedError("an earlier write or fsync failed") from self._failed
                seq = self._last_seq
                gen = self._gen
                pending = [(f, f.size) for f in self._flushes if not f.clean]
                retired: list[_Segment] = []
                active: _Segment | None = None
                if data and (gen != self._durable_gen or self._dirty):
                    retired = list(self._dirty)
                    active = self._active
                else:
                    data = False
                dir_dirty = self._dir_dirty
                dir_epoch = self._dir_epoch
                if not data and not pending and not dir_dirty:
                    return self._durable_seq
                self._dir_dirty = False
            try:
                for seg in retired:
                    os.fdatasync(seg.fd)
                if active is not None:
                    os.fdatasync(active.fd)
                for flush, _ in pending:
                    os.fdatasync(flush.fd)
                if dir_dirty:
                    os.fsync(self._dir_fd)
                if os.fstat(self._dir_fd).st_nlink == 0:
                    # fsyncs of files in a removed directory succeed but keep nothing.
                    raise FileNotFoundError(errno.ENOENT, "data directory was removed", self._dir)
            except OSError as exc:
                self._failed = exc
                log.error("fsync failed in %s: %s; store needs reopening", self._dir, exc)
                raise StoreFailedError("fsync failed") from exc
            with self._lock:
                self._maintenance_waiting = False  # a waiting job re-checks on its next call
                for flush, size in pending:
                    flush.synced = max(flush.synced, size)
                if dir_dirty:
                    self._dir_durable_epoch = max(self._dir_durable_epoch, dir_epoch)
                if data:
                    for seg in retired:
                        self._dirty.remove(seg)
                    if seq > self._durable_seq:
                        self._durable_seq = seq
                    if gen > self._durable_gen:
                        self._durable_gen = gen
                return self._durable_seq

    def maintenance_sync_wanted(self, max_unsynced: int) -> bool:
        """Whether a finished hint or merge waits for an fsync of its output, or more
        than `max_unsynced` bytes of merge and hint output are not yet fsynced. A
        runtime that sees this calls sync_maintenance() on a worker thread, so that
        maybe_merge() never has to fsync on the owner thread itself."""
        if self._maintenance_waiting:
            return True
        with self._lock:
            pending = sum(f.size - f.synced for f in self._flushes if not f.clean)
        return pending > max_unsynced

    def sync_maintenance(self) -> None:
        """fsync what merges and hint writers wrote, and the directory; not client writes.
        Safe in a worker thread, like sync()."""
        self._sync(data=False)

    def _track(self, flush: _Flush) -> None:
        with self._lock:
            self._flushes.append(flush)

    def _untrack(self, flush: _Flush) -> None:
        with self._lock:
            if flush in self._flushes:
                self._flushes.remove(flush)

    def _mark_dir(self) -> int:
        """Note a directory change that must be fsynced; returns its epoch."""
        with self._lock:
            self._dir_dirty = True
            self._dir_epoch += 1
            return self._dir_epoch

    def _settled(self, waits: int, flushes: list[_Flush], dir_epoch: int = 0) -> bool:
        """Whether fsyncs now cover `flushes` and the directory up to `dir_epoch`.

        The runtime's sync() normally does it; after _INLINE_SYNC_AFTER calls without
        one (an idle store), this call does it here instead.
        """

        def done() -> bool:
            return all(f.clean for f in flushes) and self._dir_durable_epoch >= dir_epoch

        if done():
            return True
        if waits < _INLINE_SYNC_AFTER:
            self._maintenance_waiting = True
            return False
        self._sync(data=False)
        return done()

    # -- status ----------------------------------------------------------------------

    def stats(self) -> EngineStats:
        segs = [s for s in self._segs if s is not None]
        return EngineStats(
            keys=len(self._kd),
            tombstones=len(self._tombstones),
            last_seq=self._last_seq,
            durable_seq=self._durable_seq,
            data_bytes=sum(s.size + s.hint_bytes for s in segs),
            live_bytes=sum(s.live for s in segs),
            segments=len(segs),
            corrupt_records=self._corrupt_records,
            merges=self._merges,
        )

    def needs_repair(self) -> frozenset[bytes]:
        """Keys whose newest record was found damaged and dropped; fetch them from replicas.

        A key leaves the set when it is written again.
        """
        return frozenset(self._repair)

    @property
    def needs_full_repair(self) -> bool:
        """True once damaged bytes were found whose keys could not be identified.

        Those records are lost to this replica; a full anti-entropy pass restores them.
        """
        return self._repair_all

    @property
    def recovery(self) -> RecoveryReport:
        """What opening the store found on disk."""
        return self._recovery

    @property
    def path(self) -> str:
        """The data directory."""
        return self._dir

    # -- recovery --------------------------------------------------------------------

    def _recover(self) -> RecoveryReport:
        names = sorted(os.listdir(self._dir))
        removed: list[str] = []
        self._salt = self._read_or_create_format(names)

        seg_names: dict[int, str] = {}
        hint_names: dict[int, str] = {}
        for name in names:
            if name in (FORMAT_FILE, LOCK_FILE, EPOCH_FILE) or name.startswith("."):
                continue
            if m := _SEG_NAME.match(name):
                seg_names[int(m.group(1), 16)] = name
            elif m := _HINT_NAME.match(name):
                hint_names[int(m.group(1), 16)] = name
            elif _TMP_NAME.match(name):
                # An interrupted merge or hint write; the files it would replace are intact.
                self._unlink(name, removed)
            elif name.endswith(_QUARANTINE_SUFFIX):
                log.warning("ignoring quarantined file %s in %s", name, self._dir)
            else:
                log.warning("ignoring unexpected file %s in log store %s", name, self._dir)

        segments = self._open_segments(seg_names, removed)
        superseded = {i for seg in segments for i in seg[1]}
        kept: list[_Segment] = []
        for seg, _ in segments:
            if seg.id in superseded:
                # A merge swapped in its output but crashed before deleting its inputs.
                os.close(seg.fd)
                self._unlink(seg.name, removed)
            else:
                kept.append(seg)
        ids = [s.id for s in kept]
        for hid, name in hint_names.items():
            if hid not in ids:
                self._unlink(name, removed)
        if removed:
            os.fsync(self._dir_fd)
        self._next_id = max([*seg_names, *superseded, 0]) + 1

        load: dict[bytes, int] = {}
        from_hints = scanned = truncated = corrupt = 0
        unhinted: list[_Segment] = []
        for seg in kept:
            self._attach(seg)
            hinted = self._read_hint(seg) if seg.id in hint_names else None
            entries: Iterable[tuple[int, int, int, int, bytes]]
            if hinted is not None:
                entries = hinted
                from_hints += 1
                seg.has_hint = True
                seg.hint_bytes = os.stat(os.path.join(self._dir, f"{seg.id:016x}.hint")).st_size
            else:
                if seg.id in hint_names:
                    self._unlink(hint_names[seg.id], removed)
                scanned += 1
                entries, cut, bad = self._scan_for_recovery(seg)
                truncated += cut
                corrupt += bad
                unhinted.append(seg)
            try:
                self._index(load, seg, entries)
            except FormatError as exc:
                self._unlink(f"{seg.id:016x}.hint", None)
                raise _HintInconsistent(f"hint of segment {seg.name} is inconsistent") from exc

        self._adopt(load)
        # What was read back, torn tails cut, may still sit only in the page cache
        # (a killed process, not a power cut); make it durable before calling it so.
        for seg in unhinted:
            os.fsync(seg.fd)
            self._hint_jobs.append(_HintJob(seg))
        for seg in kept:
            self._map(seg)
        os.fsync(self._dir_fd)
        self._durable_seq = self._last_seq
        report = RecoveryReport(from_hints, scanned, truncated, tuple(removed), corrupt)
        log.info(
            "opened log store %s: %d keys, %d segments (%d from hints, %d scanned)",
            self._dir,
            len(self._kd),
            len(kept),
            from_hints,
            scanned,
        )
        return report

    def _read_or_create_format(self, names: list[str]) -> int:
        path = os.path.join(self._dir, FORMAT_FILE)
        if FORMAT_FILE not in names:
            others = [
                n for n in names
                if n not in (LOCK_FILE, EPOCH_FILE, "FORMAT.tmp") and not n.startswith(".")
            ]
            if others:
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                raise NotAStoreError(
                    f"{self._dir} is not a ringfs log store (no {FORMAT_FILE} file) but holds "
                    f"other files: {shown}"
                )
            salt = int.from_bytes(os.urandom(4), "little")
            text = f"{_FORMAT_TAG}\nversion {_FORMAT_VERSION}\nsalt {salt:08x}\n"
            tmp = path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            os.fsync(self._dir_fd)
            return salt
        try:
            with open(path, encoding="ascii") as f:
                lines = f.read(4096).split("\n")
            if lines[0] != _FORMAT_TAG:
                raise ValueError("wrong tag")
            version = int(lines[1].removeprefix("version "))
            salt = int(lines[2].removeprefix("salt "), 16)
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise NotAStoreError(f"{path} is not a ringfs log store FORMAT file") from exc
        if version != _FORMAT_VERSION:
            raise NotAStoreError(
                f"{self._dir} holds log store format {version}; this build reads {_FORMAT_VERSION}"
            )
        return salt

    def _open_segments(
        self, seg_names: dict[int, str], removed: list[str]
    ) -> list[tuple[_Segment, tuple[int, ...]]]:
        out: list[tuple[_Segment, tuple[int, ...]]] = []
        for seg_id in sorted(seg_names):
            name = seg_names[seg_id]
            full = os.path.join(self._dir, name)
            fd = os.open(full, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            size = os.fstat(fd).st_size
            try:
                header = read_segment_header(fd, self._salt, size)
                if header.segment_id != seg_id:
                    raise FormatError(f"header names segment {header.segment_id}")
            except FormatError as exc:
                os.close(fd)
                if size < segment_header_bytes(0) + 1:
                    # Created just before a crash; no record in it can have been synced.
                    self._unlink(name, removed)
                    continue
                os.rename(full, full + _QUARANTINE_SUFFIX)
                self._note_unidentified()
                log.error("segment %s has a damaged header (%s); quarantined", name, exc)
                continue
            seg = _Segment(seg_id, header.kind, fd, name, header.data_start, size)
            seg.max_seq = header.seq_floor
            out.append((seg, header.superseded))
        return out

    def _read_hint(self, seg: _Segment) -> Iterator[tuple[int, int, int, int, bytes]] | None:
        path = os.path.join(self._dir, f"{seg.id:016x}.hint")
        try:
            with open(path, "rb") as f:
                data = f.read()
            return parse_hint_file(data, self._salt, seg.id, seg.size)
        except (OSError, FormatError) as exc:
            log.warning("hint of segment %s unusable (%s); scanning the segment", seg.name, exc)
            return None

    def _scan_for_recovery(
        self, seg: _Segment
    ) -> tuple[list[tuple[int, int, int, int, bytes]], int, int]:
        """Entries of a segment read record by record, its torn tail cut; (entries, cut, bad)."""
        scanner = SegmentScanner(seg.fd, self._salt, seg.data_start, seg.size, chunk_bytes=4 * MiB)
        entries: list[tuple[int, int, int, int, bytes]] = []
        bad = 0
        while not scanner.done:
            for item in scanner.scan(64 * MiB):
                if isinstance(item, CorruptRegion):
                    bad += 1
                    self._note_corrupt(seg, item.offset, item.key, item.seq, item.length)
                else:
                    entries.append((item.seq, item.offset, item.size, item.flags, item.key))
        cut = 0
        if scanner.tail_offset is not None:
            if scanner.tail_zero and seg.kind == KIND_LOG:
                # Preallocated bytes no append reached before the process stopped: not
                # a torn record, nothing to report.
                log.debug("segment %s: dropped %d unwritten bytes at offset %d", seg.name,
                          seg.size - scanner.tail_offset, scanner.tail_offset)
                os.ftruncate(seg.fd, scanner.tail_offset)
                seg.size = scanner.tail_offset
            elif seg.kind == KIND_LOG:
                # (Preallocated zeros after the torn bytes are not counted as cut.)
                cut = data_end(seg.fd, scanner.tail_offset, seg.size) - scanner.tail_offset
                log.warning(
                    "segment %s: cut a torn tail of %d bytes at offset %d",
                    seg.name,
                    cut,
                    scanner.tail_offset,
                )
                if scanner.tail_key is not None:
                    # A full-length last record that fails its checksum: usually a torn
                    # write, possibly decay; either way this replica may be behind.
                    self._repair.add(scanner.tail_key)
                os.ftruncate(seg.fd, scanner.tail_offset)
                seg.size = scanner.tail_offset
            else:
                bad += 1
                self._note_corrupt(
                    seg,
                    scanner.tail_offset,
                    scanner.tail_key,
                    None,
                    seg.size - scanner.tail_offset,
                )
        return entries, cut, bad

    def _index(
        self,
        load: dict[bytes, int],
        seg: _Segment,
        entries: Iterable[tuple[int, int, int, int, bytes]],
    ) -> None:
        """Fold one segment's entries into the recovery keydir, newest (seq, marker) winning."""
        base = seg.slot << _SLOT_SHIFT
        get = load.get
        min_seq = seg.min_seq
        max_seq = seg.max_seq
        for seq, off, size, flags, key in entries:
            value = (
                (seq << _LOAD_SEQ_SHIFT)
                | ((flags & (FLAG_TOMBSTONE | FLAG_PURGE)) << _LOAD_FLAGS_SHIFT)
                | (size << _LOAD_SIZE_SHIFT)
                | base
                | (off << _OFF_SHIFT)
                | (size if size <= _SIZE_MASK else 0)
            )
            old = get(key)
            if old is None or value >> _LOAD_RANK_SHIFT > old >> _LOAD_RANK_SHIFT:
                load[key] = value
            if seq < min_seq:
                min_seq = seq
            if seq > max_seq:
                max_seq = seq
        seg.min_seq = min_seq
        seg.max_seq = max_seq
        self._last_seq = max(self._last_seq, max_seq)

    def _adopt(self, load: dict[bytes, int]) -> None:
        """Turn the recovery keydir into the compact one and count live bytes per segment."""
        segs = self._segs
        markers: list[tuple[bytes, int]] = []
        tombstones = self._tombstones
        for key, value in load.items():
            loc = value & _LOC_MASK
            seg = segs[loc >> _SLOT_SHIFT]
            assert seg is not None
            size = (value >> _LOAD_SIZE_SHIFT) & 0xFFFFFFFF
            seg.live += size
            if (value >> _LOAD_RANK_SHIFT) & 1:
                markers.append((key, loc))
                seg.marker_bytes += size
                seg.marker_max_seq = max(seg.marker_max_seq, value >> _LOAD_SEQ_SHIFT)
            elif (value >> _LOAD_FLAGS_SHIFT) & FLAG_TOMBSTONE:
                tombstones.add(key)
            # Replacing values of existing keys while iterating is safe: no resize.
            load[key] = loc
        for key, loc in markers:
            del load[key]
            self._purged[key] = loc
        self._kd = load

    # -- damage ----------------------------------------------------------------------

    def _note_corrupt(
        self, seg: _Segment, offset: int, key: bytes | None, seq: int | None, length: int
    ) -> None:
        """Count and log a damaged record once; remember its key for repair."""
        mark = (seg.id, offset)
        if mark in self._corrupt_seen:
            return
        self._corrupt_seen.add(mark)
        self._corrupt_records += 1
        if key is None:
            self._repair_all = True
            log.error(
                "segment %s: %d damaged bytes at offset %d; their keys are unknown, "
                "run a full repair",
                seg.name,
                length,
                offset,
            )
        else:
            self._repair.add(key)
            log.error(
                "segment %s: damaged record for key %r (seq %s) at offset %d; not served, "
                "needs repair",
                seg.name,
                key,
                seq,
                offset,
            )

    def _note_unidentified(self) -> None:
        self._corrupt_records += 1
        self._repair_all = True

    def _unreadable(self, key: bytes, loc: int) -> None:
        """A get found the record damaged: drop it from the keydir and report the key."""
        seg = self._segs[loc >> _SLOT_SHIFT]
        assert seg is not None
        self._note_corrupt(seg, (loc >> _OFF_SHIFT) & _OFF_MASK, key, None, loc & _SIZE_MASK)
        self._repair.add(key)
        if self._kd.get(key) == loc:
            del self._kd[key]
            self._tombstones.discard(key)
            # Its bytes now count as dead, so a merge will drop them.
            size = loc & _SIZE_MASK
            seg.live -= size if size else self._damaged_size(loc)

    def _damaged_size(self, loc: int) -> int:
        """Size of a damaged record too large for the location; trust the header if it holds."""
        try:
            return self._loc_size(loc)
        except Exception:
            return 0

    def _sweep_regions(self, seg: _Segment, regions: list[tuple[int, int]]) -> None:
        """Drop keydir entries pointing into damaged regions of `seg` (O(keys), rare)."""
        if not regions:
            return
        slot = seg.slot

        def hit(loc: int) -> bool:
            if loc >> _SLOT_SHIFT != slot:
                return False
            off = (loc >> _OFF_SHIFT) & _OFF_MASK
            return any(lo <= off < hi for lo, hi in regions)

        for table in (self._kd, self._purged):
            doomed = [(k, loc) for k, loc in table.items() if hit(loc)]
            for key, loc in doomed:
                del table[key]
                self._tombstones.discard(key)
                self._repair.add(key)
                size = self._damaged_size(loc)
                seg.live -= size
                if table is self._purged:
                    seg.marker_bytes -= size
                log.error("key %r lost to damage in segment %s; needs repair", key, seg.name)

    # -- maintenance -----------------------------------------------------------------

    def maybe_merge(self) -> bool:
        """Do one bounded slice of background work; True if it did any.

        In order: write a pending hint file, ask may_drop_tombstone about a batch of
        tombstones (once per round), copy a slice of a merge, or swap a finished merge
        in. A round ends when a call returns False. Each call reads at most about
        merge_step_bytes, so the owner thread is never held up for long.
        """
        self._check_writable()
        if self._hint_step():
            return True
        if self._reap_step():
            return True
        if self._merge_step():
            return True
        self._reap_round_done = False
        return False

    def _is_clean(self, seg: _Segment) -> bool:
        with self._lock:
            return seg is not self._active and seg not in self._dirty

    def _hint_step(self) -> bool:
        for job in list(self._hint_jobs):
            seg = job.seg
            if self._segs[seg.slot] is not seg:
                self._drop_hint_job(job, discard=True)
                continue
            if not self._is_clean(seg):
                continue  # only a synced segment gets a hint: a hint must not outlive data
            if job.writer is not None and job.writer.sealed:
                job.waits += 1
                if not self._settled(job.waits, [job.writer.flush]):
                    continue  # waiting for an fsync is not work
                seg.hint_bytes = job.writer.install()
                self._mark_dir()  # no need to wait: a hint lost in a crash is rebuilt
                seg.has_hint = True
                self._drop_hint_job(job, discard=False)
                return True
            try:
                self._hint_slice(job)
            except BaseException:
                # Start this hint over rather than write one with entries missing.
                self._drop_hint_job(job, discard=True)
                self._hint_jobs.append(_HintJob(seg))
                raise
            return True
        return False

    def _drop_hint_job(self, job: _HintJob, *, discard: bool) -> None:
        if job.writer is not None:
            self._untrack(job.writer.flush)
            if discard:
                job.writer.discard()
        if job in self._hint_jobs:
            self._hint_jobs.remove(job)

    def _hint_slice(self, job: _HintJob) -> None:
        seg = job.seg
        if job.scanner is None or job.writer is None:
            job.scanner = SegmentScanner(seg.fd, self._salt, seg.data_start, seg.size)
            job.writer = _HintWriter(self._dir, seg.id, self._salt)
            self._track(job.writer.flush)
        scanner, writer = job.scanner, job.writer
        parts: list[bytes] = []
        for item in scanner.scan(self._step_bytes):
            if isinstance(item, CorruptRegion):
                self._note_corrupt(seg, item.offset, item.key, item.seq, item.length)
                job.regions.append((item.offset, item.offset + item.length))
            else:
                parts.append(
                    encode_hint_entry(item.seq, item.offset, item.size, item.flags, item.key)
                )
        writer.add(b"".join(parts), len(parts))
        if writer.flush.size - writer.flush.synced >= _INLINE_FLUSH_BYTES:
            self._sync(data=False)
        if not scanner.done:
            return
        tail = scanner.tail_offset
        if tail is not None:
            # Bytes this process wrote and synced no longer check out.
            self._note_corrupt(seg, tail, scanner.tail_key, None, seg.size - tail)
            job.regions.append((tail, seg.size))
        self._sweep_regions(seg, job.regions)
        writer.seal(seg.size)

    def _reap_step(self) -> bool:
        if self._may_drop is None:
            return False
        if not self._reap_queue:
            if self._reap_round_done or not self._tombstones:
                return False
            self._reap_queue = list(self._tombstones)
            self._reap_round_done = True
        batch = self._reap_queue[-256:]
        del self._reap_queue[-256:]
        purged = False
        for key in batch:
            if key not in self._tombstones:
                continue
            record = self.get(key)
            if record is not None and record.tombstone and self._may_drop(key, record):
                self.purge(key)
                purged = True
        # Asking about tombstones that must stay is not progress: once the round's
        # queue is empty, fall through to merging in this same call.
        return purged or bool(self._reap_queue)

    def _plan_merge(self) -> _MergeJob | None:
        with self._lock:
            busy = {id(s) for s in self._dirty}
            if self._active is not None:
                busy.add(id(self._active))
        busy.update(id(job.seg) for job in self._hint_jobs)
        segs = [s for s in self._segs if s is not None]
        idle = [s for s in segs if id(s) not in busy]
        threshold = self._merge_fragmentation
        # The two oldest segments holding dead bytes bound which markers could go.
        blockers = sorted((s.min_seq, i) for i, s in enumerate(segs) if s.dead > 0)[:2]

        def floor_without(seg: _Segment) -> int:
            for min_seq, i in blockers:
                if segs[i] is not seg:
                    return min_seq
            return _NO_SEQ

        def worth_merging(seg: _Segment) -> bool:
            if seg.fragmentation() >= threshold:
                return True
            # Purge markers are live until no older record of their key can remain;
            # once that holds they are garbage like any dead record.
            body = seg.size - seg.data_start
            return (
                seg.marker_bytes > 0
                and (seg.dead + seg.marker_bytes) >= threshold * body
                and seg.marker_max_seq < floor_without(seg)
            )

        picked = [s for s in idle if worth_merging(s)]
        small = [s for s in idle if s.size < self._segment_bytes // 4]
        if len(small) >= 2:
            picked.extend(s for s in small if s not in picked)
        if not picked:
            return None
        picked.sort(key=lambda s: s.min_seq)
        inputs: list[_Segment] = []
        live = 0
        for seg in picked:
            if inputs and live + seg.live > self._segment_bytes:
                continue
            inputs.append(seg)
            live += seg.live
            if len(inputs) == 64:
                break
        if len(inputs) == 1 and not worth_merging(inputs[0]):
            return None
        chosen = {id(s) for s in inputs}
        # Records older than a purge marker can only hide in segments holding dead
        # bytes; if all of those outside this merge are newer than the marker, it
        # may go (docs/storage.md, "Purge markers").
        floor = min(
            (s.min_seq for s in segs if id(s) not in chosen and s.dead > 0), default=_NO_SEQ
        )
        out = self._create_segment(KIND_MERGED, superseded=len(inputs))
        try:
            hint = _HintWriter(self._dir, out.id, self._salt)
        except BaseException:
            self._discard_output(out)
            raise
        log.debug(
            "merging segments %s (%d live bytes) into %s",
            ", ".join(s.name for s in inputs),
            live,
            out.name,
        )
        job = _MergeJob(inputs, out, os.path.join(self._dir, out.name + ".tmp"), hint, floor)
        self._track(job.out_flush)
        self._track(hint.flush)
        return job

    def _merge_step(self) -> bool:
        job = self._merge
        if job is None:
            job = self._merge = self._plan_merge()
            if job is None:
                return False
        if job.idx < len(job.inputs):
            self._merge_copy(job)
            return True
        return self._merge_finish(job)

    def _merge_copy(self, job: _MergeJob) -> None:
        """Copy about merge_step_bytes of input; keydir changes apply only after the writes."""
        out = job.out
        kd = self._kd
        purged = self._purged
        chunks: list[bytes] = []
        hints: list[bytes] = []
        moves: list[tuple[bytes, int, int, int, _Segment]] = []
        drops: list[tuple[bytes, int, _Segment]] = []
        sweeps: list[tuple[_Segment, list[tuple[int, int]]]] = []
        off = out.size
        min_seq = out.min_seq
        budget = self._step_bytes
        saved = (job.idx, job.scanner.pos if job.scanner is not None else -1, list(job.regions))
        try:
            while budget > 0 and job.idx < len(job.inputs):
                src = job.inputs[job.idx]
                scanner = job.scanner
                if scanner is None:
                    scanner = job.scanner = SegmentScanner(
                        src.fd, self._salt, src.data_start, src.size, keep_data=True
                    )
                before = scanner.pos
                base = src.slot << _SLOT_SHIFT
                for item in scanner.scan(budget):
                    if isinstance(item, CorruptRegion):
                        self._note_corrupt(src, item.offset, item.key, item.seq, item.length)
                        job.regions.append((item.offset, item.offset + item.length))
                        continue
                    size = item.size
                    loc = base | (item.offset << _OFF_SHIFT) | (size if size <= _SIZE_MASK else 0)
                    marker = bool(item.flags & FLAG_PURGE)
                    if (purged if marker else kd).get(item.key) != loc:
                        continue  # superseded: dropped
                    if marker and item.seq < job.floor:
                        drops.append((item.key, size, src))
                        continue
                    assert item.data is not None
                    chunks.append(item.data)
                    hints.append(encode_hint_entry(item.seq, off, size, item.flags, item.key))
                    new = (
                        (out.slot << _SLOT_SHIFT)
                        | (off << _OFF_SHIFT)
                        | (size if size <= _SIZE_MASK else 0)
                    )
                    moves.append((item.key, new, size, item.seq if marker else -1, src))
                    off += size
                    if item.seq < min_seq:
                        min_seq = item.seq
                budget -= scanner.pos - before
                if scanner.done:
                    if scanner.tail_offset is not None:
                        tail = scanner.tail_offset
                        self._note_corrupt(src, tail, scanner.tail_key, None, src.size - tail)
                        job.regions.append((tail, src.size))
                    sweeps.append((src, job.regions))
                    job.regions = []
                    job.idx += 1
                    job.scanner = None
            if chunks:
                data = b"".join(chunks)
                _pwrite_all(out.fd, data, out.size)
            job.hint.add(b"".join(hints), len(hints))
        except BaseException:
            # Nothing was applied; rewind so that the next call redoes this slice.
            idx, pos, regions = saved
            job.idx = idx
            job.regions = regions
            first = job.inputs[idx] if idx < len(job.inputs) else None
            job.scanner = (
                SegmentScanner(first.fd, self._salt, pos, first.size, keep_data=True)
                if first is not None and pos >= 0
                else None
            )
            raise
        out.size = off
        job.out_flush.size = off
        out.min_seq = min_seq
        for key, new, size, marker_seq, src in moves:
            src.live -= size
            out.live += size
            if marker_seq < 0:
                kd[key] = new
            else:
                purged[key] = new
                src.marker_bytes -= size
                out.marker_bytes += size
                out.marker_max_seq = max(out.marker_max_seq, marker_seq)
        for key, size, src in drops:
            del purged[key]
            src.live -= size
            src.marker_bytes -= size
        # Whatever still points into a damaged stretch of a finished input is lost.
        for src, regions in sweeps:
            self._sweep_regions(src, regions)
        job.needed_gen = self._gen
        unsynced = off - job.out_flush.synced + job.hint.flush.size - job.hint.flush.synced
        if unsynced >= _INLINE_FLUSH_BYTES:
            self._sync(data=False)

    def _merge_finish(self, job: _MergeJob) -> bool:
        """One step of finishing a merge: seal, swap in, make the swap durable, delete.

        Nothing here fsyncs while the runtime syncs (see _Flush and _settled). The
        rename of the output is the atomic swap: from then on a restart deletes the
        inputs itself; they are deleted only once the rename is durable, and shrunk
        a bounded piece per call first (unlinking a large file at once takes long).
        Returns False while waiting for a sync.
        """
        out = job.out
        if job.stage == 0:
            # The output inherits the inputs' sequence floors: even when it ends up
            # with no records, it keeps the highest sequence number handed out.
            out.max_seq = max([out.max_seq, *(s.max_seq for s in job.inputs)])
            header = encode_segment_header(
                self._salt,
                out.id,
                KIND_MERGED,
                [s.id for s in job.inputs],
                out.max_seq,
                out.data_start,
            )
            _pwrite_all(out.fd, header, 0)
            job.out_flush.synced = 0  # the header was just written: fsync it too
            job.hint.seal(out.size)
            job.stage = 1
            return True
        if job.stage == 1:
            # Records left behind were superseded by newer writes or purges; deleting
            # the old segments is only safe once those are durable, or a crash could
            # bring old versions back. Only a real sync() can provide that.
            if self._durable_gen < job.needed_gen:
                return False
            job.waits += 1
            if not self._settled(job.waits, [job.out_flush, job.hint.flush]):
                return False
            self._untrack(job.out_flush)
            self._untrack(job.hint.flush)
            out.hint_bytes = job.hint.install()
            os.rename(job.tmp, os.path.join(self._dir, out.name))
            job.dir_epoch = self._mark_dir()
            job.stage = 2
            job.waits = 0
            out.has_hint = True
            self._map(out)
            for src in job.inputs:
                view = self._maps[src.slot]
                if isinstance(view, mmap.mmap):  # nothing points into the inputs any more
                    view.close()
                    self._maps[src.slot] = _NO_MAP
            return True
        if job.stage == 2:
            job.waits += 1
            if not self._settled(job.waits, [], job.dir_epoch):
                return False
            job.stage = 3
        if job.deleted < len(job.inputs):
            src = job.inputs[job.deleted]
            if src.size > _TRIM_BYTES:
                src.size -= _TRIM_BYTES
                os.ftruncate(src.fd, src.size)
            elif src.has_hint and src.hint_bytes > _TRIM_BYTES:
                # Its hint goes the same way: a large file unlinked at once stalls too.
                src.hint_bytes -= _TRIM_BYTES
                with contextlib.suppress(FileNotFoundError):
                    os.truncate(os.path.join(self._dir, f"{src.id:016x}.hint"), src.hint_bytes)
            else:
                self._drop_segment(src, None)
                job.deleted += 1
            return True
        self._merge = None
        self._merges += 1
        log.debug("merge into %s done", out.name)
        return True

    def _drop_segment(self, seg: _Segment, removed: list[str] | None) -> None:
        """Delete a segment no keydir entry points into any more."""
        self._detach(seg)
        self._unlink(seg.name, removed)
        if seg.has_hint:
            self._unlink(f"{seg.id:016x}.hint", removed)

    def _discard_output(self, out: _Segment) -> None:
        self._detach(out)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._dir, out.name + ".tmp"))

    def _abort_merge(self) -> None:
        job = self._merge
        if job is None:
            return
        self._merge = None
        self._untrack(job.out_flush)
        self._untrack(job.hint.flush)
        if job.stage >= 2:
            return  # swapped in: the inputs left over are deleted at the next open
        job.hint.discard()
        self._discard_output(job.out)

    def _unlink(self, name: str, removed: list[str] | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._dir, name))
        if removed is not None:
            removed.append(name)

    # -- token index -----------------------------------------------------------------

    def _keys_in_range(self, start: int, end: int) -> list[bytes]:
        buckets = self._bucket_index()
        last_bucket = len(buckets) - 1
        # (first bucket, last bucket, exclusive low token, inclusive high token)
        spans: list[tuple[int, int, int, int]]
        if start == end:
            spans = [(0, last_bucket, -1, TOKEN_SPACE)]
        elif start < end:
            spans = [(start >> _TOKEN_SHIFT, end >> _TOKEN_SHIFT, start, end)]
        else:  # wraps: the tail of the ring after start comes first
            spans = [
                (start >> _TOKEN_SHIFT, last_bucket, start, TOKEN_SPACE),
                (0, end >> _TOKEN_SHIFT, -1, end),
            ]
        picked: list[tuple[int, bytes]] = []
        for first, last, low, high in spans:
            for i in range(first, last + 1):
                if not buckets[i]:
                    continue
                pairs = self._bucket_sorted(i)
                if i in (first, last):
                    pairs = [tk for tk in pairs if low < tk[0] <= high]
                picked.extend(pairs)
        return [k for _, k in picked]

    def _bucket_index(self) -> list[list[bytes]]:
        """Keys grouped by the top bits of their token, built on first use then patched."""
        buckets = self._buckets
        if buckets is None:
            buckets = self._buckets = [[] for _ in range(1 << _TOKEN_BUCKET_BITS)]
            self._unbucketed = list(self._kd)
        for key in self._unbucketed:
            buckets[key_token(key) >> _TOKEN_SHIFT].append(key)
        self._unbucketed = []
        return buckets

    def _bucket_sorted(self, i: int) -> list[tuple[int, bytes]]:
        assert self._buckets is not None
        bucket = self._buckets[i]
        kd = self._kd
        live = {k for k in bucket if k in kd}
        if len(live) != len(bucket):
            # Purged keys and re-added duplicates are cleaned up lazily, here.
            self._buckets[i] = list(live)
        return sorted((key_token(k), k) for k in live)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Sync, finish pending hint files (they make the next open fast), release files."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
                # The active segment is finished too (the next open starts a new one),
                # so it gets its hint now and a clean restart scans nothing.
                with self._lock:
                    active, self._active = self._active, None
                if active is not None:
                    self._retire_map(active)
                    self._hint_jobs.append(_HintJob(active))
                try:
                    for _ in range(1_000_000):
                        if not self._hint_jobs:
                            break
                        if not self._hint_step():
                            self._sync(data=False)
                except OSError as exc:
                    # Hints only speed up the next open, which scans segments without one.
                    log.warning("could not write hint files at close: %s", exc)
        finally:
            self._abort_merge_quietly()
            with self._lock:
                self._closed = True  # a sync() starting from now on refuses
            with self._sync_mutex:  # and one already running finishes first
                self._release_files()

    def abandon(self) -> None:
        """Release every file without syncing, as a killed process would (for crash tests)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        with self._sync_mutex:
            self._release_files()

    def _abort_merge_quietly(self) -> None:
        try:
            self._abort_merge()
        except OSError as exc:
            log.warning("could not clean up an unfinished merge: %s", exc)

    def _close_segments(self) -> None:
        for view in self._maps:
            if isinstance(view, mmap.mmap):
                view.close()
        for seg in self._segs:
            if seg is not None:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)
        self._segs = []
        self._fds = []
        self._maps = []

    def _release_files(self) -> None:
        self._close_segments()
        job = self._merge
        if job is not None and job.hint.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(job.hint.fd)
            job.hint.fd = -1
        for hjob in self._hint_jobs:
            if hjob.writer is not None and hjob.writer.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(hjob.writer.fd)
                hjob.writer.fd = -1
        self._segs = []
        self._fds = []
        self._maps = []
        self._flushes = []
        self._kd = {}
        self._active = None
        self._dirty = []
        for attr in ("_dir_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing the lock fd releases the flock
                setattr(self, attr, -1)

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failed is not None:
            raise StoreFailedError("an earlier write or fsync failed") from self._failed

    # -- test support ----------------------------------------------------------------

    def check_invariants(self) -> None:
        """Recompute everything derived and compare (O(keys) disk reads; for tests)."""
        live: dict[int, int] = {}
        markers: dict[int, int] = {}
        assert not set(self._kd) & set(self._purged), "a key is both live and purged"
        for table, want_purge in ((self._kd, False), (self._purged, True)):
            for key, loc in table.items():
                seg = self._segs[loc >> _SLOT_SHIFT]
                assert seg is not None, f"{key!r} points at a missing segment"
                off = (loc >> _OFF_SHIFT) & _OFF_MASK
                size = self._loc_size(loc)
                assert seg.data_start <= off and off + size <= seg.size, f"{key!r} out of bounds"
                raw = os.pread(seg.fd, size, off)
                assert crc32(raw, self._salt) == CRC_RESIDUE, f"{key!r} record damaged"
                seq, flags, _, klen, _, _ = RECORD_FIELDS.unpack_from(raw, 4)
                assert raw[HEADER_BYTES : HEADER_BYTES + klen] == key, f"{key!r} wrong record"
                assert bool(flags & FLAG_PURGE) == want_purge, f"{key!r} wrong kind"
                assert (key in self._tombstones) == (flags == FLAG_TOMBSTONE), f"{key!r} tomb"
                assert seq <= self._last_seq
                live[seg.slot] = live.get(seg.slot, 0) + size
                if want_purge:
                    markers[seg.slot] = markers.get(seg.slot, 0) + size
        for seg in self._segs:
            if seg is not None:
                assert seg.live == live.get(seg.slot, 0), f"{seg.name}: live bytes drifted"
                assert seg.marker_bytes == markers.get(seg.slot, 0), f"{seg.name}: marker bytes"
        assert self._durable_seq <= self._last_seq


# -- helpers -----------------------------------------------------------------------------


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _as_key(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"keys are bytes, not {type(key).__name__}")


def _write_all(fd: int, data: bytes) -> None:
    """os.write until done: a regular file may take a write in parts (signals, quotas)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _preallocate(fd: int, size: int) -> None:
    """Give the file at least `size` bytes, every one backed by an allocated block, so
    that writing them through a map cannot fail for want of space (in a sparse file
    that would raise SIGBUS). Raises OSError (ENOSPC) when the disk is full."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    # No fallocate here: write the zeros.
    at = os.fstat(fd).st_size
    zeros = bytes(min(max(size - at, 0), 1 * MiB))
    while at < size:
        _pwrite_all(fd, zeros[: size - at], at)
        at = min(size, at + len(zeros))


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _lock_directory(directory: str) -> int:
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreLockedError(f"{directory} is in use by another ringfs process") from exc
        raise
    return fd
