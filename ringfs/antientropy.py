"""Merkle-tree anti-entropy: the hash trees replicas compare to find what differs.

Theory of operation
-------------------
A node keeps one small hash tree per *arc* of the ring it replicates (an arc is
one virtual node's token range, (start, end], from `Ring.ranges`). An arc's tree
has BUCKETS leaves; a key falls in leaf `token % BUCKETS` of the arc holding its
token. A leaf's hash is the sum, modulo 2**64, of the *item hashes* of its keys,
where an item hash covers the key and the exact stored replica state (its encoded
causal version set, values included; for a content-addressed key, the key and the
state's length: see CONTENT_ADDRESSED_PREFIX). A sum can be updated in O(1) when one key
changes, which is what lets every write update the tree incrementally: the old
item hash is subtracted, the new one added. Nothing is ever rebuilt periodically;
an arc is scanned from the store only when it first appears (node start, or a
ring change that created new arc boundaries), once. An arc this node replicates
alone (every arc of a one-node ring) has no tree to compare with: its tree is not
kept up, and is scanned once the arc gains another replica.

Above the leaves the tree is an ordinary Merkle tree, computed on demand from the
leaf sums: an arc's hash covers its BUCKETS leaf hashes; for a peer P, the arcs
whose preference list holds both this node and P, in ring order, form P's *shared
list*; groups of GROUP_ARCS consecutive shared arcs have a group hash, and the
group hashes a root. Two nodes with the same ring compute the same shared list,
so an arc or a group is named by its position in it.

An exchange (`Exchange`, driven by the node) descends only where hashes differ:
root, then the group hashes, then the arc hashes of differing groups, then the leaf
hashes of differing arcs, then the (key, item hash) lists of differing leaves; the
keys whose item hashes differ (or that one side lacks) are then synchronised both
ways and each side keeps the causal merge. When nothing differs an exchange costs
one root hash (plus the ring digest) per peer.

Keys whose first byte is 0 and whose second is in LOCAL_PREFIXES are a node's own
bookkeeping (hints, local metadata): they are never hashed or compared.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import mmh3

from ringfs.hashing import key_token
from ringfs.ring import Ring

BUCKETS = 64
"""Leaves per arc: with 1,024 vnodes per node and a million keys on 3 nodes, about
five keys per leaf, so a difference costs a short key list, not a whole arc's."""
GROUP_ARCS = 64
"""Arcs under one group hash: a 3-node ring's 3,072 arcs make 48 groups."""
MASK64 = (1 << 64) - 1
_LEAF_MASK = BUCKETS - 1  # token % BUCKETS as a bit mask: BUCKETS is a power of two
assert BUCKETS & _LEAF_MASK == 0
LOCAL_PREFIXES = (b"\x00h", b"\x00l")
"""Key prefixes that are a node's own bookkeeping, never replicated or compared."""
_HASH_SEED = 0x52494E47  # fixed: every node must compute the same item hashes


def is_local_key(key: bytes) -> bool:
    """Whether a stored key is node-local bookkeeping rather than a replicated key."""
    return key[:2] in LOCAL_PREFIXES


CONTENT_ADDRESSED_PREFIX = b"\x00c"
"""Keys that name their own content (file chunks: this prefix + the SHA-256 of the
bytes). Every replica verifies such a state against its key before storing it and
all copies are the same one-dot version set, so the key and the encoded state's
length identify the state: their item hash does not read the (megabyte) state."""


_PACK_KEY_LEN = struct.Struct(">H").pack
_PACK_CA_HEAD = struct.Struct(">HQ").pack
_hash128 = mmh3.hash128


def item_hash(key: bytes, meta: bytes) -> int:
    """The 64-bit hash of one stored replica state (key plus its encoded versions)."""
    if key[:2] == CONTENT_ADDRESSED_PREFIX:
        data = _PACK_CA_HEAD(len(key), len(meta)) + key
    else:
        data = _PACK_KEY_LEN(len(key)) + key + meta
    h: int = _hash128(data, _HASH_SEED, False, False)
    return h & MASK64


def _digest(values: Iterable[int]) -> int:
    data = array("Q", values)
    h: int = mmh3.hash128(data.tobytes(), _HASH_SEED, signed=False)
    return h & MASK64


