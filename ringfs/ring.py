"""The immutable consistent-hash ring: which nodes hold which keys.

Theory of operation
-------------------
Every member owns `round(capacity * vnodes_per_capacity)` (at least one) virtual
nodes. Virtual node `i` of member `name` sits at the token
`mmh3_128(f"{name}#{i}")`, the same unsigned 128-bit hash that places keys
(`ringfs.hashing.key_token`), so placement needs no coordination: every node that
agrees on the member set computes the same ring. Virtual nodes are sorted by
(token, name, index); equal tokens are thus ordered by name.

A key with token `t` belongs to the first virtual node whose token is `>= t`,
wrapping past the top of the token space. That virtual node owns the range
(previous token, its token]. Its *preference list* of length `n` is built by
walking clockwise from it, once around the ring, in two passes:

1. take each node met whose zone is not yet represented in the list;
2. if the list is still short, take the remaining nodes not yet in it in the
   order they were first met on the same walk.

A member without a zone is a zone of its own, so on a ring without zones the
rule reduces to "the first `n` distinct nodes clockwise". The list of length `n`
is always a prefix of the list of length `n + 1`; its first entry is the owner of
the key's virtual node.

The annotated preference list (`apl`) is the pure form of riak_core's
`get_apl_ann`: given the set of nodes believed up, the up members of the
preference list are primaries, and each down primary, in list order, is paired
with the next up node of the *extended* preference list (the same walk continued
beyond `n`) as a fallback holding a hint for it (sloppy quorum).

The ring is pure: no I/O, no clock, no randomness. It is immutable, so the
preference list of each virtual-node position is computed once per `n` and
cached; a lookup is then one hash, one bisection and one list index.
"""

from __future__ import annotations

import hashlib
import math
import struct
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType
from typing import Literal, NamedTuple, TypeVar

import mmh3

from ringfs.hashing import TOKEN_SPACE, key_token

__all__ = [
    "DEFAULT_VNODES_PER_CAPACITY",
    "MAX_CAPACITY",
    "MAX_NAME_BYTES",
    "MAX_VNODES_PER_CAPACITY",
    "MAX_VNODES_TOTAL",
    "MovedRange",
    "Replica",
    "Ring",
    "RingMember",
    "moved_ranges",
    "vnode_token",
]

DEFAULT_VNODES_PER_CAPACITY = 1024
"""Virtual nodes per unit of capacity. Measured with `python -m bench.ring_balance`
(docs/ring.md): at 8 nodes this is the smallest power of two that keeps every
node's share of the token space within 10% of fair for practically any set of
names (2 of 1000 random name sets exceed it, worst 11.1%; about 1 in 8 do at 512),
at the cost of about 1 MiB and 10 ms to build an 8-node ring; lookups do not slow down."""

MAX_NAME_BYTES = 255
"""Upper bound on the UTF-8 length of a member name, address or zone."""

MAX_CAPACITY = 1000.0
"""Upper bound on a member's capacity; capacities are relative weights, so a
ratio of 1000 between the smallest and the largest node is already extreme."""

MAX_VNODES_PER_CAPACITY = 65536
"""Upper bound on `vnodes_per_capacity`, far above any useful value."""

MAX_VNODES_TOTAL = 1 << 21
"""Upper bound on the virtual nodes of one ring (about 200 MiB of tokens), so a
mistaken membership view cannot exhaust memory."""

_MAX_CACHED_N = 8
"""Distinct replica counts `n` whose per-position preference lists are cached.
A deployment uses one or two; further values are served uncached."""

_DIGEST_DOMAIN = b"ringfs.ring.v1"


