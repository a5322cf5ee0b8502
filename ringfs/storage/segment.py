"""On-disk formats of the log store: records, segment headers, hint files, and the scanner.

Every multi-byte integer is little-endian. Every checksum is a CRC32 (zlib) seeded
with the store's salt, a random 32-bit number kept in the store's FORMAT file, so
that bytes copied in from another store (a segment file stored as a value, a stray
backup) never pass for records of this one. A checksum is stored *after* the bytes
it covers, so verifying a whole record or file is one call: the CRC32 of covered
bytes followed by their little-endian CRC is the constant CRC_RESIDUE.

Record (28 bytes of overhead)::

    0   u32  hcrc   CRC of bytes [4, 24 + klen): the fields below and the key
    4   u64  seq    engine-wide sequence number
    12  u8   flags  bit 0 tombstone, bit 1 purge marker; other bits are zero
    13  u8   zero   reserved
    14  u16  klen
    16  u32  mlen
    20  u32  vlen
    24       key, meta, value
    -4  u32  crc    CRC of every byte before it (hcrc included)

The header checksum lets a scan trust the lengths and the key of a record whose
payload is damaged, so it can name the key that needs repair and skip exactly that
record. See docs/storage.md for the segment header and the hint file.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ringfs.storage.checksum import crc32

CRC_RESIDUE = 0x2144DF1C
"""CRC32 of any byte string followed by its own little-endian CRC32, whatever the seed."""

FLAG_TOMBSTONE = 0x01
FLAG_PURGE = 0x02
KNOWN_FLAGS = FLAG_TOMBSTONE | FLAG_PURGE

RECORD_HEADER = struct.Struct("<IQBBHII")
"""hcrc, seq, flags, reserved, klen, mlen, vlen."""
RECORD_FIELDS = struct.Struct("<QBBHII")
"""The header without hcrc: what hcrc covers, before the key."""
RECORD_READ = struct.Struct("<Q?xHI")
"""seq, tombstone, klen, mlen, unpacked at offset 4 on the read path.

The flags byte reads as a bool: a record a key maps to has flags 0 or FLAG_TOMBSTONE
(purge markers are never served), so that is its tombstone bit."""
HEADER_BYTES = RECORD_HEADER.size  # 24
RECORD_OVERHEAD = HEADER_BYTES + 4  # 28
MAX_KEY_BYTES = 0xFFFF
MAX_PAYLOAD_BYTES = 0xFFFFFFFF

_U32 = struct.Struct("<I")

SEGMENT_MAGIC = b"RINGFSEG"
HINT_MAGIC = b"RINGFHNT"
FORMAT_VERSION = 1
KIND_LOG = 0
"""A segment written by put/delete/purge, in sequence order; its tail may be torn."""
KIND_MERGED = 1
"""A merge output: fsynced in full before it was renamed into place; never torn."""

SEGMENT_HEADER = struct.Struct("<8sHBBIQQI")
"""magic, version, kind, reserved, superseded count, segment id, seq floor, data start."""
_SUPERSEDED_ID = struct.Struct("<Q")

HINT_HEADER = struct.Struct("<8sHHI")
"""magic, version, reserved, reserved."""
HINT_ENTRY = struct.Struct("<QIIBH")
"""seq, offset, size, flags, klen; the key follows."""
HINT_FOOTER = struct.Struct("<QQI")
"""segment id, segment length covered, entry count; the file's CRC follows."""


class FormatError(Exception):
    """A file is not a well-formed log-store file of this store."""


# -- records -------------------------------------------------------------------


def encode_record(salt: int, seq: int, flags: int, key: bytes, meta: bytes, value: bytes) -> bytes:
    """The bytes of one record, both checksums included."""
    fields = RECORD_FIELDS.pack(seq, flags, 0, len(key), len(meta), len(value))
    hcrc = crc32(key, crc32(fields, salt))
    body = b"".join((_U32.pack(hcrc), fields, key, meta, value))
    return body + _U32.pack(crc32(body, salt))


def record_size(klen: int, mlen: int, vlen: int) -> int:
    """Bytes a record with these lengths occupies."""
    return RECORD_OVERHEAD + klen + mlen + vlen


# -- segment header --------------------------------------------------------------


