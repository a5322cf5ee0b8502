"""Members as the gossip layer sees them, and the events it reports about them.

`MemberInfo` and `MemberEvent` are the immutable values handed to the layer above
(the composite Node builds its ring from them); `Member` is the mutable record the
state machine keeps per name. Members are identified by name; the address may change
when a member restarts elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from ringfs.gossip.suspicion import Suspicion

MemberState = Literal["alive", "suspect", "dead", "left"]
EventKind = Literal["join", "update", "suspect", "alive", "dead", "left", "reaped"]
MetaValue = str | int | float
Meta = Mapping[str, MetaValue]

# Wire codes of the states (push-pull encodes states as small ints). Append-only.
ALIVE: Final = 0
SUSPECT: Final = 1
DEAD: Final = 2
LEFT: Final = 3
STATE_NAMES: Final[tuple[MemberState, ...]] = ("alive", "suspect", "dead", "left")


@dataclass(frozen=True, eq=True)
class MemberInfo:
    """A snapshot of one member: what the ring and operators need."""

    name: str
    """Unique, stable name of the member."""
    address: str
    """"host:port" of its gossip (UDP) and data (TCP) endpoint."""
    incarnation: int
    """The member's own logical clock for its liveness; only it increases it."""
    state: MemberState
    """Our current belief: alive, suspect, dead or left."""
    meta: Mapping[str, MetaValue]
    """Application metadata the member advertises (capacity, zone...); read-only."""


@dataclass(frozen=True)
class MemberEvent:
    """A change of our view of a member, for the layer above (ring rebuilds)."""

    kind: EventKind
    """join: new (or back from dead/left); update: new address or metadata;
    suspect / alive: suspected / suspicion refuted; dead / left: failed / departed;
    reaped: forgotten after dead_reap_s."""
    member: MemberInfo
    """The member after the change."""


class Member:
    """The mutable per-member record kept by `Swim`."""

    __slots__ = (
        "address",
        "incarnation",
        "meta",
        "name",
        "state",
        "state_change",
        "suspicion",
    )

    def __init__(
        self,
        name: str,
        address: str,
        incarnation: int,
        state: int,
        meta: dict[str, MetaValue],
        now: float,
    ) -> None:
        self.name = name
        self.address = address
        self.incarnation = incarnation
        self.state = state
        self.meta = meta
        self.state_change = now
        self.suspicion: Suspicion | None = None

    def info(self) -> MemberInfo:
        """An immutable snapshot of this record."""
        return MemberInfo(
            self.name,
            self.address,
            self.incarnation,
            STATE_NAMES[self.state],
            MappingProxyType(dict(self.meta)),
        )

    def __repr__(self) -> str:
        return (
            f"Member({self.name!r}, {self.address!r}, inc={self.incarnation}, "
            f"{STATE_NAMES[self.state]})"
        )