def _check_label(what: str, value: object, *, allow_inner_space: bool) -> str:
    """Validate a name/address/zone string and return it."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if not value.isprintable():
        raise ValueError(f"{what} must be printable: {value!r}")
    if value != value.strip():
        raise ValueError(f"{what} must not start or end with whitespace: {value!r}")
    if not allow_inner_space and any(c.isspace() for c in value):
        raise ValueError(f"{what} must not contain whitespace: {value!r}")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"{what} must be at most {MAX_NAME_BYTES} UTF-8 bytes")
    return value


@dataclass(frozen=True, slots=True)
class RingMember:
    """One physical node as the ring sees it.

    `capacity` is a relative weight: a member of capacity 2 gets twice the virtual
    nodes, hence about twice the keys, of a member of capacity 1. `zone` names a
    failure domain (rack, availability zone); replicas are spread over distinct
    zones first. Validated on construction because members arrive from gossip.
    """

    name: str
    """Unique node identity; it alone decides where the node's virtual nodes sit."""
    address: str
    """Where peers reach the node (for example "10.0.0.5:7001"); not used for placement."""
    capacity: float = 1.0
    """Relative weight, 0 < capacity <= MAX_CAPACITY."""
    zone: str | None = None
    """Failure domain, or None for a node that is a zone of its own."""

    def __post_init__(self) -> None:
        _check_label("member name", self.name, allow_inner_space=True)
        _check_label("member address", self.address, allow_inner_space=False)
        if self.zone is not None:
            _check_label("member zone", self.zone, allow_inner_space=True)
        capacity: object = self.capacity
        if isinstance(capacity, bool) or not isinstance(capacity, int | float):
            raise TypeError(f"capacity must be a number, not {type(capacity).__name__}")
        if not math.isfinite(capacity) or not 0 < capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in (0, {MAX_CAPACITY}], got {capacity!r}")

    def vnode_count(self, vnodes_per_capacity: int) -> int:
        """How many virtual nodes this member gets: round(capacity * vpc), at least 1."""
        return max(1, round(self.capacity * vnodes_per_capacity))


class Replica(NamedTuple):
    """One entry of an annotated preference list."""

    node: str
    """The node to send the request to."""
    role: Literal["primary", "fallback"]
    """"primary" if the node is in the key's preference list, else "fallback"."""
    hint_for: str | None
    """For a fallback, the down primary whose copy it keeps as a hint; else None."""


class MovedRange(NamedTuple):
    """A token range (start, end] whose replica set differs between two rings."""

    start: int
    end: int
    old: tuple[str, ...]
    """Preference list of the range in the old ring."""
    new: tuple[str, ...]
    """Preference list of the range in the new ring."""

    @property
    def gained(self) -> frozenset[str]:
        """Nodes that must receive the range (in new, not in old)."""
        return frozenset(self.new).difference(self.old)

    @property
    def lost(self) -> frozenset[str]:
        """Nodes that may drop the range once handoff is done (in old, not in new)."""
        return frozenset(self.old).difference(self.new)