def segment_header_bytes(superseded: int) -> int:
    """Length of a segment header listing `superseded` ids."""
    return SEGMENT_HEADER.size + _SUPERSEDED_ID.size * superseded + 4


def encode_segment_header(
    salt: int,
    segment_id: int,
    kind: int,
    superseded: Iterable[int],
    seq_floor: int,
    data_start: int,
) -> bytes:
    """A segment header; `data_start` may leave zero padding after it.

    `seq_floor` is a sequence number already handed out when the segment was
    written, so that a restart never hands it out again even if every record that
    carried it has since been merged away.
    """
    ids = list(superseded)
    head = SEGMENT_HEADER.pack(
        SEGMENT_MAGIC, FORMAT_VERSION, kind, 0, len(ids), segment_id, seq_floor, data_start
    ) + b"".join(_SUPERSEDED_ID.pack(i) for i in ids)
    if len(head) + 4 > data_start:
        raise ValueError("data_start leaves no room for the header")
    return head + _U32.pack(crc32(head, salt))


class SegmentHeader(NamedTuple):
    """The decoded header of a segment file."""

    segment_id: int
    kind: int
    superseded: tuple[int, ...]
    seq_floor: int
    data_start: int


def read_segment_header(fd: int, salt: int, file_size: int) -> SegmentHeader:
    """Decode and verify the header of the open segment `fd`; raises FormatError."""
    fixed = os.pread(fd, SEGMENT_HEADER.size, 0)
    if len(fixed) < SEGMENT_HEADER.size:
        raise FormatError("segment header is truncated")
    magic, version, kind, reserved, count, segment_id, floor, data_start = SEGMENT_HEADER.unpack(
        fixed
    )
    if magic != SEGMENT_MAGIC:
        raise FormatError("not a segment file (bad magic)")
    if version != FORMAT_VERSION:
        raise FormatError(f"unsupported segment format version {version}")
    length = segment_header_bytes(count)
    if kind not in (KIND_LOG, KIND_MERGED) or reserved or length > file_size:
        raise FormatError("segment header is damaged or truncated")
    raw = os.pread(fd, length, 0)
    if len(raw) != length or crc32(raw, salt) != CRC_RESIDUE:
        raise FormatError("segment header checksum mismatch")
    if not length <= data_start <= file_size:
        raise FormatError("segment data start out of range")
    ids = tuple(
        _SUPERSEDED_ID.unpack_from(raw, SEGMENT_HEADER.size + 8 * i)[0] for i in range(count)
    )
    return SegmentHeader(segment_id, kind, ids, floor, data_start)


# -- hint files --------------------------------------------------------------------


class HintEntry(NamedTuple):
    """One record as a hint file lists it."""

    seq: int
    offset: int
    size: int
    flags: int
    key: bytes


def encode_hint_entry(seq: int, offset: int, size: int, flags: int, key: bytes) -> bytes:
    """The bytes of one hint entry."""
    return HINT_ENTRY.pack(seq, offset, size, flags, len(key)) + key


def hint_file_header() -> bytes:
    """The fixed bytes that open every hint file."""
    return HINT_HEADER.pack(HINT_MAGIC, FORMAT_VERSION, 0, 0)


def hint_file_footer(crc_so_far: int, segment_id: int, seg_len: int, count: int) -> bytes:
    """The footer closing a hint file whose earlier bytes have (salted) CRC `crc_so_far`."""
    footer = HINT_FOOTER.pack(segment_id, seg_len, count)
    return footer + _U32.pack(crc32(footer, crc_so_far))


def parse_hint_file(
    data: bytes, salt: int, segment_id: int, seg_len: int
) -> Iterator[tuple[int, int, int, int, bytes]]:
    """Entries (seq, offset, size, flags, key) of a hint file; raises FormatError if unusable.

    A hint is only trusted when its checksum holds and it names the segment and the
    exact segment length it was written for; anything else falls back to a scan.
    Those checks happen at once; the entries are then decoded lazily, one segment's
    worth of tuples never being held at once, and a (checksum-colliding) hint whose
    entries do not fit its length raises FormatError while being iterated.
    """
    minimum = HINT_HEADER.size + HINT_FOOTER.size + 4
    if len(data) < minimum:
        raise FormatError("hint file is truncated")
    if crc32(data, salt) != CRC_RESIDUE:
        raise FormatError("hint file checksum mismatch")
    magic, version, _, _ = HINT_HEADER.unpack_from(data, 0)
    if magic != HINT_MAGIC or version != FORMAT_VERSION:
        raise FormatError("not a hint file of this format")
    hid, hlen, count = HINT_FOOTER.unpack_from(data, len(data) - HINT_FOOTER.size - 4)
    if hid != segment_id or hlen != seg_len:
        raise FormatError("hint file describes another segment or length")
    return _hint_entries(data, count)


