"""The node's view of the cluster and the ring built from it.

Members are known by name, with an address and metadata (capacity, zone). Each
has a state: alive, suspect, dead or left. The ring is rebuilt whenever the set
of members placed on it changes: every member that has not left or been reaped
is placed (a dead node keeps its ranges; its writes go to fallbacks through the
sloppy quorum until it returns or is removed), and the up-set used for the
annotated preference list holds the alive and suspect ones.

Until gossip drives it, liveness comes from the transport: a peer that cannot be
reached is treated as down for `unreachable_s`, then tried again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ringfs.ring import Ring, RingMember

STATES = ("alive", "suspect", "dead", "left")
MetaValue = str | int | float


@dataclass(frozen=True)
class Member:
    """What this node knows of one member."""

    name: str
    address: str
    state: str = "alive"
    incarnation: int = 0
    meta: Mapping[str, MetaValue] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [self.name, self.address, dict(self.meta)]

    def to_status(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "state": self.state,
                "incarnation": self.incarnation, "meta": dict(self.meta)}


def ring_member(m: Member) -> RingMember:
    cap = m.meta.get("capacity", 1.0)
    zone = m.meta.get("zone")
    return RingMember(m.name, m.address,
                      capacity=float(cap) if isinstance(cap, int | float) else 1.0,
                      zone=str(zone) if zone else None)


class Membership:
    """Members, the ring over them, and which of them are up."""

    def __init__(self, me: Member, *, vnodes_per_capacity: int, unreachable_s: float) -> None:
        self.me = me
        self.vnodes_per_capacity = vnodes_per_capacity
        self.unreachable_s = unreachable_s
        self.members: dict[str, Member] = {me.name: me}
        self._by_address: dict[str, str] = {me.address: me.name}
        self._unreachable_until: dict[str, float] = {}
        self.ring = Ring.build([ring_member(me)], vnodes_per_capacity=vnodes_per_capacity)
        self._placed: tuple[Any, ...] = ()
        self.version = 0
        self._up: frozenset[str] | None = None
        """`up()` while no member is marked unreachable; reset by every change."""

    # -- queries -------------------------------------------------------------------
    def address_of(self, name: str) -> str | None:
        m = self.members.get(name)
        return m.address if m is not None else None

    def name_at(self, address: str) -> str | None:
        return self._by_address.get(address)

    def is_up(self, name: str, now: float) -> bool:
        m = self.members.get(name)
        if m is None or m.state not in ("alive", "suspect"):
            return False
        until = self._unreachable_until.get(name)
        return until is None or now >= until

    def up(self, now: float) -> frozenset[str]:
        if not self._unreachable_until:
            # Nothing time-dependent: the answer changes only with the members.
            up = self._up
            if up is None:
                up = self._up = frozenset(n for n, m in self.members.items()
                                          if m.state in ("alive", "suspect"))
            return up
        return frozenset(n for n in self.members if self.is_up(n, now))

    # -- changes -------------------------------------------------------------------
    def upsert(self, m: Member) -> bool:
        """Add or update a member; True when the ring changed."""
        old = self.members.get(m.name)
        if old is not None and old.address != m.address:
            self._by_address.pop(old.address, None)
        self._up = None
        self.members[m.name] = m
        self._by_address[m.address] = m.name
        return self._rebuild()

    def set_state(self, name: str, state: str, incarnation: int | None = None) -> bool:
        m = self.members.get(name)
        if m is None or name == self.me.name:
            return False
        self._up = None
        self.members[name] = replace(m, state=state,
                                     incarnation=m.incarnation if incarnation is None
                                     else incarnation)
        if state == "alive":
            self._unreachable_until.pop(name, None)
        return self._rebuild()

    def remove(self, name: str) -> bool:
        self._up = None
        m = self.members.pop(name, None)
        if m is None:
            return False
        self._by_address.pop(m.address, None)
        self._unreachable_until.pop(name, None)
        return self._rebuild()

    def mark_unreachable(self, name: str, now: float) -> None:
        if name != self.me.name and name in self.members:
            self._unreachable_until[name] = now + self.unreachable_s

    def mark_reachable(self, name: str) -> None:
        self._unreachable_until.pop(name, None)

    def merge_wire(self, entries: Iterable[Any]) -> bool:
        """Learn members from a MEMBERS list; malformed entries are skipped."""
        changed = False
        for e in entries:
            if (type(e) is list and len(e) == 3 and type(e[0]) is str and type(e[1]) is str
                    and type(e[2]) is dict and e[0] not in self.members):
                try:
                    changed |= self.upsert(Member(e[0], e[1], meta=_clean_meta(e[2])))
                except ValueError:
                    continue
        return changed

    def _rebuild(self) -> bool:
        placed = sorted((ring_member(m) for m in self.members.values()
                         if m.state != "left" and not m.meta.get("leaving")),
                        key=lambda rm: rm.name)
        key = tuple(placed)
        if key == self._placed:
            return False  # a state change that moves nothing (suspect, dead, alive)
        self._placed = key
        ring = Ring.build(placed, vnodes_per_capacity=self.vnodes_per_capacity)
        if ring.digest == self.ring.digest:
            return False
        self.ring = ring
        self.version += 1
        return True


def _clean_meta(meta: dict[Any, Any]) -> dict[str, MetaValue]:
    out: dict[str, MetaValue] = {}
    for k, v in list(meta.items())[:16]:
        if type(k) is str and len(k) <= 64 and type(v) in (str, int, float) and (
                type(v) is not str or len(v) <= 256):
            out[k] = v
    return out
