"""Convergence work a node does in the background: anti-entropy, ownership handoff, leave.

Theory of operation
-------------------
`Repairer` is a component of the sans-IO `Node` (it performs no I/O, is told the
time, and sends through the node). Its `tick` runs every TICK_S:

* Hash trees (ringfs/antientropy.py) follow the node's ring; arcs that are new to
  this node are scanned from the store a bounded number of keys per tick.
* Active anti-entropy: every `anti_entropy_interval_s` the node starts one exchange
  with the next peer (round robin) that replicates some of its arcs, is up, has the
  same ring and has built its trees. The exchange descends the trees (root, groups,
  arcs, leaves, key lists) and ends by synchronising the differing keys both ways:
  the initiator sends its states and asks for the peer's; each side stores the causal
  merge. Exchanges are rate limited: after one that moved B bytes the next may start
  only B / repair_bytes_per_s later; one that found a difference is followed at once
  (within that limit) by another with the same peer, so a large repair proceeds at the
  configured rate while an idle cluster sends one root hash per peer per round.
* Ownership handoff: a stored key whose preference list (under the current ring) no
  longer includes this node is sent to every one of its N owners and dropped locally
  only after each acknowledged it durably and the local state is still what was sent.
  A pass scans the arcs this node does not replicate, `ownership_settle_s` after the
  ring last changed; passes repeat until nothing foreign is left. The work is
  resumable by construction: it is derived from what the store holds and what the ring
  says, so after a crash of either side the next pass finds whatever is still to move.
  A node that copies a key it does not own is harmless: it hands the key on the same way.
* Leave: a leaving node advertises `leaving` in its gossip metadata, which takes it
  off every ring (its own included); all its keys become foreign and move to their new
  owners, its hints go to their owners or, for owners that are down, to another
  fallback. Once nothing is left it announces a graceful gossip leave and reports
  `departed`, and the runtime stops it.

Local-only keys (hints, other bookkeeping: `antientropy.is_local_key`) are never
compared, transferred as data, or counted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ringfs.antientropy import (
    BUCKETS,
    GROUP_ARCS,
    Exchange,
    HashTrees,
    differing,
    differing_keys,
    is_local_key,
)
from ringfs.dvv import DVVSet
from ringfs.errors import ErrorCode
from ringfs.hashing import key_token
from ringfs.peer import PeerMsg
from ringfs.wire import WireError

if TYPE_CHECKING:
    from ringfs.node import Node

log = logging.getLogger("ringfs.repair")

LEAVING_KEY = b"\x00lleaving"
"""Local key present while a requested leave is unfinished (it survives restarts)."""
TICK_S = 0.25
"""Period of the background step (tree building, exchange scheduling, handoff)."""
BUILD_KEYS_PER_TICK = 20_000
"""Keys scanned into hash trees per tick while arcs are still unbuilt."""
MAX_ARCS_PER_STEP = 256
"""Arcs whose leaves one exchange step asks for."""
MAX_LEAVES_PER_STEP = 4096
"""Leaves whose key lists one exchange step asks for."""
MAX_SYNC_BYTES = 4 << 20
"""Bytes of replica states one synchronising message carries at most."""
TRANSFER_MAX_INFLIGHT = 64
"""Keys being handed to new owners at once."""
TRANSFER_SCAN_PER_TICK = 2_000
"""Stored keys a handoff pass examines per tick."""
RETRY_PASS_S = 5.0
"""How long after an incomplete handoff pass the next one starts."""


@dataclass
class _Transfer:
    key: bytes
    state: DVVSet
    waiting: set[str]
    deadline: float
    size: int


class Repairer:
    """Anti-entropy, ownership handoff and leave for one node. See the module docstring."""

    def __init__(self, node: Node, now: float) -> None:
        self.node = node
        cfg = node.config
        self.trees = HashTrees(node.name, cfg.n_replicas)
        self.trees.set_ring(node.membership.ring)
        self.interval_s = cfg.anti_entropy_interval_s
        self.rate = float(cfg.repair_bytes_per_s)
        self.max_keys = cfg.anti_entropy_max_keys
        self._exchange: Exchange | None = None
        self._next_exchange = now + self.interval_s
        self._peer_rr = 0
        self._stick_to: str | None = None
        self.counters = node.counters
        # ownership handoff
        self._pass_due: float | None = now + cfg.ownership_settle_s
        self._scan_arcs: deque[tuple[int, int]] = deque()
        self._scan_iter: Iterator[bytes] | None = None
        self._queue: deque[bytes] = deque()
        self._queued: set[bytes] = set()
        self._transfers: dict[int, _Transfer] = {}
        self._pass_found = 0
        self._pass_blocked = 0
        self.moved_keys = 0
        self.moved_bytes = 0
        self.passes = 0
        """Completed handoff passes."""
        self._in_pass = False
        self._tokens = 0.0
        self._tokens_at = now
        # damage and the scrub
        self._damaged: frozenset[bytes] = frozenset()
        self.scrub_s = cfg.scrub_interval_s
        self._next_scrub = now + self.scrub_s
        self._scrub_pos = 0
        self._last_tick = now
        # leave
        self.leaving = False
        self.departed = False
        self.node._after(now + TICK_S, self.tick)

    # -- the periodic step -------------------------------------------------------------
    def follow_ring(self, now: float | None = None) -> None:
        """Bring the trees up to the node's current ring (before any write under it)."""
        ring = self.node.membership.ring
        if self.trees.ring is ring:
            return
        if now is None:
            now = self._last_tick
        old = self.trees.ring
        self.trees.set_ring(ring)
        if old is not None and old.digest != ring.digest:
            delay = 0.0 if self.leaving else self.node.config.ownership_settle_s
            self._pass_due = now + delay
            self._scan_arcs.clear()
            self._scan_iter = None
            if self._exchange is not None:
                self._end_exchange(now, "ring changed")

    def tick(self, now: float) -> None:
        node = self.node
        node._after(now + TICK_S, self.tick)
        self._last_tick = now
        self.follow_ring(now)
        steps = 0
        while self.scrub_s > 0 and now >= self._next_scrub and steps < 64:
            self._scrub_step(now)
            steps += 1
        self.note_damage()
        if self.trees.unbuilt:
            self.trees.build_step(self._scan_meta, BUILD_KEYS_PER_TICK)
        ex = self._exchange
        if ex is not None and now >= ex.deadline:
            self.counters["aae_timeouts"] += 1
            self._end_exchange(now, "timed out")
        if self._exchange is None and now >= self._next_exchange:
            self._start_exchange(now)
        self._handoff_step(now)

    def note_damage(self) -> None:
        """Keys the engine found damaged and dropped: their arcs' trees are rebuilt, so
        they show as missing and the next exchange fetches them from a replica.

        The lost copies held this node's counters for those keys, and a dot issued from
        a reset counter could repeat one already given to another write: the node takes
        a new actor id before it next coordinates a write of one of them. Node._read
        calls this whenever a read finds a key missing, so no write can clear the
        engine's damage list first; the tick catches what scans found."""
        damaged = self.node.engine.needs_repair()
        if damaged == self._damaged:
            return
        fresh = damaged - self._damaged
        for key in fresh:
            self.trees.invalidate(key)
            self.counters["damaged_keys_found"] += 1
        if fresh:
            log.warning("%d damaged record(s) found and dropped; repairing them from other "
                        "replicas", len(fresh))
            self.node.lost_counters(fresh)
        self._damaged = damaged

    def _scrub_step(self, now: float) -> None:
        """Read every record of the next arc this node replicates: a damaged one is
        found (its checksum fails) and reported by the engine even if no request reads
        it, and the next exchange repairs it. One arc per scrub interval."""
        self._next_scrub = max(self._next_scrub + self.scrub_s, now - TICK_S)
        arcs = self.trees.arcs()
        if not arcs:
            return
        self._scrub_pos = (self._scrub_pos + 1) % len(arcs)
        start, end = arcs[self._scrub_pos]
        for _ in self.node.engine.iter_range(start, end):
            pass
        self.counters["scrubbed_arcs"] += 1

    def _scan_meta(self, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
        for key, rec in self.node.engine.iter_range(start, end):
            yield key, rec.meta

    # -- anti-entropy: the initiator --------------------------------------------------
    def _start_exchange(self, now: float) -> None:
        node = self.node
        self._next_exchange = now + self.interval_s
        if (self.interval_s <= 0 or "skip_anti_entropy" in node.faults
                or node.read_only_reason is not None):
            return
        peers = [p for p in self.trees.peers()
                 if node.membership.is_up(p, now) and self.trees.ready_for(p)]
        if not peers:
            return
        if self._stick_to in peers:
            peer = self._stick_to
        else:
            self._peer_rr += 1
            peer = peers[self._peer_rr % len(peers)]
        self._stick_to = None
        ring = self.trees.ring
        assert ring is not None
        ex = Exchange(node._next_id(), peer, ring.digest)
        self._exchange = ex
        self.counters["aae_exchanges"] += 1
        self._request(ex, now, "root", {"root": self.trees.root(peer)})

    def _request(self, ex: Exchange, now: float, step: str, body: dict[str, Any]) -> None:
        ex.step = step
        ex.deadline = now + self.node.config.request_timeout_s
        self.node._send(ex.peer, PeerMsg.AAE_REQUEST,
                        {"id": ex.id, "step": step, "ring": ex.ring,
                         "n": self.trees.n, **body})

    def _end_exchange(self, now: float, outcome: str) -> None:
        ex = self._exchange
        if ex is None:
            return
        self._exchange = None
        moved = ex.bytes_sent + ex.bytes_received
        if outcome == "differ":
            # More may differ than one exchange repairs: go on with the same peer as
            # soon as the rate limit allows.
            self._stick_to = ex.peer
            self._next_exchange = now + moved / self.rate
            if self._next_exchange <= now:
                self._start_exchange(now)
        elif outcome == "same":
            self.counters["aae_in_sync"] += 1
        else:
            self.counters["aae_aborted"] += 1
            log.debug("anti-entropy exchange with %s ended: %s", ex.peer, outcome)
        self.counters["aae_bytes"] += moved

    def on_reply(self, sender: str, body: dict[str, Any], now: float) -> None:
        ex = self._exchange
        if ex is None or body["id"] != ex.id or sender != ex.peer:
            return
        if body.get("ok") is not True:
            self._end_exchange(now, f"refused: {str(body.get('reason'))[:100]}")
            return
        self.follow_ring(now)
        if self._exchange is not ex:
            return
        trees, peer = self.trees, ex.peer
        if ex.step == "root":
            if body.get("same") is True:
                self._end_exchange(now, "same")
                return
            groups = differing(trees.group_hashes(peer), _ints(body["groups"]))
            ex.asked = set(groups[:MAX_ARCS_PER_STEP])
            self._request(ex, now, "arcs", {"groups": groups[:MAX_ARCS_PER_STEP]})
        elif ex.step == "arcs":
            arcs: list[int] = []
            for g, hashes in _pairs(body["arcs"]):
                if g not in ex.asked:
                    continue
                arcs += [g * GROUP_ARCS + i
                         for i in differing(trees.arc_hashes(peer, g), _ints(hashes))]
            if not arcs:
                self._end_exchange(now, "same")
                return
            ex.asked = set(arcs[:MAX_ARCS_PER_STEP])
            self._request(ex, now, "leaves", {"arcs": arcs[:MAX_ARCS_PER_STEP]})
        elif ex.step == "leaves":
            leaves: list[list[int]] = []
            for a, hashes in _pairs(body["leaves"]):
                if a not in ex.asked:
                    continue
                leaves += [[a, b] for b in differing(trees.leaf_hashes(peer, a), _ints(hashes))
                           if b < BUCKETS]
            if not leaves:
                self._end_exchange(now, "same")
                return
            ex.leaves = [(a, b) for a, b in leaves[:MAX_LEAVES_PER_STEP]]
            self._request(ex, now, "keys", {"leaves": [list(x) for x in ex.leaves]})
        elif ex.step == "keys":
            asked = set(ex.leaves)
            complete = [(a, b) for a, b in _pairs(body.get("leaves", []))
                        if (a, b) in asked and type(b) is int]
            theirs: dict[bytes, int] = {}
            for k, h in body["items"]:
                if type(k) is bytes and type(h) is int and self._both_own(peer, k):
                    theirs[k] = h
            mine = trees.leaf_items(peer, complete, self._scan_meta)
            keys = differing_keys(mine, theirs)[:self.max_keys]
            if not keys:
                self._end_exchange(now, "same")
                return
            records, size = self._records(keys)
            ex.keys = keys
            ex.bytes_sent += size
            self._request(ex, now, "sync", {"records": records, "want": keys})
        elif ex.step == "sync":
            merged = self._merge_records(body["records"])
            ex.bytes_received += merged[1]
            self.counters["aae_keys_repaired"] += merged[0]
            self.counters["aae_keys_differing"] += len(ex.keys)
            self._end_exchange(now, "differ")

    # -- anti-entropy: the responder -----------------------------------------------------
    def on_request(self, sender: str, body: dict[str, Any], now: float) -> None:
        rid, step = body["id"], body["step"]
        if type(rid) is not int or type(step) is not str:
            raise ValueError("bad AAE request")
        node = self.node
        self.follow_ring(now)
        ring = self.trees.ring
        reply: dict[str, Any] = {"id": rid, "ok": True}
        if ring is None or body.get("ring") != ring.digest or body.get("n") != self.trees.n:
            reply = {"id": rid, "ok": False, "reason": "ring differs"}
        elif "skip_anti_entropy" in node.faults or node.read_only_reason is not None:
            reply = {"id": rid, "ok": False, "reason": "anti-entropy is off here"}
        elif not self.trees.ready_for(sender):
            reply = {"id": rid, "ok": False, "reason": "trees still building"}
        elif step == "root":
            if _int(body["root"]) == self.trees.root(sender):
                reply["same"] = True
            else:
                reply["groups"] = self.trees.group_hashes(sender)
        elif step == "arcs":
            reply["arcs"] = [[g, self.trees.arc_hashes(sender, g)]
                             for g in _ints(body["groups"])[:MAX_ARCS_PER_STEP]]
        elif step == "leaves":
            reply["leaves"] = [[a, self.trees.leaf_hashes(sender, a)]
                               for a in _ints(body["arcs"])[:MAX_ARCS_PER_STEP]]
        elif step == "keys":
            leaves = [(a, b) for a, b in _pairs(body["leaves"])][:MAX_LEAVES_PER_STEP]
            per_leaf = self.trees.items_by_leaf(sender, leaves, self._scan_meta)
            # Whole leaves only, as many as fit: a leaf cut in the middle would make
            # every key past the cut look missing here.
            items: list[list[Any]] = []
            done: list[list[int]] = []
            size = 0
            for leaf in leaves:
                got = per_leaf.get(leaf)
                if got is None:
                    continue
                cost = sum(len(k) + 10 for k in got)
                if done and (len(items) + len(got) > self.max_keys * 4
                             or size + cost > MAX_SYNC_BYTES):
                    break
                items += [[k, h] for k, h in got.items()]
                done.append(list(leaf))
                size += cost
            reply["items"] = items
            reply["leaves"] = done
        elif step == "sync":
            self.counters["aae_keys_repaired"] += self._merge_records(body["records"])[0]
            # Only keys both replicate: never hints or other local keys, never a key
            # of a range the asker has no business reading.
            want = [k for k in body["want"][:self.max_keys]
                    if type(k) is bytes and self._both_own(sender, k)]
            reply["records"] = self._records(want)[0]
        else:
            reply = {"id": rid, "ok": False, "reason": f"unknown step {step[:32]!r}"}
        node._send(sender, PeerMsg.AAE_REPLY, reply)

    def _both_own(self, peer: str, key: bytes) -> bool:
        """Whether `key` is a replicated key that both this node and `peer` replicate."""
        if not key or is_local_key(key):
            return False
        owners = self._owners(key)
        return self.node.name in owners and peer in owners

    def _owners(self, key: bytes) -> tuple[str, ...]:
        ring = self.trees.ring
        return () if ring is None else ring.preference_list(key, self.trees.n)

    def _records(self, keys: list[bytes]) -> tuple[list[list[Any]], int]:
        """[[key, state or nil], ...] for `keys`, within MAX_SYNC_BYTES; and their size."""
        out: list[list[Any]] = []
        size = 0
        for k in keys:
            rec, state = self.node._read(k)
            if rec is not None and size + len(rec.meta) > MAX_SYNC_BYTES and out:
                break
            size += len(k) + (0 if rec is None else len(rec.meta))
            out.append([k, None if state is None else state.to_wire()])
        return out, size

    def _merge_records(self, records: Any) -> tuple[int, int]:
        """Merge [[key, state], ...] into local replicas; (keys changed, bytes)."""
        changed = size = 0
        node = self.node
        max_sib = node.config.max_siblings * 2
        for key, raw in records:
            if (type(key) is not bytes or not key or raw is None or is_local_key(key)
                    or not self.trees.owns_token(key_token(key))):
                continue
            try:
                state = DVVSet.from_wire(raw, max_siblings=max_sib)
            except ValueError:
                self.counters["aae_malformed"] += 1
                continue
            size += len(key)
            try:
                if node._merge_local(key, state, None) is not None:
                    changed += 1
            except WireError:
                self.counters["aae_store_refused"] += 1
        return changed, size

    # -- ownership handoff -------------------------------------------------------------
    def _handoff_step(self, now: float) -> None:
        if self._pass_due is not None and now >= self._pass_due and not self._in_pass:
            self._pass_due = None
            self._in_pass = True
            self._scan_arcs = deque(self.trees.foreign_arcs())
            self._pass_found = self._pass_blocked = 0
        # Expire transfers whose acknowledgements did not all come.
        for tid, t in list(self._transfers.items()):
            if now >= t.deadline:
                del self._transfers[tid]
                self._queued.discard(t.key)
                self._pass_blocked += 1
                self.counters["handoff_unacknowledged"] += 1
        self._pump(now)
        if (self._in_pass and not self._scan_arcs and self._scan_iter is None
                and not self._queue and not self._transfers):
            self._pass_complete(now)

    def _pump(self, now: float) -> None:
        """Find more foreign keys and send as many as the in-flight cap and the rate
        limit (a token bucket holding at most half a second's worth) allow. Runs on
        every tick and on every completed transfer, so handoff is paced by the owners'
        acknowledgements and the rate limit, not by the tick."""
        node = self.node
        budget = TRANSFER_SCAN_PER_TICK
        while budget > 0 and len(self._queue) < 4 * TRANSFER_MAX_INFLIGHT:
            if self._scan_iter is None:
                if not self._scan_arcs:
                    break
                start, end = self._scan_arcs.popleft()
                self._scan_iter = (k for k, _r in list(node.engine.iter_range(start, end)))
            k = next(self._scan_iter, None)
            if k is None:
                self._scan_iter = None
                continue
            budget -= 1
            if is_local_key(k) or k in self._queued:
                continue
            self._queue.append(k)
            self._queued.add(k)
            self._pass_found += 1
        burst = self.rate * 0.5
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * self.rate)
        self._tokens_at = now
        while (self._queue and len(self._transfers) < TRANSFER_MAX_INFLIGHT
               and self._tokens > 0 and node.read_only_reason is None):
            key = self._queue.popleft()
            self._tokens -= self._transfer(key, now)

    def _transfer(self, key: bytes, now: float) -> int:
        node = self.node
        ring = node.membership.ring
        rec, state = node._read(key)
        owners = ring.preference_list(key, node.config.n_replicas)
        if state is None or node.name in owners or not owners:
            self._queued.discard(key)
            return 0
        if not all(node.membership.is_up(o, now) for o in owners):
            self._queued.discard(key)
            self._pass_blocked += 1
            return 0
        tid = node._next_id()
        size = len(key) + (len(rec.meta) if rec is not None else 0)
        self._transfers[tid] = _Transfer(key, state, set(owners),
                                         now + node.config.request_timeout_s, size)
        wire = state.to_wire()
        for o in owners:
            node._send(o, PeerMsg.REPLICA_PUT, {"id": tid, "key": key, "state": wire,
                                                "handoff": True})
        self.counters["handoff_sent"] += 1
        return size

    def on_ack(self, pid: int, sender: str, ok: bool, now: float) -> bool:
        """A REPLICA_PUT_ACK arrived; True if it answered a transfer of ours."""
        t = self._transfers.get(pid)
        if t is None:
            return False
        if not ok:
            del self._transfers[pid]
            self._queued.discard(t.key)
            self._pass_blocked += 1
            self.counters["handoff_refused"] += 1
            return True
        t.waiting.discard(sender)
        if t.waiting:
            return True
        del self._transfers[pid]
        self._queued.discard(t.key)
        node = self.node
        if node._load(t.key) == t.state:
            node.remember_counter(t.key, t.state)
            node._drop_local(t.key)
            self.moved_keys += 1
            self.moved_bytes += t.size
            self.counters["handoff_moved"] += 1
        else:
            self._pass_blocked += 1  # changed meanwhile: the next pass sends it again
        self._pump(now)
        return True

    def _pass_complete(self, now: float) -> None:
        self._in_pass = False
        self.passes += 1
        found, blocked = self._pass_found, self._pass_blocked
        if found or blocked:
            log.info("handoff pass: %d foreign keys found, %d moved in all, %d to retry",
                     found, self.moved_keys, blocked)
            # Look again at once after progress (new keys may have arrived meanwhile),
            # after a pause when owners were down or did not answer.
            if self._pass_due is None:
                self._pass_due = now + (RETRY_PASS_S if blocked else 0.0)
            return
        if self.leaving and not self.departed:
            if self.node.hints == 0:
                self._depart(now)
            elif self._pass_due is None:
                self._pass_due = now + RETRY_PASS_S  # hints still to deliver

    def foreign_write(self) -> None:
        """A key this node does not own was stored (a coordinator, read repair or
        handoff working from another view of the ring): make sure a handoff pass runs
        to send it on, instead of leaving it stranded until the next ring change."""
        due = self._last_tick + (0.0 if self.leaving else self.node.config.ownership_settle_s)
        if self._pass_due is None or due < self._pass_due:
            self._pass_due = due
        self.counters["foreign_writes"] += 1

    # -- leave ---------------------------------------------------------------------------
    def begin_leave(self, now: float, *, resumed: bool = False) -> None:
        """Start leaving (LEAVE), or resume a leave a restart interrupted (`resumed`).

        The intent is kept under a local key, so a node that crashes while leaving
        comes back leaving and finishes the handoff.
        """
        node = self.node
        if self.leaving:
            return
        others = [m for m in node.membership.members.values()
                  if m.name != node.name and m.state == "alive"
                  and not m.meta.get("leaving")]
        if not others and not resumed:
            raise WireError(ErrorCode.UNAVAILABLE,
                            "no other live member could take over this node's data")
        self.leaving = True
        if not resumed:
            try:
                node._hold_until_durable(node.engine.put(LEAVING_KEY, b"1"), _nothing)
            except OSError as exc:
                log.error("could not record the leave: %s", exc)
        log.info("%s the cluster: handing every key to its new owners",
                 "still leaving" if resumed else "leaving")
        node._set_leaving_meta(now)
        self.follow_ring(now)
        self._pass_due = now

    def _depart(self, now: float) -> None:
        self.departed = True
        self.node.engine.purge(LEAVING_KEY)  # started again, the node joins afresh
        log.info("handoff complete (%d keys, %d bytes moved); announcing leave",
                 self.moved_keys, self.moved_bytes)
        self.node.leave(now)

    # -- status --------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.trees.stats()
        c = self.counters
        scanning = bool(self._scan_arcs or self._scan_iter is not None)
        state = ("moving" if self._queue or self._transfers else
                 "scanning" if scanning or self._in_pass else
                 "waiting" if self._pass_due is not None else "idle")
        return {
            "anti_entropy": {
                "enabled": self.interval_s > 0,
                "interval_s": self.interval_s,
                "arcs": st.arcs, "arcs_building": st.unbuilt,
                "exchanges": c["aae_exchanges"], "in_sync": c["aae_in_sync"],
                "aborted": c["aae_aborted"], "keys_repaired": c["aae_keys_repaired"],
                "bytes": c["aae_bytes"],
                "exchanging_with": None if self._exchange is None else self._exchange.peer,
            },
            "handoff": {
                "state": state, "leaving": self.leaving, "departed": self.departed,
                "queued_keys": len(self._queue), "inflight_keys": len(self._transfers),
                "moved_keys": self.moved_keys, "moved_bytes": self.moved_bytes,
                "arcs_to_scan": len(self._scan_arcs), "passes": self.passes,
            },
        }


def _nothing() -> None:
    pass


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError("expected an integer")
    return v


def _ints(v: Any) -> list[int]:
    if type(v) is not list:
        raise ValueError("expected a list")
    return [_int(x) for x in v]


def _pairs(v: Any) -> list[tuple[int, Any]]:
    if type(v) is not list:
        raise ValueError("expected a list")
    out = []
    for p in v:
        if type(p) is not list or len(p) != 2 or type(p[0]) is not int:
            raise ValueError("expected [index, value] pairs")
        out.append((p[0], p[1]))
    return out


__all__ = ["Repairer"]