def vnode_token(name: str, index: int) -> int:
    """The token of virtual node `index` of member `name`."""
    return key_token(f"{name}#{index}".encode())


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, not {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return n


def _check_token(token: object) -> int:
    if isinstance(token, bool) or not isinstance(token, int):
        raise TypeError(f"token must be an int, not {type(token).__name__}")
    if not 0 <= token < TOKEN_SPACE:
        raise ValueError("token must be in [0, 2**128)")
    return token


_T = TypeVar("_T")


def _coalesce(pieces: Sequence[tuple[int, int, _T]]) -> list[tuple[int, int, _T]]:
    """Merge adjacent ranges with equal payloads, including across the wrap point.

    `pieces` are selected cells of one partition of the ring, in ring order (the
    cell that wraps first). The result may contain one (t, t] range: the whole ring.
    """
    out: list[tuple[int, int, _T]] = []
    for start, end, payload in pieces:
        if out and out[-1][1] == start and out[-1][2] == payload:
            out[-1] = (out[-1][0], end, payload)
        else:
            out.append((start, end, payload))
    if len(out) > 1 and out[-1][1] == out[0][0] and out[-1][2] == out[0][2]:
        last = out.pop()
        out[0] = (last[0], out[0][1], last[2])
        # Keep ring order: the wrapping range (now first) ends at the lowest token.
    return out


class Ring:
    """An immutable consistent-hash ring built from a membership view.

    Two rings are equal, and hash equally, when their `digest` is equal: same
    members (name, address, capacity, zone) and same virtual nodes.
    """

    __slots__ = (
        "_apl_cache",
        "_digest",
        "_members",
        "_names",
        "_nmembers",
        "_nvnodes",
        "_nzones",
        "_owners",
        "_pl_cache",
        "_run_starts",
        "_tokens",
        "_vnodes_per_capacity",
        "_zone_ids",
    )

    _tokens: list[int]
    _owners: list[int]
    _names: tuple[str, ...]
    _zone_ids: tuple[int, ...]
    _members: Mapping[str, RingMember]
    _nmembers: int
    _nzones: int
    _nvnodes: int
    _run_starts: tuple[int, ...]
    _vnodes_per_capacity: int | None
    _digest: bytes
    _pl_cache: dict[int, list[tuple[str, ...] | None]]
    _apl_cache: dict[int, list[tuple[Replica, ...] | None]]

    def __init__(self) -> None:
        raise TypeError("use Ring.build(members) or Ring.from_tokens(members, tokens)")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Ring is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Ring is immutable")

    # -- construction -------------------------------------------------------------

    @classmethod
    def build(
        cls,
        members: Iterable[RingMember],
        vnodes_per_capacity: int = DEFAULT_VNODES_PER_CAPACITY,
    ) -> Ring:
        """Place every member's virtual nodes by hashing f"{name}#{i}".

        Raises ValueError on duplicate names or a ring beyond MAX_VNODES_TOTAL.
        """
        vpc = vnodes_per_capacity
        if isinstance(vpc, bool) or not isinstance(vpc, int):
            raise TypeError("vnodes_per_capacity must be an int")
        if not 1 <= vpc <= MAX_VNODES_PER_CAPACITY:
            raise ValueError(f"vnodes_per_capacity must be in [1, {MAX_VNODES_PER_CAPACITY}]")
        member_list = cls._check_members(members)
        total = sum(m.vnode_count(vpc) for m in member_list)
        if total > MAX_VNODES_TOTAL:
            raise ValueError(f"ring would have {total} virtual nodes (max {MAX_VNODES_TOTAL})")
        hash128 = mmh3.hash128
        vnodes = [
            (hash128(f"{m.name}#{i}".encode(), 0, True, signed=False), m.name, i)
            for m in member_list
            for i in range(m.vnode_count(vpc))
        ]
        return cls._assemble(member_list, vnodes, vpc)

    @classmethod
    def from_tokens(
        cls, members: Iterable[RingMember], tokens: Mapping[str, Iterable[int]]
    ) -> Ring:
        """A ring with explicitly assigned tokens (every member needs at least one).

        For operators who pin tokens and for tests that need exact layouts.
        """
        member_list = cls._check_members(members)
        names = {m.name for m in member_list}
        unknown = set(tokens) - names
        if unknown:
            raise ValueError(f"tokens given for non-members: {sorted(unknown)}")
        vnodes: list[tuple[int, str, int]] = []
        for m in member_list:
            mine = [_check_token(t) for t in tokens.get(m.name, ())]
            if not mine:
                raise ValueError(f"member {m.name!r} has no tokens")
            if len(set(mine)) != len(mine):
                raise ValueError(f"member {m.name!r} has a repeated token")
            vnodes.extend((t, m.name, i) for i, t in enumerate(mine))
        if len(vnodes) > MAX_VNODES_TOTAL:
            raise ValueError(f"ring would have {len(vnodes)} virtual nodes")
        return cls._assemble(member_list, vnodes, None)

    @staticmethod
    def _check_members(members: Iterable[RingMember]) -> list[RingMember]:
        member_list = list(members)
        seen: set[str] = set()
        for m in member_list:
            if not isinstance(m, RingMember):
                raise TypeError(f"members must be RingMember, not {type(m).__name__}")
            if m.name in seen:
                raise ValueError(f"duplicate member name {m.name!r}")
            seen.add(m.name)
        member_list.sort(key=lambda m: m.name)
        return member_list

    @classmethod
    def _assemble(
        cls,
        member_list: list[RingMember],
        vnodes: list[tuple[int, str, int]],
        vpc: int | None,
    ) -> Ring:
        vnodes.sort()
        index = {m.name: i for i, m in enumerate(member_list)}
        zone_index: dict[str, int] = {}
        zone_ids: list[int] = []
        for m in member_list:
            # A member without a zone is a zone of its own.
            key = f"z:{m.zone}" if m.zone is not None else f"n:{m.name}"
            zone_ids.append(zone_index.setdefault(key, len(zone_index)))

        h = hashlib.blake2b(_DIGEST_DOMAIN, digest_size=16)
        for m in member_list:
            for label in (m.name, m.address, m.zone):
                raw = b"\xff" if label is None else label.encode()
                h.update(struct.pack(">H", len(raw)) + raw)
            h.update(struct.pack(">d", float(m.capacity)))
        h.update(struct.pack(">I", len(vnodes)))
        for t, name, _ in vnodes:
            h.update(t.to_bytes(16, "big") + struct.pack(">I", index[name]))

        fields: dict[str, object] = {
            "_members": MappingProxyType({m.name: m for m in member_list}),
            "_names": tuple(m.name for m in member_list),
            "_zone_ids": tuple(zone_ids),
            "_nmembers": len(member_list),
            "_nzones": len(zone_index),
            "_tokens": [t for t, _, _ in vnodes],
            "_owners": [index[name] for _, name, _ in vnodes],
            "_nvnodes": len(vnodes),
            # Positions that begin a run of equal tokens; only these own a range,
            # since bisect_left always lands on the first vnode of a run.
            "_run_starts": tuple(
                p for p in range(len(vnodes)) if p == 0 or vnodes[p][0] != vnodes[p - 1][0]
            ),
            "_vnodes_per_capacity": vpc,
            "_digest": h.digest(),
            # Caches per n: mutable, but they only memoize pure functions of the ring.
            "_pl_cache": {},
            "_apl_cache": {},
        }
        self = object.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        return self

    # -- identity and inspection ----------------------------------------------------

    @property
    def digest(self) -> bytes:
        """16-byte stable hash of the members and virtual nodes; equal rings, equal digests."""
        return self._digest

    @property
    def members(self) -> Mapping[str, RingMember]:
        """Members by name, in name order (read-only)."""
        return self._members

    @property
    def nodes(self) -> tuple[str, ...]:
        """Member names in name order."""
        return self._names

    @property
    def vnodes_per_capacity(self) -> int | None:
        """The parameter of `build`, or None for a ring made by `from_tokens`."""
        return self._vnodes_per_capacity

    @property
    def vnodes(self) -> tuple[tuple[int, str], ...]:
        """Every virtual node as (token, owner), in ring order."""
        names = self._names
        return tuple(zip(self._tokens, (names[o] for o in self._owners), strict=True))

    def __len__(self) -> int:
        return self._nmembers

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._digest == other._digest

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        return (
            f"<Ring members={self._nmembers} vnodes={self._nvnodes} "
            f"digest={self._digest.hex()[:12]}>"
        )

    # -- lookups ------------------------------------------------------------------

    def preference_list(self, key: bytes, n: int) -> tuple[str, ...]:
        """The `n` distinct nodes (fewer if the ring is smaller) that replicate `key`.

        An empty ring returns (). This is the hot path: after the first lookup of a
        virtual-node position for a given `n`, it is one hash, one bisect, one index.
        """
        cache = self._pl_cache.get(n)
        if cache is None:
            return self._lookup(key_token(key), n)[1]
        # Inlined key_token(key): this line runs for every request.
        pos = bisect_left(self._tokens, mmh3.hash128(key, 0, True, signed=False))
        if pos == self._nvnodes:
            pos = 0
        pl = cache[pos]
        if pl is None:
            pl = cache[pos] = self._walk(pos, n)
        return pl

    def preference_list_for_token(self, token: int, n: int) -> tuple[str, ...]:
        """`preference_list` for a token instead of a key."""
        return self._lookup(_check_token(token), n)[1]

    owners = preference_list_for_token

    def compute_preference_list(self, key: bytes, n: int) -> tuple[str, ...]:
        """`preference_list` computed afresh, bypassing the cache (for tests and benchmarks)."""
        _check_n(n)
        if not self._nvnodes:
            return ()
        return self._walk(self._position(key_token(key)), n)

    def warm(self, n: int) -> None:
        """Precompute the preference list of every position for `n` (optional)."""
        _check_n(n)
        cache = self._caches(n)[0]
        if cache is None:
            return
        for pos in self._run_starts:
            if cache[pos] is None:
                cache[pos] = self._walk(pos, n)

    def apl(self, key: bytes, n: int, up: Collection[str]) -> tuple[Replica, ...]:
        """The annotated preference list of `key` given the nodes believed `up`.

        Up primaries come first, in preference-list order; then, for each down
        primary in preference-list order, the next up node of the extended
        preference list, as a fallback with `hint_for` set to that primary. At most
        `n` entries; fewer when too few nodes are up. Nodes in `up` that are not
        members are ignored. The all-up answer is cached per position.
        """
        return self._apl(key_token(key), n, up)

    def apl_for_token(self, token: int, n: int, up: Collection[str]) -> tuple[Replica, ...]:
        """`apl` for a token instead of a key."""
        return self._apl(_check_token(token), n, up)

    def _apl(self, token: int, n: int, up: Collection[str]) -> tuple[Replica, ...]:
        if isinstance(up, str):
            raise TypeError("up must be a collection of node names, not a str")
        pos, pl = self._lookup(token, n)
        all_up = up.issuperset(pl) if isinstance(up, (set, frozenset)) else all(p in up for p in pl)
        if all_up:
            cache = self._apl_cache.get(n)
            if cache is None:
                return tuple(Replica(p, "primary", None) for p in pl)
            replicas = cache[pos]
            if replicas is None:
                replicas = cache[pos] = tuple(Replica(p, "primary", None) for p in pl)
            return replicas
        primaries = [Replica(p, "primary", None) for p in pl if p in up]
        down = [p for p in pl if p not in up]
        fallbacks: list[Replica] = []
        names = self._names
        # The extended preference list beyond the first len(pl) entries.
        for idx in islice(self._order(pos), len(pl), None):
            name = names[idx]
            if name in up:
                fallbacks.append(Replica(name, "fallback", down[len(fallbacks)]))
                if len(fallbacks) == len(down):
                    break
        return (*primaries, *fallbacks)

    # -- ranges -----------------------------------------------------------------------

    def ranges(self) -> tuple[tuple[int, int, str], ...]:
        """Every virtual node's range as (start, end, owner): tokens in (start, end].

        In ring order, the wrapping range first. A one-vnode ring has one (t, t]
        range, the whole ring. An empty ring has none.
        """
        runs = self._run_starts
        tokens, owners, names = self._tokens, self._owners, self._names
        return tuple((tokens[runs[i - 1]], tokens[p], names[owners[p]]) for i, p in enumerate(runs))

    def replica_ranges(self, node: str, n: int) -> tuple[tuple[int, int], ...]:
        """The (start, end] ranges whose preference list of length `n` includes `node`.

        Adjacent ranges are merged (also across the wrap point); a node that
        replicates everything gets one (t, t] range. () if `node` is not a member.
        """
        _check_n(n)
        if node not in self._members:
            return ()
        tokens, runs = self._tokens, self._run_starts
        pieces = [
            (tokens[runs[i - 1]], tokens[p], True)
            for i, p in enumerate(runs)
            if node in self.preference_list_for_token(tokens[p], n)
        ]
        return tuple((s, e) for s, e, _ in _coalesce(pieces))

    def shares(self) -> dict[str, float]:
        """Each member's fraction of the token space as primary owner (sums to 1)."""
        width = dict.fromkeys(self._names, 0)
        for start, end, owner in self.ranges():
            width[owner] += (end - start) % TOKEN_SPACE or TOKEN_SPACE
        return {name: w / TOKEN_SPACE for name, w in width.items()}

    # -- internals ----------------------------------------------------------------

    def _position(self, token: int) -> int:
        pos = bisect_left(self._tokens, token)
        return 0 if pos == self._nvnodes else pos

    def _caches(
        self, n: int
    ) -> tuple[list[tuple[str, ...] | None] | None, list[tuple[Replica, ...] | None] | None]:
        """The per-position caches for `n`, created on first use; None when not cached."""
        cache = self._pl_cache.get(n)
        if cache is not None:
            return cache, self._apl_cache[n]
        _check_n(n)
        if not self._nvnodes or len(self._pl_cache) >= _MAX_CACHED_N:
            return None, None
        # Every n beyond the member count gives the same lists: share one cache.
        clamped = min(n, self._nmembers)
        cache = self._pl_cache.get(clamped)
        if cache is None:
            cache = self._pl_cache[clamped] = [None] * self._nvnodes
            self._apl_cache[clamped] = [None] * self._nvnodes
        self._pl_cache[n] = cache
        self._apl_cache[n] = self._apl_cache[clamped]
        return cache, self._apl_cache[n]

    def _lookup(self, token: int, n: int) -> tuple[int, tuple[str, ...]]:
        """(position of the vnode owning `token`, preference list), through the cache."""
        cache = self._pl_cache.get(n)
        if cache is None:
            cache = self._caches(n)[0]
            if not self._nvnodes:
                return 0, ()
        pos = bisect_left(self._tokens, token)
        if pos == self._nvnodes:
            pos = 0
        if cache is None:
            return pos, self._walk(pos, n)
        pl = cache[pos]
        if pl is None:
            pl = cache[pos] = self._walk(pos, n)
        return pos, pl

    def _walk(self, pos: int, n: int) -> tuple[str, ...]:
        names = self._names
        return tuple(names[i] for i in islice(self._order(pos), n))

    def _order(self, pos: int) -> Iterator[int]:
        """Member indices in preference order from vnode `pos`: the two-pass zone rule.

        Lazy, so that short lists and fallback searches stop early.
        """
        owners, zone_ids = self._owners, self._zone_ids
        nv, nzones, nmembers = self._nvnodes, self._nzones, self._nmembers
        seen: set[int] = set()
        used_zones: set[int] = set()
        skipped: list[int] = []
        step = 0
        # Pass 1: a node from each zone not yet used. Ends once every zone is used,
        # which happens within one turn since every member has a vnode.
        while step < nv and len(used_zones) < nzones:
            owner = owners[(pos + step) % nv]
            step += 1
            if owner in seen:
                continue
            seen.add(owner)
            zone = zone_ids[owner]
            if zone in used_zones:
                skipped.append(owner)
            else:
                used_zones.add(zone)
                yield owner
        # Pass 2: the other nodes in the order the walk first meets them.
        yield from skipped
        while step < nv and len(seen) < nmembers:
            owner = owners[(pos + step) % nv]
            step += 1
            if owner not in seen:
                seen.add(owner)
                yield owner


def moved_ranges(old: Ring, new: Ring, n: int) -> tuple[MovedRange, ...]:
    """The ranges whose set of `n` replicas differs between `old` and `new`.

    Ranges are the cells between the union of both rings' tokens, with adjacent
    cells of identical (old, new) lists merged. A change of order alone moves no
    data and is not reported. For handoff: each range's `gained` nodes must
    receive it from its `old` holders.
    """
    _check_n(n)
    bounds = sorted({t for t, _ in old.vnodes} | {t for t, _ in new.vnodes})
    pieces: list[tuple[int, int, tuple[tuple[str, ...], tuple[str, ...]]]] = []
    for i, end in enumerate(bounds):
        before = old.preference_list_for_token(end, n)
        after = new.preference_list_for_token(end, n)
        if set(before) != set(after):
            pieces.append((bounds[i - 1], end, (before, after)))
    return tuple(MovedRange(s, e, b, a) for s, e, (b, a) in _coalesce(pieces))
