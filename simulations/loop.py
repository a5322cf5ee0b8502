"""A heap-ordered event loop over a virtual clock.

Nothing here reads the wall clock. Events that fall due at the same instant run in
the order they were scheduled (a sequence number breaks ties), so a run is a pure
function of its inputs and seed.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
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
        self._heap: list[tuple[Any, ...]] = []
        """(when, seq, Handle) for call_at, (when, seq, fn, args) for post_at."""
        self._seq = 0
        self.steps = 0

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> Handle:
        """Run `fn(*args)` at virtual time `when` (never earlier than now)."""
        if when < self.now:
            when = self.now
        h = Handle(when, fn, args)
        seq = self._seq = self._seq + 1
        heappush(self._heap, (when, seq, h))
        return h

    def post_at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        """Like `call_at` for an event that is never cancelled: no Handle is made (most
        events, such as message deliveries, are of this kind)."""
        if when < self.now:
            when = self.now
        seq = self._seq = self._seq + 1
        heappush(self._heap, (when, seq, fn, args))

    def post_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """`post_at` after `delay` virtual seconds."""
        self.post_at(self.now + delay, fn, *args)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Handle:
        """Run `fn(*args)` after `delay` virtual seconds."""
        return self.call_at(self.now + delay, fn, *args)

    def next_time(self) -> float | None:
        """When the next live event is due, or None if nothing is scheduled."""
        heap = self._heap
        while heap and len(heap[0]) == 3 and heap[0][2].cancelled:
            heappop(heap)
        return heap[0][0] if heap else None

    def step(self) -> bool:
        """Run the next live event; False when there is none."""
        heap = self._heap
        while heap:
            e = heappop(heap)
            if len(e) == 4:
                self.now = e[0]
                self.steps += 1
                e[2](*e[3])
                return True
            h = e[2]
            if h.cancelled:
                continue
            self.now = e[0]
            self.steps += 1
            h.fn(*h.args)
            return True
        return False

    def run_until(self, t: float) -> None:
        """Run every event due at or before `t`, then set the clock to `t`."""
        heap = self._heap
        steps = 0
        try:
            while heap and heap[0][0] <= t:
                e = heappop(heap)
                if len(e) == 4:
                    self.now = e[0]
                    steps += 1
                    e[2](*e[3])
                    continue
                h = e[2]
                if h.cancelled:
                    continue
                self.now = e[0]
                steps += 1
                h.fn(*h.args)
        finally:
            self.steps += steps
        if self.now < t:
            self.now = t

    def run_while(self, cond: Callable[[], bool], limit: float) -> bool:
        """Run events while `cond()` holds and time stays <= limit; returns cond() at the end."""
        while cond():
            nt = self.next_time()
            if nt is None or nt > limit:
                self.now = max(self.now, limit)
                break
            self.step()
        return cond()