def _hint_entries(data: bytes, count: int) -> Iterator[tuple[int, int, int, int, bytes]]:
    unpack_from = HINT_ENTRY.unpack_from
    pos = HINT_HEADER.size
    end = len(data) - HINT_FOOTER.size - 4
    step = HINT_ENTRY.size
    try:
        for _ in range(count):
            seq, offset, size, flags, klen = unpack_from(data, pos)
            kstart = pos + step
            pos = kstart + klen
            if pos > end:
                raise FormatError("hint file entries overrun the file")
            yield seq, offset, size, flags, data[kstart:pos]
    except struct.error as exc:
        raise FormatError("hint file entries overrun the file") from exc
    if pos != end:
        raise FormatError("hint file entry count does not match its length")


# -- scanning ------------------------------------------------------------------------


class ScannedRecord(NamedTuple):
    """A record whose checksums hold."""

    offset: int
    size: int
    seq: int
    flags: int
    key: bytes
    data: bytes | None
    """The raw record bytes, when the scanner was asked for them (merges copy them)."""


class CorruptRegion(NamedTuple):
    """Bytes that failed their checksum; `key` and `seq` are set when the header held."""

    offset: int
    length: int
    key: bytes | None
    seq: int | None


_NONZERO = re.compile(rb"[^\x00]")
# A record can only start where the flags byte is small and the reserved byte zero.
_CANDIDATE = re.compile(rb"(?s)(?=.{12}[\x00-\x03]\x00)")


