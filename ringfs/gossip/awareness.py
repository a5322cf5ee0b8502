"""Lifeguard's local health awareness.

A member that is itself slow (CPU starved, paging, a stalled event loop) misses acks
and blames the members it probes. Awareness keeps a score in [0, max - 1] of how
likely it is that *we* are the problem: it grows when probes fail without the nacks
that healthy intermediaries would have sent and when we have to refute a suspicion
about ourselves, and it shrinks with every successful probe. Timeouts and the probe
interval are multiplied by (score + 1), so a sick member slows down instead of
spreading false suspicions.
"""

from __future__ import annotations


class Awareness:
    """The health score; 0 is healthy. Pure arithmetic, no clock."""

    __slots__ = ("_max", "_score")

    def __init__(self, max_multiplier: int) -> None:
        if max_multiplier < 1:
            raise ValueError("max_multiplier must be at least 1")
        self._max = max_multiplier
        self._score = 0

    @property
    def score(self) -> int:
        """Current health score: 0 healthy, max_multiplier - 1 worst."""
        return self._score

    @property
    def max_multiplier(self) -> int:
        return self._max

    def apply_delta(self, delta: int) -> None:
        """Add `delta` and clamp into [0, max_multiplier - 1]."""
        self._score = min(max(self._score + delta, 0), self._max - 1)

    def scale(self, timeout_s: float) -> float:
        """`timeout_s` stretched by our ill-health: timeout * (score + 1)."""
        return timeout_s * (self._score + 1)
