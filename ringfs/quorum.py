"""Quorum coordination: one small state machine per client get or put.

A coordinator is told which replicas it addressed and then fed their answers
(or their silence, through `on_timeout`). It decides when the request succeeds
or has failed; the node turns that decision into a reply. Coordinators never
send anything themselves, which keeps them trivially testable.

PutCoordinator: succeeds once W replicas acknowledged a durable write; fails as
soon as W has become unreachable (too many refusals), or at the deadline, with
the number that did acknowledge. A *checked* write (a blind put, written with
its coordinator's own context) is applied by a replica only when that context
covers every version the replica holds; a replica holding more answers with
its state instead (a conflict). Such a write needs max(W, R) acceptances, so
that, as with a read quorum, any write acknowledged before it met one of them;
once a conflict is in hand and R replicas have answered, the coordinator is told
to write again over the merge of what the conflicting replicas hold (`rewrite`).

GetCoordinator: answers once R replicas replied, with the causal merge of what
they returned; keeps collecting until every replica answered or the deadline
passed, and then reports which replicas hold something older than the merge
(read repair) and whether every primary holds the same tombstone (reaping).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ringfs.dvv import DVVSet
from ringfs.ring import Replica


@dataclass(frozen=True, slots=True)
class QuorumFailure:
    """A request that could not gather its quorum."""

    replied: int
    needed: int
    addressed: int
    reason: str


@dataclass(eq=False)
class PutCoordinator:
    """Counts durable acknowledgements of one replicated write."""

    key: bytes
    state: DVVSet
    replicas: tuple[Replica, ...]
    w: int
    deadline: float
    check: int = 0
    """For a checked write, R: the replicas whose versions must have been heard
    (accepted or answered with a conflict) before it may be written again; 0 for
    an ordinary write, which replicas apply whatever they hold."""
    acked: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, DVVSet] = field(default_factory=dict)
    """Replicas that did not apply a checked write, with the states they hold."""
    rewrite: DVVSet | None = None
    """Set (with `finished`) when a checked write must be made again: the merge of
    the conflicting replicas' states, which the new write's context must cover."""
    finished: bool = False
    """The outcome is decided (W acks, W out of reach, a rewrite, or timed out):
    later answers change nothing but `answered`. With w <= len(replicas), every
    replica having answered implies it."""
    succeeded: bool = False
    """The outcome was success."""

    @property
    def need(self) -> int:
        """Acceptances that make the write succeed."""
        return self.w if self.w >= self.check else self.check

    @property
    def answered(self) -> bool:
        """Every replica addressed has accepted, refused or answered with a conflict."""
        return len(self.acked) + len(self.refused) + len(self.conflicts) >= len(self.replicas)

    def on_ack(self, node: str) -> bool:
        """A replica made the write durable. True when this completes the quorum (see
        `rewrite` for the other outcome an acceptance can bring)."""
        if node in self.refused or node in self.conflicts:
            return False
        self.acked.add(node)
        if self.finished:
            return False  # late: it only counts toward `answered`
        if len(self.acked) >= self.need:
            self.finished = self.succeeded = True
            return True
        if self.conflicts:
            self._settle()
        return False

    def on_refused(self, node: str, reason: str) -> QuorumFailure | None:
        """A replica refused or cannot be reached; a failure when W is now out of reach
        (or a `rewrite`, for a checked write that heard enough conflicts)."""
        if node in self.acked or node in self.conflicts:
            return None
        self.refused[node] = reason
        return None if self.finished else self._settle()

    def on_conflict(self, node: str, state: DVVSet) -> QuorumFailure | None:
        """A replica did not apply a checked write: it holds `state`, which the write's
        context does not cover. A failure when neither success nor a rewrite can be
        reached any more; sets `rewrite` when the write must be made again."""
        if node in self.acked or node in self.refused:
            return None
        self.conflicts[node] = state
        return None if self.finished else self._settle()

    def _settle(self) -> QuorumFailure | None:
        """Decide what is not a success: write again, wait, or fail. A conflict in hand
        once R replicas have answered means writing again at once, as a read quorum
        would have seen it (whether or not W acceptances could still come)."""
        acked, conflicts = len(self.acked), len(self.conflicts)
        waiting = len(self.replicas) - acked - len(self.refused) - conflicts
        heard = acked + conflicts
        if conflicts and heard >= self.check:
            self.finished = True
            merged = DVVSet()
            for state in self.conflicts.values():
                merged = merged.sync(state)
            self.rewrite = merged
            return None
        if acked + waiting >= self.need or (conflicts and heard + waiting >= self.check):
            return None
        self.finished = True
        parts = [f"{n} ({r})" for n, r in sorted(self.refused.items())]
        parts += [f"{n} (holds versions the write had not seen)" for n in sorted(self.conflicts)]
        return QuorumFailure(acked, self.need, len(self.replicas),
                             f"{len(self.refused) + conflicts} replica(s) failed: "
                             + ", ".join(parts))

    def on_timeout(self) -> QuorumFailure | None:
        if self.finished:
            return None
        self.finished = True
        return QuorumFailure(len(self.acked), self.need, len(self.replicas),
                             "timed out waiting for replicas")


@dataclass(eq=False)
class GetCoordinator:
    """Merges replica states for one read and finds the stale replicas."""

    key: bytes
    replicas: tuple[Replica, ...]
    r: int
    deadline: float
    replies: dict[str, DVVSet | None] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    answered: bool = False
    closed: bool = False
    merged: DVVSet = field(default_factory=DVVSet)

    def on_reply(self, node: str, state: DVVSet | None) -> bool:
        """A replica answered (None: it has nothing). True when this reaches R first."""
        if self.closed or node in self.replies or node in self.failed:
            return False
        self.replies[node] = state
        if state is not None:
            self.merged = self.merged.sync(state)
        if not self.answered and len(self.replies) >= self.r:
            self.answered = True
            return True
        return False

    def on_failed(self, node: str, reason: str) -> QuorumFailure | None:
        """A replica cannot answer; a failure when R is now out of reach."""
        if self.closed or node in self.replies:
            return None
        self.failed[node] = reason
        if not self.answered and len(self.replicas) - len(self.failed) < self.r:
            self.answered = True
            return QuorumFailure(len(self.replies), self.r, len(self.replicas),
                                 f"{len(self.failed)} replica(s) failed")
        return None

    @property
    def complete(self) -> bool:
        """Every addressed replica answered or failed."""
        return len(self.replies) + len(self.failed) >= len(self.replicas)

    def on_timeout(self) -> QuorumFailure | None:
        """The deadline passed; a failure if R was never reached."""
        self.closed = True
        if self.answered:
            return None
        self.answered = True
        return QuorumFailure(len(self.replies), self.r, len(self.replicas),
                             "timed out waiting for replicas")

    def stale(self) -> list[Replica]:
        """Replicas that answered with something other than the merged state."""
        merged = self.merged
        if not merged.entries:
            return []
        return [rep for rep in self.replicas
                if rep.node in self.replies and self.replies[rep.node] != merged]

    def all_primaries_hold_tombstone(self) -> bool:
        """Every addressed replica is a primary and returned exactly the merged tombstone."""
        m = self.merged
        return (bool(m.entries) and m.is_tombstone()
                and all(rep.role == "primary" for rep in self.replicas)
                and len(self.replies) == len(self.replicas)
                and all(s == m for s in self.replies.values()))