class SegmentScanner:
    """Walks the records of one segment in file order, verifying every checksum.

    It reads in chunks, so a caller can scan a segment a slice at a time (the
    hint writer and the merge do, to keep each step short). It stops at the first
    bytes after which no valid record follows: `tail_offset` then says where the
    valid data ends, and `tail_key` names a full-length but damaged last record.
    Damaged bytes followed by valid records are reported as CorruptRegion.
    """

    def __init__(
        self,
        fd: int,
        salt: int,
        start: int,
        end: int,
        *,
        keep_data: bool = False,
        chunk_bytes: int = 1 << 20,
    ) -> None:
        self._fd = fd
        self._salt = salt
        self._end = end
        self._keep = keep_data
        self._chunk = chunk_bytes
        self._buf = b""
        self._buf_off = start
        self.pos = start
        """File offset of the next record to read."""
        self.done = start >= end
        self.tail_offset: int | None = None
        """Set when the scan ended on bytes that are not a complete valid record."""
        self.tail_key: bytes | None = None
        """The key of a full-length last record whose payload checksum failed."""
        self.tail_zero = False
        """Set with tail_offset when every byte from there to the end is zero: space
        preallocated for appends that never came, rather than a torn record."""

    def _window(self, need: int) -> tuple[bytes, int]:
        """The buffer and the index of `pos` in it, with `need` bytes there if the file has them."""
        i = self.pos - self._buf_off
        if i + need > len(self._buf):
            want = min(max(need, self._chunk), self._end - self.pos)
            self._buf = os.pread(self._fd, want, self.pos)
            self._buf_off = self.pos
            i = 0
        return self._buf, i

    def scan(self, budget_bytes: int) -> list[ScannedRecord | CorruptRegion]:
        """Scan at least one record (if any remain) and about `budget_bytes` of them."""
        out: list[ScannedRecord | CorruptRegion] = []
        salt = self._salt
        end = self._end
        unpack_from = RECORD_HEADER.unpack_from
        check = crc32
        stop = self.pos + budget_bytes
        while not self.done and (not out or self.pos < stop):
            pos = self.pos
            avail = end - pos
            if avail < RECORD_OVERHEAD:
                self._finish(pos, None, zero=data_end(self._fd, pos, end) == pos)
                break
            buf, i = self._window(HEADER_BYTES)
            _, seq, flags, reserved, klen, mlen, vlen = unpack_from(buf, i)
            size = RECORD_OVERHEAD + klen + mlen + vlen
            if size <= avail and not reserved and not flags & ~KNOWN_FLAGS:
                buf, i = self._window(size)
                view = memoryview(buf)[i : i + size]
                if check(view, salt) == CRC_RESIDUE:
                    key = buf[i + HEADER_BYTES : i + HEADER_BYTES + klen]
                    data = bytes(view) if self._keep else None
                    out.append(ScannedRecord(pos, size, seq, flags, key, data))
                    self.pos = pos + size
                    continue
            item = self._damaged(pos, avail)
            if item is not None:
                out.append(item)
        return out

    def _header_key(self, pos: int, avail: int) -> tuple[int, int, bytes] | None:
        """(size, seq, key) of the record at `pos` if its header checksum holds."""
        buf, i = self._window(HEADER_BYTES)
        hcrc, seq, flags, reserved, klen, mlen, vlen = RECORD_HEADER.unpack_from(buf, i)
        if reserved or flags & ~KNOWN_FLAGS or HEADER_BYTES + klen > avail:
            return None
        buf, i = self._window(HEADER_BYTES + klen)
        if crc32(memoryview(buf)[i + 4 : i + HEADER_BYTES + klen], self._salt) != hcrc:
            return None
        key = buf[i + HEADER_BYTES : i + HEADER_BYTES + klen]
        return RECORD_OVERHEAD + klen + mlen + vlen, seq, key

    def _damaged(self, pos: int, avail: int) -> CorruptRegion | None:
        """Classify bad bytes at `pos`: a torn tail (returns None) or a corrupt region."""
        known = self._header_key(pos, avail)
        if known is not None and known[0] > avail:
            # A trustworthy header whose record runs past the end: a torn append.
            self._finish(pos, None)
            return None
        if known is None and data_end(self._fd, pos, self._end) == pos:  # all zeros
            self._finish(pos, None, zero=True)
            return None
        resume = pos + known[0] if known is not None else pos + 1
        nxt = find_next_record(self._fd, self._salt, resume, self._end)
        if nxt is None:
            self._finish(pos, known[2] if known is not None else None)
            return None
        self.pos = nxt
        if known is not None:
            return CorruptRegion(pos, nxt - pos, known[2], known[1])
        return CorruptRegion(pos, nxt - pos, None, None)

    def _finish(self, pos: int, key: bytes | None, *, zero: bool = False) -> None:
        self.done = True
        if pos < self._end:
            self.tail_offset = pos
            self.tail_key = key
            self.tail_zero = zero
        self.pos = pos
        self._buf = b""


def data_end(fd: int, start: int, end: int, chunk_bytes: int = 1 << 20) -> int:
    """Offset just past the last non-zero byte in [start, end), or `start` if none."""
    while end > start:
        lo = max(start, end - chunk_bytes)
        chunk = os.pread(fd, end - lo, lo)
        trimmed = len(chunk.rstrip(b"\x00"))
        if trimmed:
            return lo + trimmed
        end = lo
    return start


def find_next_record(fd: int, salt: int, start: int, end: int) -> int | None:
    """Offset of the first valid record in [start, end), or None.

    Used only after damage, so it may read the rest of the segment at once. Runs of
    zero bytes are skipped quickly: no valid header is all zeros.
    """
    if end - start < RECORD_OVERHEAD:
        return None
    data = os.pread(fd, end - start, start)
    view = memoryview(data)
    limit = len(data) - RECORD_OVERHEAD
    q = 0
    while q <= limit:
        match = _CANDIDATE.search(data, q)
        if match is None or match.start() > limit:
            return None
        q = match.start()
        if not any(view[q : q + HEADER_BYTES]):
            nz = _NONZERO.search(data, q)
            if nz is None:
                return None
            q = max(q + 1, nz.start() - HEADER_BYTES + 1)
            continue
        hcrc, _, _, _, klen, mlen, vlen = RECORD_HEADER.unpack_from(data, q)
        size = RECORD_OVERHEAD + klen + mlen + vlen
        if (
            q + size <= len(data)
            and crc32(view[q + 4 : q + HEADER_BYTES + klen], salt) == hcrc
            and crc32(view[q : q + size], salt) == CRC_RESIDUE
        ):
            return start + q
        q += 1
    return None