class ArcTree:
    """The leaf sums of one arc, updated in place; its hash is cached until a change."""

    __slots__ = ("_hash", "built", "end", "leaves", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.leaves = array("Q", bytes(8 * BUCKETS))
        self.built = False
        self._hash: int | None = None

    def add(self, token: int, h: int) -> None:
        b = token & _LEAF_MASK
        self.leaves[b] = (self.leaves[b] + h) & MASK64
        self._hash = None

    @property
    def hash(self) -> int:
        if self._hash is None:
            self._hash = _digest(self.leaves)
        return self._hash


Scan = Callable[[int, int], Iterator[tuple[bytes, bytes]]]
"""scan(start, end) -> (key, meta) of every stored key with token in (start, end]."""


@dataclass
class TreeStats:
    arcs: int = 0
    unbuilt: int = 0
    keys_scanned: int = 0


class HashTrees:
    """Every arc tree of one node, following its ring.

    `note_write` keeps the trees current on every local write; `set_ring` follows
    ring changes (keeping the trees of arcs whose bounds did not move); `build_step`
    scans new arcs a bounded number of keys at a time.
    """

    def __init__(self, me: str, n: int) -> None:
        self.me = me
        self.n = n
        self.ring: Ring | None = None
        self._ends: list[int] = []
        self._arc_at: list[ArcTree | None] = []
        self._slot_shift = 128
        self._slot_first = array("I", [0, 0])
        """Where to look up a token's arc: slot `token >> _slot_shift` holds the ends
        `_ends[_slot_first[slot]:_slot_first[slot + 1]]` (see _index_slots)."""
        self._lists: list[tuple[str, ...]] = []
        self._trees: dict[tuple[int, int], ArcTree] = {}
        self._unbuilt: list[ArcTree] = []
        self._shared: dict[str, list[ArcTree]] = {}
        self._alone = False
        """Whether this node is every arc's only replica (a ring of one): then no tree
        is compared with anyone's and note_write has nothing to do."""
        self.keys_scanned = 0

    # -- following the ring ----------------------------------------------------------
    def set_ring(self, ring: Ring) -> None:
        """Track the arcs `ring` gives this node; keep trees whose bounds are unchanged."""
        if self.ring is not None and ring.digest == self.ring.digest:
            return
        self.ring = ring
        old = self._trees
        self._trees = {}
        self._ends = []
        self._arc_at = []
        self._lists = []
        for start, end, _owner in ring.ranges():
            pl = ring.preference_list_for_token(end, self.n)
            self._ends.append(end)
            self._lists.append(pl)
            tree: ArcTree | None = None
            if self.me in pl:
                tree = old.get((start, end)) or ArcTree(start, end)
                if len(pl) == 1:
                    # No other replica to compare it with: the tree is not kept up
                    # (writes skip it), and is built afresh once the arc gains one.
                    tree.built = False
                self._trees[(start, end)] = tree
            self._arc_at.append(tree)
        self._unbuilt = [t for t, pl in zip(self._arc_at, self._lists, strict=True)
                         if t is not None and not t.built and len(pl) > 1]
        self._alone = bool(self._lists) and all(pl == (self.me,) for pl in self._lists)
        self._shared = {}
        self._index_slots()

    def _index_slots(self) -> None:
        """Split the token space into at least twice as many equal slots as there are
        arcs, and note per slot which arc ends fall in it: a token's arc is then found
        among its slot's ends, nearly always none or one, rather than by a binary
        search over all of them (a dozen comparisons of 128-bit integers on a
        3-node ring). O(arcs + slots)."""
        ends = self._ends
        bits = min(16, max(1, (2 * len(ends)).bit_length()))
        shift = 128 - bits
        counts = [0] * ((1 << bits) + 1)
        for end in ends:
            counts[(end >> shift) + 1] += 1
        self._slot_shift = shift
        self._slot_first = array("I", accumulate(counts))

    def shared(self, peer: str) -> list[ArcTree]:
        """The arcs both this node and `peer` replicate, in ring order."""
        got = self._shared.get(peer)
        if got is None:
            got = [t for t, pl in zip(self._arc_at, self._lists, strict=True)
                   if t is not None and peer in pl]
            self._shared[peer] = got
        return got

    def peers(self) -> list[str]:
        """Every other node sharing at least one arc with this one, sorted."""
        out: set[str] = set()
        for t, pl in zip(self._arc_at, self._lists, strict=True):
            if t is not None:
                out.update(pl)
        out.discard(self.me)
        return sorted(out)

    def arcs(self) -> list[tuple[int, int]]:
        """(start, end] of every arc this node replicates, in ring order."""
        return [(t.start, t.end) for t in self._arc_at if t is not None]

    def owns_token(self, token: int) -> bool:
        """Whether this node is one of the N replicas of `token` under the current ring."""
        return self._arc_for(token) is not None

    def foreign_arcs(self) -> list[tuple[int, int]]:
        """(start, end] of every arc this node does not replicate, in ring order."""
        out = []
        prev = self._ends[-1] if self._ends else 0
        for end, t in zip(self._ends, self._arc_at, strict=True):
            if t is None:
                out.append((prev, end))
            prev = end
        return out

    def _arc_for(self, token: int) -> ArcTree | None:
        ends = self._ends
        if not ends:
            return None
        slot = token >> self._slot_shift
        first = self._slot_first
        i = bisect.bisect_left(ends, token, first[slot], first[slot + 1])
        return self._arc_at[0 if i == len(ends) else i]

    # -- keeping current -------------------------------------------------------------
    def note_write(self, key: bytes, old_meta: bytes | None, new_meta: bytes | None) -> bool:
        """A stored key changed from `old_meta` to `new_meta` (None: absent).

        Returns False when the key is a replicated key this node does not replicate
        under its ring (a copy to hand on), True otherwise."""
        if self._alone or key[:2] in LOCAL_PREFIXES:
            return True
        token = key_token(key)
        tree = self._arc_for(token)
        if tree is None:
            return not self._ends  # no ring yet: nothing is foreign
        if not tree.built:
            return True  # the arc's scan (still to come) will see the new state
        # One update of the key's leaf for both hashes: the old one out, the new one in.
        h = 0 if new_meta is None else item_hash(key, new_meta)
        if old_meta is not None:
            h -= item_hash(key, old_meta)
        leaves = tree.leaves
        b = token & _LEAF_MASK
        leaves[b] = (leaves[b] + h) & MASK64
        tree._hash = None
        return True

    def invalidate(self, key: bytes) -> None:
        """The store lost `key` without a write (a damaged record found and dropped):
        rescan its arc, since the old item hash to subtract is unknown."""
        tree = self._arc_for(key_token(key))
        if tree is not None and tree.built:
            tree.built = False
            self._unbuilt.append(tree)

    def build_step(self, scan: Scan, budget: int) -> int:
        """Scan unbuilt arcs, whole arcs at a time, until about `budget` keys were read."""
        done = 0
        while self._unbuilt and done < budget:
            tree = self._unbuilt.pop()
            if tree.built or self._trees.get((tree.start, tree.end)) is not tree:
                continue
            tree.leaves = array("Q", bytes(8 * BUCKETS))
            for key, meta in scan(tree.start, tree.end):
                if not is_local_key(key):
                    tree.add(key_token(key), item_hash(key, meta))
                done += 1
            tree.built = True
            tree._hash = None
        self.keys_scanned += done
        return done

    @property
    def unbuilt(self) -> int:
        return len(self._unbuilt)

    def ready_for(self, peer: str) -> bool:
        return all(t.built for t in self.shared(peer))

    def stats(self) -> TreeStats:
        return TreeStats(len(self._trees), len(self._unbuilt), self.keys_scanned)

    # -- the tree above the arcs -------------------------------------------------------
    def group_hashes(self, peer: str) -> list[int]:
        arcs = self.shared(peer)
        return [_digest(t.hash for t in arcs[i:i + GROUP_ARCS])
                for i in range(0, len(arcs), GROUP_ARCS)]

    def root(self, peer: str) -> int:
        return _digest(self.group_hashes(peer))

    def arc_hashes(self, peer: str, group: int) -> list[int]:
        arcs = self.shared(peer)
        return [t.hash for t in arcs[group * GROUP_ARCS:(group + 1) * GROUP_ARCS]]

    def leaf_hashes(self, peer: str, arc: int) -> list[int]:
        arcs = self.shared(peer)
        return list(arcs[arc].leaves) if 0 <= arc < len(arcs) else []

    def leaf_items(self, peer: str, leaves: Sequence[tuple[int, int]],
                   scan: Scan) -> dict[bytes, int]:
        """{key: item hash} of every key in the given (arc, leaf) positions."""
        out: dict[bytes, int] = {}
        for items in self.items_by_leaf(peer, leaves, scan).values():
            out.update(items)
        return out

    def items_by_leaf(self, peer: str, leaves: Sequence[tuple[int, int]],
                      scan: Scan) -> dict[tuple[int, int], dict[bytes, int]]:
        """Per (arc, leaf) position asked for, {key: item hash} of its keys."""
        arcs = self.shared(peer)
        want: dict[int, set[int]] = {}
        for a, b in leaves:
            if 0 <= a < len(arcs) and 0 <= b < BUCKETS:
                want.setdefault(a, set()).add(b)
        out: dict[tuple[int, int], dict[bytes, int]] = {
            (a, b): {} for a in want for b in want[a]}
        for a in sorted(want):
            tree, bs = arcs[a], want[a]
            for key, meta in scan(tree.start, tree.end):
                if is_local_key(key):
                    continue
                b = key_token(key) & _LEAF_MASK
                if b in bs:
                    out[(a, b)][key] = item_hash(key, meta)
        return out


def differing(mine: Sequence[int], theirs: Sequence[int]) -> list[int]:
    """Positions where two hash lists differ (a missing position differs)."""
    n = max(len(mine), len(theirs))
    return [i for i in range(n)
            if i >= len(mine) or i >= len(theirs) or mine[i] != theirs[i]]


def differing_keys(mine: dict[bytes, int], theirs: dict[bytes, int]) -> list[bytes]:
    """Keys whose item hashes differ or that only one side holds, sorted."""
    keys = set(mine) | set(theirs)
    return sorted(k for k in keys if mine.get(k) != theirs.get(k))


@dataclass
class Exchange:
    """One anti-entropy exchange this node started with `peer` (the initiator's state)."""

    id: int
    peer: str
    ring: bytes
    step: str = "root"
    deadline: float = 0.0
    keys: list[bytes] = field(default_factory=list)
    leaves: list[tuple[int, int]] = field(default_factory=list)
    asked: set[int] = field(default_factory=set)
    """Group or arc positions the current step asked for (replies about others are
    ignored)."""
    bytes_sent: int = 0
    bytes_received: int = 0


__all__ = ["BUCKETS", "GROUP_ARCS", "LOCAL_PREFIXES", "ArcTree", "Exchange", "HashTrees",
           "differing", "differing_keys", "is_local_key", "item_hash"]
