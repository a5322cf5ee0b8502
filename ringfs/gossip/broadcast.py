"""The queue of membership updates waiting to be piggybacked (infection-style).

Each update is an encoded message about one member. It is handed out at most
`transmit_limit` times (retransmit_mult * ceil(log10(N+1)), computed by the caller
because N changes), least-transmitted first and, among equals, newest first, so
that fresh news overtakes news most members already have. A newer update about a
member replaces the queued one, since the old one is now wrong. The queue is bounded;
on overflow the most-transmitted, oldest update is dropped.

Updates are kept in buckets by transmit count: a bucket is an insertion-ordered
dict used as an ordered set, so taking, re-bucketing and replacing are O(1) and a
packet is filled without sorting the whole queue.
"""

from __future__ import annotations

# Give up filling a packet after this many updates in a row did not fit: the rest
# are probably as large, and scanning a long queue for every packet is costly.
_MAX_MISSES = 16
# No message is shorter than this, so a packet with less room left is full.
_MIN_MESSAGE_BYTES = 4


class _Item:
    __slots__ = ("key", "payload", "transmits")

    def __init__(self, key: str, payload: bytes) -> None:
        self.key = key
        self.payload = payload
        self.transmits = 0


class BroadcastQueue:
    """Transmit-limited, bounded queue of updates keyed by member name."""

    def __init__(self, max_queued: int) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self._max = max_queued
        self._items: dict[str, _Item] = {}
        self._buckets: dict[int, dict[str, None]] = {}
        self.dropped = 0
        """Updates dropped because the queue was full."""
        self.replaced = 0
        """Updates replaced by a newer one about the same member before finishing."""

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def transmits(self, key: str) -> int | None:
        """How often the update about `key` was handed out, None if not queued."""
        item = self._items.get(key)
        return None if item is None else item.transmits

    def payload(self, key: str) -> bytes | None:
        """The queued update about `key`, if any."""
        item = self._items.get(key)
        return None if item is None else item.payload

    def queue(self, key: str, payload: bytes) -> None:
        """Queue `payload` about member `key`, replacing any older update about it."""
        old = self._items.pop(key, None)
        if old is not None:
            self._unbucket(old)
            self.replaced += 1
        item = _Item(key, payload)
        self._items[key] = item
        self._buckets.setdefault(0, {})[key] = None
        while len(self._items) > self._max:
            self._drop_one()

    def remove(self, key: str) -> None:
        """Forget the update about `key` (e.g. the member was reaped)."""
        item = self._items.pop(key, None)
        if item is not None:
            self._unbucket(item)

    def clear(self) -> None:
        self._items.clear()
        self._buckets.clear()

    def take(self, limit_bytes: int, transmit_limit: int, first: str | None = None) -> list[bytes]:
        """Updates whose encodings total at most `limit_bytes`, least-transmitted
        first; each counts as transmitted once and leaves the queue when it reaches
        `transmit_limit`. `first`, if queued, is taken before all others (buddy
        system: the suspect message about the member we are about to probe)."""
        if not self._items or limit_bytes < _MIN_MESSAGE_BYTES:
            return []
        chosen: list[_Item] = []
        free = limit_bytes
        if first is not None:
            item = self._items.get(first)
            if item is not None and len(item.payload) <= free:
                chosen.append(item)
                free -= len(item.payload)
        misses = 0
        for t in sorted(self._buckets):
            bucket = self._buckets[t]
            for key in reversed(bucket):  # newest first among equals
                if key == first:
                    continue
                item = self._items[key]
                n = len(item.payload)
                if n <= free:
                    chosen.append(item)
                    free -= n
                    misses = 0
                    if free < _MIN_MESSAGE_BYTES:
                        break
                else:
                    misses += 1
                    if misses >= _MAX_MISSES:
                        break
            if free < _MIN_MESSAGE_BYTES or misses >= _MAX_MISSES:
                break
        out = []
        for item in chosen:
            out.append(item.payload)
            self._unbucket(item)
            item.transmits += 1
            if item.transmits >= transmit_limit:
                del self._items[item.key]
            else:
                self._buckets.setdefault(item.transmits, {})[item.key] = None
        return out

    def check_invariants(self) -> None:
        """Every item is in exactly the bucket of its transmit count."""
        n = 0
        for t, bucket in self._buckets.items():
            assert bucket, f"empty bucket {t} kept"
            for key in bucket:
                assert self._items[key].transmits == t, key
            n += len(bucket)
        assert n == len(self._items), (n, len(self._items))
        assert len(self._items) <= self._max

    def _unbucket(self, item: _Item) -> None:
        bucket = self._buckets[item.transmits]
        del bucket[item.key]
        if not bucket:
            del self._buckets[item.transmits]

    def _drop_one(self) -> None:
        worst = max(self._buckets)
        key = next(iter(self._buckets[worst]))  # oldest in the most-sent bucket
        self._unbucket(self._items.pop(key))
        self.dropped += 1
