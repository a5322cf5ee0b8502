"""One-shot timers for the sans-IO cores (`Node`, `Swim`): a heap that is told the time.

Nothing here reads a clock. A core schedules a callback for a time with `at`,
its driver asks `next_deadline()` when to wake it and, once the time has come,
the core runs what `due(now)` yields. Timers with the same time run in the order
they were scheduled, so a seeded simulation replays them identically. Cancelling
marks an entry dead in place; dead entries are dropped when they reach the top
of the heap, so a cancel costs nothing and a cancelled timer never wakes anyone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from heapq import heappop, heappush
from typing import Any

Timer = list[Any]
"""A scheduled entry: [when, sequence, callback or None once cancelled or run, args]."""


class Timers:
    """A heap of one-shot timers; see the module docstring."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = 0

    def __len__(self) -> int:
        """Entries held, cancelled ones not yet dropped included."""
        return len(self._heap)

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> Timer:
        """Call `fn(*args, now)` once `now` reaches `when`; the entry can be cancelled."""
        self._seq += 1
        entry: Timer = [when, self._seq, fn, args]
        heappush(self._heap, entry)
        return entry

    @staticmethod
    def cancel(entry: Timer | None) -> None:
        """Cancel an entry from `at` (None, or one that already ran, is a no-op)."""
        if entry is not None:
            entry[2] = None

    def next_deadline(self) -> float | None:
        """When the earliest live timer is due, or None when none is left."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heappop(heap)
        return heap[0][0] if heap else None

    def due(self, now: float) -> Iterator[tuple[Callable[..., None], tuple[Any, ...]]]:
        """(callback, args) of every live timer due at or before `now`, in order; the
        caller calls `callback(*args, now)`. Timers scheduled meanwhile that are
        already due come out of the same iteration."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heappop(heap)
            fn = entry[2]
            if fn is not None:
                entry[2] = None  # ran: a later cancel is a no-op
                yield fn, entry[3]


__all__ = ["Timer", "Timers"]
