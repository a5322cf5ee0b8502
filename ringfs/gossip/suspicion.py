"""Lifeguard's dynamic suspicion timeout.

When a member is first suspected we do not know whether the accuser is right or
merely slow itself, so the timeout starts long (max = beta * min). Every independent
accuser that confirms the suspicion is evidence that the member really is gone, so
the timeout shrinks, logarithmically in the number of confirmations, reaching the
floor min = alpha * max(1, log10 N) * probe_interval after k = suspicion_mult - 2
confirmations:

    timeout(c) = max(min, max - (max - min) * ln(c + 1) / ln(k + 1))

The first confirmations count the most; this is the curve of the Lifeguard paper.
The timer is measured from when *we* started suspecting, so a shrink can make the
deadline fall into the past, in which case the member is declared dead at once.
"""

from __future__ import annotations

import math


def suspicion_timeout(confirmations: int, k: int, min_s: float, max_s: float) -> float:
    """Timeout for a suspicion with `confirmations` independent confirmations out of
    `k` expected; `min_s` when k is 0 (nobody could confirm) or max_s <= min_s."""
    if k <= 0 or max_s <= min_s:
        return min_s
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(min_s, max_s - frac * (max_s - min_s))


class Suspicion:
    """One running suspicion of one member: who accused it and when it expires."""

    __slots__ = ("_confirmers", "incarnation", "k", "max_s", "min_s", "start")

    def __init__(
        self, accuser: str, incarnation: int, k: int, min_s: float, max_s: float, start: float
    ) -> None:
        self.start = start
        self.k = k
        self.min_s = min_s
        self.max_s = max_s
        self.incarnation = incarnation
        # The original accuser is not a confirmation; independent accusers are.
        self._confirmers: set[str] = {accuser}

    @property
    def confirmations(self) -> int:
        """Independent accusers beyond the first one."""
        return len(self._confirmers) - 1

    def confirm(self, accuser: str) -> bool:
        """Record an accusation; True when it came from someone new (and counted)."""
        if accuser in self._confirmers or self.confirmations >= self.k:
            return False
        self._confirmers.add(accuser)
        return True

    def timeout(self) -> float:
        """The current total timeout, measured from `start`."""
        return suspicion_timeout(self.confirmations, self.k, self.min_s, self.max_s)

    def deadline(self) -> float:
        """The time at which the suspected member is declared dead."""
        return self.start + self.timeout()
