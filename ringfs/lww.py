"""Last-write-wins namespaces: keys whose reads return one value, the newest written.

Keys under a prefix listed in the `lww_prefixes` setting trade causal siblings for
a single value. What changes for them (docs/protocol.md, "Last-write-wins keys"):

- A put without a context is a checked write like a causal blind put (ringfs/quorum.py),
  but W acceptances suffice where a causal one needs R as well; the coordinator
  stamps the value with its wall clock (microseconds since the epoch).
- A get answers with one value: among the live siblings, the one with the newest
  stamp (ties broken by the dot, the same choice on every node), and the context of
  them all, so a put with that context discards every sibling it read.

Underneath, the key's versions are an ordinary dotted version vector set: replicas
merge, repair and hand off LWW keys exactly as other keys, so they converge the same
way, and siblings are still bounded by the number of concurrent writers. A stamped
value is stored as STAMP_MAGIC, the stamp (8 bytes, big-endian) and the value.

The data-loss caveat: of writes made concurrently (neither coordinator had seen the
other), reads show only the one with the newest stamp and the next write removes the
rest, although each was acknowledged. Clocks decide: a write coordinated by a node
whose clock runs behind loses to an earlier write stamped by a node whose clock runs
ahead. A blind put leaves a value acknowledged only by replicas it did not hear as
a sibling, to win or lose by its stamp.
Deletes are not ordered by stamps: a delete reads a quorum first, as a causal one,
and removes what it saw; a put concurrent with it survives.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable

from ringfs.dvv import DVVSet

STAMP_MAGIC = b"\xffLW1"
"""Opens every stamped value (a value stored before its key's prefix was made LWW
has no stamp: it ranks below every stamped one and is returned whole)."""

_STAMP = struct.Struct(">Q")
STAMP_BYTES = len(STAMP_MAGIC) + _STAMP.size
_MAX_STAMP = (1 << 64) - 1


def stamp(value: bytes, wall_s: float) -> bytes:
    """`value` as an LWW key stores it, stamped with wall-clock time `wall_s` (seconds)."""
    us = min(max(int(wall_s * 1_000_000), 0), _MAX_STAMP)
    return STAMP_MAGIC + _STAMP.pack(us) + value


def unstamp(stored: bytes) -> tuple[int, bytes]:
    """(stamp in microseconds, value) of a stored value; (-1, stored) if it has no stamp."""
    if len(stored) >= STAMP_BYTES and stored.startswith(STAMP_MAGIC):
        return _STAMP.unpack_from(stored, len(STAMP_MAGIC))[0], stored[STAMP_BYTES:]
    return -1, stored


def newest(state: DVVSet) -> bytes | None:
    """The value an LWW key reads as: the live sibling with the newest stamp, ties
    broken by the dot (node id, then counter); None if every sibling is a tombstone."""
    best: tuple[int, str, int] | None = None
    found: bytes | None = None
    for node, counter, value in state.dots():
        if value is None:
            continue
        ts, plain = unstamp(value)
        rank = (ts, node, counter)
        if best is None or rank > best:
            best, found = rank, plain
    return found


def digest(prefixes: Iterable[str]) -> str:
    """A short fingerprint of a node's LWW prefixes, announced in its membership
    metadata so that nodes can tell when their lists differ; "" for none."""
    unique = sorted(set(prefixes))
    if not unique:
        return ""
    return hashlib.sha256(json.dumps(unique).encode()).hexdigest()[:16]


def matches(key: bytes, prefixes: tuple[bytes, ...]) -> bool:
    """Whether `key` lies in one of the LWW namespaces `prefixes`. Reserved keys
    (first byte 0x00: file manifests and the nodes' own) never do, whatever the
    prefixes: the empty prefix makes every client key LWW, not a file's manifest."""
    return bool(prefixes) and key.startswith(prefixes) and key[:1] != b"\x00"


__all__ = ["STAMP_BYTES", "STAMP_MAGIC", "digest", "matches", "newest", "stamp", "unstamp"]
