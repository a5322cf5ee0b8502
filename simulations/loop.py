"""A heap-ordered event loop over a virtual clock.

Nothing here reads the wall clock. Events that fall due at the same instant run in
the order they were scheduled (a sequence number breaks ties), so a run is a pure
function of its inputs and seed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class Handle:
    """A scheduled callback; `cancel()` stops it from running."""

    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Runs callbacks in virtual-time order."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Handle]] = []
        self._seq = 0
        self.steps = 0

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Handle:
        """Run `fn(*args)` at virtual time `when` (never earlier than now)."""
        when = max(when, self.now)
        h = Handle(when, fn, args)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, h))
        return h

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Handle:
        """Run `fn(*args)` after `delay` virtual seconds."""
        return self.call_at(self.now + delay, fn, *args)

    def next_time(self) -> float | None:
        """When the next live event is due, or None if nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def step(self) -> bool:
        """Run the next live event; False when there is none."""
        heap = self._heap
        while heap:
            when, _, h = heapq.heappop(heap)
            if h.cancelled:
                continue
            self.now = when
            self.steps += 1
            h.fn(*h.args)
            return True
        return False

    def run_until(self, t: float) -> None:
        """Run every event due at or before `t`, then set the clock to `t`."""
        heap = self._heap
        while heap and heap[0][0] <= t:
            when, _, h = heapq.heappop(heap)
            if h.cancelled:
                continue
            self.now = when
            self.steps += 1
            h.fn(*h.args)
        self.now = max(self.now, t)

    def run_while(self, cond: Callable[[], bool], limit: float) -> bool:
        """Run events while `cond()` holds and time stays <= limit; returns cond() at the end."""
        while cond():
            nt = self.next_time()
            if nt is None or nt > limit:
                self.now = max(self.now, limit)
                break
            self.step()
        return cond()
