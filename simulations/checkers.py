"""Checkers over a run's history, its disks and the cluster's final state.

Inputs
------
- the client history (simulations.workload.OpRecord): every get, put and delete
  with start and end times, the value and context sent, where that context came
  from, and the outcome;
- the disk log: every state any engine stored (key, previous and new state,
  node, its actor id, time), recorded under the nodes by a RecordingEngine. From
  it `DotIndex` learns each dot's issuance: the value (values are unique) and the
  state its coordinator first stored it in;
- the final state after the liveness phase: each node's stored DVVSet per key
  (hints apart), its membership view, and the ring's preference lists.

Causal vocabulary
-----------------
A write x *saw* a dot d when its effective context covers d and the context can
have reflected d: for a write that carried a context, the context covers d and
the result it came from ended after d was first stored (a context older than d
cannot know d even if its counters are high, as happens when a coordinator
issues counters again). A blind write's context is chosen by its coordinator
(its own copy, merged with what stale replicas held when it writes the value
again; a delete's, what a read quorum returned), so for a blind put x saw d when
the state x's dot was first stored in had seen d and dropped it (for a value
issued twice: either issuance in the lenient direction, both in the strict); for
a blind delete, the same for the tombstone dot(s) first stored while the delete
was in flight (any of them in the lenient direction, only when there is exactly
one in the strict direction).

The rules (each one a `check_*` function):

acked-writes  Every acknowledged put is present in the final state (its value, as
              a live sibling) or superseded: some write saw its dot, and the final
              state has seen the dot or the key was reaped after it. Otherwise it
              was lost. Until hinted handoff exists, copies kept as hints count.
resurrection  No value that an acknowledged write saw is live in the final state
              of the primaries. This is "a deleted key stays deleted" in its
              general form: a key whose last acknowledged write was a delete that
              saw every earlier value reads as absent.
blind-puts    A blind put that succeeded saw every put acknowledged before it
              started, where checked writes promise it: strict quorums (R + W > N,
              2W > N, no fallback took either value while it was written), no reap
              or bit rot between.
convergence   After heal and the liveness phase, the primaries of every key hold
              equal states (a tombstone-only state and a reaped key read alike and
              count as equal).
hints         (with hinted handoff) No hint remains: every one reached its owner.
siblings      Live siblings are pairwise concurrent: no sibling's writer saw another
              sibling. So a key never has more siblings than writes none of which
              saw the others (the concurrent writers). Checked on every get result
              and on every final state.
membership    Every up node has the same view (member names and states), naming
              every node of the cluster as alive.
incarnations  No node's view of a member's incarnation ever goes back (until the
              member is reaped or the node restarts): only the member raises its
              incarnation, and news about an older one never overrides newer news
              (a stale suspicion must not undo a refutation). Checked on every
              change of every view during the run.
coordinators  Every write was given its dot by one of its key's primaries (the
              simulated membership never changes, so neither does the ring).
dots-unique   A (key, actor, counter) dot names one write: no coordinator issues a
              dot twice (as it would after forgetting a key's version vector).
history       Every operation completed (ok, error or timeout) by the end.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ringfs.dvv import DVVSet, decode_context, decode_stored
from ringfs.lww import STAMP_MAGIC, unstamp
from ringfs.lww import matches as lww_matches
from ringfs.node import LOCAL_PREFIX, parse_hint_key
from simulations.workload import OK, PENDING, OpRecord


class Violation(NamedTuple):
    """One broken rule."""

    check: str
    message: str
    key: bytes | None = None


@dataclass
class CheckResult:
    """The verdict of one checker."""

    name: str
    violations: list[Violation] = field(default_factory=list)
    detail: str = ""
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


class DiskWrite(NamedTuple):
    """One change an engine made: a new state for a key, or a purge (meta None)."""

    t: float
    node: str
    key: bytes
    prev: bytes | None
    """The state the key had on this disk just before."""
    meta: bytes | None
    actor: str
    """The actor id the node was running as (name@epoch)."""


class DotInfo(NamedTuple):
    """One issuance of a dot: when and where its coordinator stamped it, and the
    state it was first stored in."""

    key: bytes
    actor: str
    counter: int
    value: bytes | None
    t: float
    node: str
    meta: bytes


def show(b: bytes | None) -> str:
    """Keys and values are ASCII in the simulator; print them plainly."""
    if b is None:
        return "<tombstone>"
    return b.decode("ascii", "backslashreplace")


def stored_state(meta: bytes) -> DVVSet:
    """A replica state as stored, with the values clients wrote: last-write-wins
    stamps (ringfs/lww.py) taken off, so values match the workload's history."""
    st = decode_stored(meta)
    if any(v is not None and v.startswith(STAMP_MAGIC) for _, _, v in st.dots()):
        st = DVVSet(tuple((i, n, tuple(v if v is None else unstamp(v)[1] for v in vals))
                          for i, n, vals in st.entries))
    return st


def main_key(stored: bytes) -> tuple[bytes, str | None]:
    """The client key a stored key belongs to, and the owner if it is a hint."""
    h = parse_hint_key(stored)
    return (h[1], h[0]) if h is not None else (stored, None)


class DotIndex:
    """Every dot issued, learned from the disk log (incrementally).

    A dot is *issued* when a node running as actor A stores a state holding a dot
    (A, n) that its previous state of that key had not seen: only a coordinator
    stamping a new write does that (a node never lacks its own current actor's
    dots otherwise, since a crash restarts it under a new actor). Counting
    issuances, rather than first sightings, keeps the index right even when a
    dot is issued twice.
    """

    def __init__(self) -> None:
        self.issued: dict[tuple[bytes, str, int], DotInfo] = {}
        """The latest issuance of each dot."""
        self.by_value: dict[tuple[bytes, bytes], DotInfo] = {}
        """The latest issuance of each value."""
        self.issuances: dict[tuple[bytes, bytes], list[DotInfo]] = defaultdict(list)
        """Every issuance of each value, in time order: a blind put that a replica
        refused as stale is issued again, over what that replica held."""
        self.tombstones: dict[bytes, list[DotInfo]] = defaultdict(list)
        """Per key, the issuances of tombstone dots, in time order."""
        self.count = 0
        self.purges: dict[bytes, list[float]] = defaultdict(list)
        self.hinted: dict[tuple[bytes, bytes], list[float]] = defaultdict(list)
        """(key, value) -> when a fallback took the value for another node (stored it
        in a hint state that did not hold it before); while the value's own write was
        in flight, that write was one of a sloppy quorum."""
        self.reuses: list[Violation] = []
        self._decoded: dict[bytes, DVVSet] = {}
        self._pos = 0

    def decode(self, meta: bytes) -> DVVSet:
        st = self._decoded.get(meta)
        if st is None:
            st = stored_state(meta)
            self._decoded[meta] = st
        return st

    def info(self, key: bytes, actor: str, counter: int, value: bytes | None) -> DotInfo | None:
        """The issuance of a live dot seen in some state."""
        if value is not None:
            return self.by_value.get((key, value))
        return self.issued.get((key, actor, counter))

    def superseded_in_first_state(self, x: DotInfo, d: DotInfo) -> bool:
        """Whether the state that introduced dot x had seen dot d and dropped it."""
        if x.t < d.t:
            return False
        st = self.decode(x.meta)
        return st.counter(d.actor) >= d.counter and \
            (d.actor, d.counter, d.value) not in set(st.dots())

    def ingest(self, log: list[DiskWrite]) -> list[Violation]:
        """Learn from the entries added since the last call; returns new dot reuses."""
        new: list[Violation] = []
        issued = self.issued
        for i in range(self._pos, len(log)):
            t, node, stored, prev, meta, actor = log[i]
            if stored[:2] == LOCAL_PREFIX:
                continue  # node bookkeeping (the saved membership view), not data
            key, owner = main_key(stored)
            if owner is not None:
                # Hints hold copies; dots are issued under the key itself (and a hint
                # dropped after its handoff removes nothing from the owners).
                if meta is not None:
                    before = set(self.decode(prev).values()) if prev is not None else set()
                    for val in self.decode(meta).values():
                        if val is not None and val not in before:
                            self.hinted[(key, val)].append(t)
                continue
            if meta is None:
                self.purges[key].append(t)
                continue
            state = self.decode(meta)
            n = state.counter(actor)
            if not n or (prev is not None and self.decode(prev).counter(actor) >= n):
                continue
            # The only dot this write can have issued is (actor, n): the newest value
            # of the actor's entry, when that value is still live.
            for a, counter, vals in state.entries:
                if a != actor:
                    continue
                if not vals:
                    break
                value = vals[0]
                k = (key, actor, counter)
                old = issued.get(k)
                if old is not None and old.value == value:
                    # The same write learned again after this node lost the key (a
                    # damaged record dropped, a purge): not a second issuance. Values
                    # are unique per write, so a reused dot always binds another one.
                    break
                if old is not None:
                    v = Violation("dots-unique",
                                  f"dot ({actor}, {counter}) of key {show(key)} was issued at "
                                  f"{old.t:.3f}s by {old.node} for {show(old.value)}, and again "
                                  f"at {t:.3f}s for {show(value)}", key)
                    self.reuses.append(v)
                    new.append(v)
                info = DotInfo(key, actor, counter, value, t, node, meta)
                issued[k] = info
                self.count += 1
                if value is None:
                    self.tombstones[key].append(info)
                else:
                    self.by_value[(key, value)] = info
                    self.issuances[(key, value)].append(info)
                break
        self._pos = len(log)
        return new


@dataclass
class FinalState:
    """What the cluster holds once the liveness phase is over."""

    n: int
    nodes: list[str]
    """Every node of the cluster, by name."""
    up: list[str]
    views: dict[str, dict[str, str]]
    """Per up node: member name -> state."""
    preference: dict[bytes, tuple[str, ...]]
    """Per key: its primaries on the reference node's ring."""
    states: dict[bytes, dict[str, DVVSet | None]]
    """Per key, per node: the state stored under the key itself."""
    hints: dict[bytes, list[tuple[str, str, DVVSet]]] = field(default_factory=dict)
    """Per key: (holder, owner, state) of every hint still kept."""

    def primaries_state(self, key: bytes) -> DVVSet | None:
        """The causal merge of what the key's primaries hold."""
        return _merge(self.states.get(key, {}).get(n) for n in self.preference.get(key, ()))

    def any_state(self, key: bytes) -> DVVSet | None:
        """The causal merge of every copy: all nodes and all hints."""
        copies: list[DVVSet | None] = list(self.states.get(key, {}).values())
        copies += [st for _h, _o, st in self.hints.get(key, [])]
        return _merge(copies)


def _merge(states: Iterable[DVVSet | None]) -> DVVSet | None:
    out: DVVSet | None = None
    for st in states:
        if st is not None:
            out = st if out is None else out.sync(st)
    return out


class Causality:
    """Answers "did write x see dot d?" over one history and dot index."""

    def __init__(self, history: list[OpRecord], dots: DotIndex) -> None:
        self.history = history
        self.dots = dots
        self._ctx: dict[int, dict[str, int]] = {}
        self.put_by_value: dict[tuple[bytes, bytes], OpRecord] = {}
        self.writes: dict[bytes, list[OpRecord]] = defaultdict(list)
        # Per key, the start times of its writes (history is in start order) and the
        # longest a write took: a write that saw d started at most that long before d.
        self._starts: dict[bytes, list[float]] = defaultdict(list)
        self._longest: dict[bytes, float] = defaultdict(float)
        for rec in history:
            if rec.op == "PUT" and rec.value is not None:
                self.put_by_value[(rec.key, rec.value)] = rec
            if rec.is_write:
                self.writes[rec.key].append(rec)
                self._starts[rec.key].append(rec.start)
                took = rec.end - rec.start if rec.outcome != PENDING else float("inf")
                if took > self._longest[rec.key]:
                    self._longest[rec.key] = took
        self._tomb_times = {k: [t.t for t in v] for k, v in dots.tombstones.items()}

    def _context(self, rec: OpRecord) -> dict[str, int]:
        ctx = self._ctx.get(rec.id)
        if ctx is None:
            try:
                ctx = decode_context(rec.context_sent or b"")
            except ValueError:
                ctx = {}
            self._ctx[rec.id] = ctx
        return ctx

    def saw(self, x: OpRecord, d: DotInfo, strict: bool,
            issuance: DotInfo | None = None, last: bool = False) -> bool:
        """Whether write x's effective context covered dot d (see the module docstring);
        for a blind put whose value was issued twice, `issuance` names the one to
        judge by (the one whose dot is live where it was found), `last` the last one
        (the one acknowledged), else strict means all of them, lenient any."""
        if x.context_sent is not None:
            src = x.context_source
            if src is None or self.history[src].end < d.t:
                return False
            return self._context(x).get(d.actor, 0) >= d.counter
        # A blind write's context is whatever its coordinator merged before applying it
        # (its own copy, or that and what stale replicas held when it wrote the value
        # again): judge by the state its dot first appeared in; of a value issued twice,
        # by any issuance in the lenient direction, by every one in the strict (the
        # first may meet d as a sibling before the second supersedes both).
        if x.op == "PUT":
            assert x.value is not None
            if issuance is None and last:
                issuance = self.dots.by_value.get((x.key, x.value))
                if issuance is None:
                    return False
            if issuance is not None:
                return self.dots.superseded_in_first_state(issuance, d)
            issued = self.dots.issuances.get((x.key, x.value))
            if not issued:
                return False
            first = self.dots.superseded_in_first_state
            if strict:
                return all(first(xi, d) for xi in issued)
            return any(first(xi, d) for xi in issued)
        end = x.end if x.outcome == OK else float("inf")
        tombs = self.dots.tombstones.get(x.key, [])
        times = self._tomb_times.get(x.key, [])
        cands = tombs[bisect_left(times, x.start):bisect_right(times, end)]
        if strict and len(cands) != 1:
            return False
        return any(self.dots.superseded_in_first_state(t, d) for t in cands)

    def superseder(self, d: DotInfo, exclude: int | None, *, acked_only: bool,
                   strict: bool, last: bool = False) -> OpRecord | None:
        """A write (other than `exclude`) that saw d, if any."""
        writes = self.writes.get(d.key)
        if not writes:
            return None
        first = bisect_left(self._starts[d.key], d.t - self._longest[d.key])
        for i in range(first, len(writes)):
            x = writes[i]
            if x.id == exclude or (acked_only and x.outcome != OK):
                continue
            if self.saw(x, d, strict, last=last):
                return x
        return None


def _describe(rec: OpRecord) -> str:
    what = rec.op if rec.value is None else f"{rec.op} {show(rec.value)}"
    ctx = "blind" if rec.context_sent is None else f"context from #{rec.context_source}"
    return (f"#{rec.id} {rec.client} {what} ({ctx}) [{rec.start:.3f}s..{rec.end:.3f}s "
            f"{rec.outcome}{' ' + rec.error if rec.error else ''}]")


def _where(final: FinalState, key: bytes, d: DotInfo) -> str:
    holders = [n for n, st in final.states.get(key, {}).items()
               if st is not None and (d.actor, d.counter, d.value) in set(st.dots())]
    holders += [f"{h}(hint for {o})" for h, o, st in final.hints.get(key, [])
                if (d.actor, d.counter, d.value) in set(st.dots())]
    return ", ".join(holders) if holders else "nowhere"


def check_acked_writes(history: list[OpRecord], dots: DotIndex, final: FinalState,
                       *, hints_count: bool, causal: Causality | None = None) -> CheckResult:
    """Every acknowledged put is present or superseded by a write that saw it."""
    res = CheckResult("acked-writes")
    causal = causal or Causality(history, dots)
    present = superseded = 0
    finals: dict[bytes, tuple[DVVSet | None, set[tuple[str, int, bytes | None]]]] = {}
    for w in history:
        if w.op != "PUT" or w.outcome != OK or w.value is None:
            continue
        d = dots.by_value.get((w.key, w.value))
        if d is None:
            res.violations.append(Violation(
                res.name, f"{_describe(w)} was acknowledged but no disk ever stored it", w.key))
            continue
        if w.key not in finals:
            st = final.any_state(w.key) if hints_count else final.primaries_state(w.key)
            finals[w.key] = (st, set(st.dots()) if st is not None else set())
        f, f_dots = finals[w.key]
        if (d.actor, d.counter, w.value) in f_dots:
            present += 1
            continue
        x = causal.superseder(d, w.id, acked_only=False, strict=False)
        covered = f is not None and f.context().get(d.actor, 0) >= d.counter
        reaped = any(t >= d.t for t in dots.purges.get(w.key, ()))
        if x is not None and (covered or reaped):
            superseded += 1
            continue
        fvv = "absent" if f is None else f"context {dict(sorted(f.context().items()))}"
        why = ("no write saw it" if x is None else
               f"{_describe(x)} saw it, but the final state has not seen the dot (so that "
               "write was lost too)")
        res.violations.append(Violation(
            res.name, f"lost {_describe(w)}: dot ({d.actor}, {d.counter}) first stored on "
            f"{d.node} at {d.t:.3f}s; final state {fvv}; {why}; copies now: "
            f"{_where(final, w.key, d)}", w.key))
    res.detail = f"{present + superseded + len(res.violations)} acknowledged puts: " \
                 f"{present} present, {superseded} superseded"
    return res


def check_resurrection(history: list[OpRecord], dots: DotIndex, final: FinalState,
                       causal: Causality | None = None) -> CheckResult:
    """No value an acknowledged write saw is live in the primaries' final state."""
    res = CheckResult("resurrection")
    causal = causal or Causality(history, dots)
    deleted = 0
    for key in sorted(final.preference):
        f = final.primaries_state(key)
        if f is None or f.is_tombstone():
            deleted += 1
            continue
        for actor, counter, value in f.dots():
            if value is None:
                continue
            d = dots.issued.get((key, actor, counter))
            if d is None or d.value != value:
                continue  # reported by dots-unique, or issued by no disk we saw
            # (its own put, written again, supersedes its first issuance: not a revival)
            own = causal.put_by_value.get((key, value))
            x = causal.superseder(d, None if own is None else own.id, acked_only=True,
                                  strict=True, last=True)
            if x is not None:
                res.violations.append(Violation(
                    res.name, f"{show(value)} is live in the final state of key {show(key)} "
                    f"though the acknowledged {_describe(x)} had seen it", key))
    res.detail = f"{len(final.preference)} keys, {deleted} absent at the end"
    return res


def check_blind_puts(history: list[OpRecord], dots: DotIndex, *, n: int, r: int, w: int,
                     lww_prefixes: tuple[bytes, ...] = (),
                     damaged: Mapping[bytes, list[float]] | None = None,
                     causal: Causality | None = None) -> CheckResult:
    """A blind put that succeeded saw every put acknowledged before it started.

    What checked writes promise (docs/protocol.md 4.7) under strict quorums, so it is
    judged only where that holds: R + W > N, and 2W > N as well (a blind put needs
    max(W, R) acceptances, but R counts the replicas up: with fewer up it may need
    only W, and W of them meet the W replicas of every acknowledged write only when
    2W > N), neither value taken by a fallback for another node while its write was
    in flight (a sloppy quorum), the key not reaped (purged) or damaged by bit rot
    (`damaged`: key -> times) from the earlier put's start to the blind put's end,
    and not a last-write-wins key (those are checked against one replica only)."""
    res = CheckResult("blind-puts")
    causal = causal or Causality(history, dots)
    acked: dict[bytes, list[OpRecord]] = defaultdict(list)
    for rec in history:
        if rec.op == "PUT" and rec.outcome == OK and rec.value is not None:
            acked[rec.key].append(rec)

    def sloppy(rec: OpRecord) -> bool:
        """Whether a fallback took the put's value while it was in flight."""
        return any(rec.start <= t <= rec.end
                   for t in dots.hinted.get((rec.key, rec.value or b""), ()))

    judged = pairs = 0
    strict = r + w > n and 2 * w > n
    for key, puts in sorted(acked.items()):
        if not strict or (lww_prefixes and lww_matches(key, lww_prefixes)):
            continue
        by_end = sorted(puts, key=lambda rec: rec.end)
        ends = [rec.end for rec in by_end]
        # Per earlier put, once: its issuances stored by the time it was acknowledged
        # (a late one gives a replica that refused it the value as a sibling, after a
        # blind put may have begun); None when it was sloppy or no disk stored it
        # (acked-writes reports that).
        issued: list[list[DotInfo] | None] = []
        for u in by_end:
            acked_by = [d for d in dots.issuances.get((key, u.value or b""), []) if d.t <= u.end]
            issued.append(acked_by if acked_by and not sloppy(u) else None)
        gone = [*dots.purges.get(key, ()), *(damaged or {}).get(key, ())]
        for x in puts:
            if x.context_sent is not None or sloppy(x):
                continue
            judged += 1
            mine = dots.issuances.get((key, x.value or b""), [])
            for i in range(bisect_left(ends, x.start)):
                u, ds = by_end[i], issued[i]
                # (Damage ends the window as late as x's end: a copy lost while x was
                # in flight lets a replica accept it.)
                if ds is None or any(u.start <= t <= x.end for t in gone):
                    continue
                pairs += 1
                if any(causal.saw(x, d, strict=False, issuance=xi)
                       for d in ds for xi in mine):
                    continue
                d = ds[-1]
                res.violations.append(Violation(
                    res.name, f"{_describe(x)} did not supersede {_describe(u)}, "
                    f"acknowledged before it started: dot ({d.actor}, {d.counter}) first "
                    f"stored on {d.node} at {d.t:.3f}s", key))
    res.detail = (f"{judged} blind puts under strict quorums, {pairs} earlier acknowledged "
                  "puts judged" if strict else f"not judged: N={n} R={r} W={w}")
    return res


def check_convergence(final: FinalState) -> CheckResult:
    """All primaries of every key hold equal states (tombstones and reaped keys alike)."""
    res = CheckResult("convergence")
    for key in sorted(final.preference):
        per = final.states.get(key, {})
        seen: dict[object, list[str]] = {}
        for node in final.preference[key]:
            st = per.get(node)
            norm = None if st is None or st.is_tombstone() else st.entries
            seen.setdefault(norm, []).append(node)
        if len(seen) > 1:
            parts = []
            for label, nodes in seen.items():
                st = per.get(nodes[0])
                what = "absent" if label is None else (
                    f"{sorted(show(v) for v in st.live_values())} "
                    f"context {dict(sorted(st.context().items()))}" if st is not None else "?")
                parts.append(f"{','.join(nodes)}: {what}")
            res.violations.append(Violation(
                res.name, f"replicas of {show(key)} differ: " + "; ".join(parts), key))
    res.detail = f"{len(final.preference)} keys x {final.n} replicas"
    return res


def check_hints_drained(final: FinalState) -> CheckResult:
    """Hinted handoff delivered every hint once the owners were back."""
    res = CheckResult("hints")
    for key in sorted(final.hints):
        for holder, owner, _st in final.hints[key]:
            res.violations.append(Violation(
                res.name, f"{holder} still keeps a hint of {show(key)} for {owner}", key))
    res.detail = f"{sum(len(v) for v in final.hints.values())} hints kept"
    return res


def sibling_pairs(values: list[bytes], key: bytes, causal: Causality,
                  dots: DotIndex) -> Iterator[tuple[bytes, OpRecord]]:
    """(u, writer of v) for siblings u, v (values, as a GET returns them) where v's
    writer saw u."""
    for v in values:
        writer = causal.put_by_value.get((key, v))
        if writer is None:
            continue
        for u in values:
            if u == v:
                continue
            du = dots.by_value.get((key, u))
            if du is not None and causal.saw(writer, du, strict=True):
                yield u, writer


def live_sibling_pairs(state: DVVSet, key: bytes, causal: Causality,
                       dots: DotIndex) -> Iterator[tuple[bytes, OpRecord]]:
    """As sibling_pairs, for a stored state: each value judged by the issuance whose
    dot is live in it (a value issued twice may be live under either)."""
    live = [(dots.issued.get((key, a, c)), v) for a, c, v in state.dots() if v is not None]
    known = [(d, v) for d, v in live if d is not None and d.value == v]
    for dv, v in known:
        writer = causal.put_by_value.get((key, v))
        if writer is None:
            continue
        for du, u in known:
            if u != v and causal.saw(writer, du, strict=True, issuance=dv):
                yield u, writer


def check_siblings(history: list[OpRecord], dots: DotIndex, final: FinalState | None,
                   causal: Causality | None = None) -> CheckResult:
    """Live siblings are pairwise concurrent, in every get result and final state."""
    res = CheckResult("siblings")
    causal = causal or Causality(history, dots)
    most = 0
    for rec in history:
        if rec.op != "GET" or rec.outcome != OK:
            continue
        vals = rec.values
        most = max(most, len(vals))
        if len(vals) < 2:
            continue
        for u, writer in sibling_pairs(vals, rec.key, causal, dots):
            res.violations.append(Violation(
                res.name, f"#{rec.id} GET {show(rec.key)} at {rec.end:.3f}s returned siblings "
                f"{show(u)} and {show(writer.value)}, but {_describe(writer)} had seen "
                f"{show(u)}", rec.key))
    if final is not None:
        for key in sorted(final.states):
            for node, st in final.states[key].items():
                if st is None:
                    continue
                most = max(most, len(st.live_values()))
                for u, writer in live_sibling_pairs(st, key, causal, dots):
                    res.violations.append(Violation(
                        res.name, f"{node} holds siblings {show(u)} and {show(writer.value)} "
                        f"of {show(key)}, but {_describe(writer)} had seen {show(u)}", key))
    res.detail = f"at most {most} siblings seen"
    return res


def check_membership(final: FinalState) -> CheckResult:
    """Every up node's view is the same and names every node as alive."""
    res = CheckResult("membership")
    want = {n: "alive" for n in final.nodes}
    for node in final.up:
        view = final.views.get(node, {})
        if view != want:
            missing = sorted(set(want) - set(view))
            extra = sorted(set(view) - set(want))
            wrong = sorted(f"{m}={s}" for m, s in view.items() if m in want and s != "alive")
            parts = ([f"missing {','.join(missing)}"] if missing else []) + \
                    ([f"unknown {','.join(extra)}"] if extra else []) + \
                    ([f"sees {' '.join(wrong)}"] if wrong else [])
            res.violations.append(Violation(res.name, f"{node}'s view: {'; '.join(parts)}"))
    res.detail = f"{len(final.up)} up nodes"
    return res


class ViewRecorder:
    """The gossip view of every node process, followed as it changes.

    The harness calls `observe` after every step of a node with its view, member
    name -> (incarnation, state). A process is a node name and its epoch (a
    restart starts a new view from nothing); a member that leaves a view (reaped)
    starts afresh if it comes back."""

    def __init__(self) -> None:
        self.views: dict[tuple[str, int], dict[str, tuple[int, str]]] = {}
        self.violations: list[Violation] = []
        self.changes = 0
        """Changes of some member's (incarnation, state) in some view."""

    def observe(self, t: float, node: str, epoch: int,
                view: dict[str, tuple[int, str]]) -> None:
        old = self.views.get((node, epoch))
        self.views[(node, epoch)] = view
        if old is None or old == view:
            return
        for name, now in view.items():
            was = old.get(name)
            if was is None or was == now:
                continue
            self.changes += 1
            if now[0] < was[0]:
                self.violations.append(Violation(
                    "incarnations", f"at {t:.3f}s {node} took {name} from {was[1]} at "
                    f"incarnation {was[0]} back to {now[1]} at incarnation {now[0]}: news "
                    "about an older incarnation overrode newer news"))


def check_incarnations(views: ViewRecorder) -> CheckResult:
    """No view of a member's incarnation goes back (see the module docstring)."""
    res = CheckResult("incarnations", list(views.violations))
    res.detail = f"{len(views.views)} views followed, {views.changes} changes"
    return res


def check_coordinators(dots: DotIndex, final: FinalState) -> CheckResult:
    """Every write was coordinated by one of its key's primaries.

    The simulated cluster never changes its membership, so the ring is the same
    all along and a node that gives a key a new dot without being one of its
    primaries was working from a wrong view of the cluster (its write lands where
    reads do not look)."""
    res = CheckResult("coordinators")
    wrong: dict[tuple[str, bytes], list[DotInfo]] = {}
    issuances = [d for ds in dots.tombstones.values() for d in ds] + list(dots.by_value.values())
    for d in issuances:
        pref = final.preference.get(d.key)
        if pref is not None and d.node not in pref:
            wrong.setdefault((d.node, d.key), []).append(d)
    for (node, key), ds in sorted(wrong.items()):
        ds.sort(key=lambda d: d.t)
        res.violations.append(Violation(
            res.name, f"{node} coordinated {len(ds)} write(s) of {show(key)} between "
            f"{ds[0].t:.3f}s and {ds[-1].t:.3f}s, but its primaries are "
            f"{','.join(final.preference[key])}", key))
    res.detail = f"{dots.count} dots issued"
    return res


def check_dots_unique(dots: DotIndex) -> CheckResult:
    res = CheckResult("dots-unique", list(dots.reuses))
    res.detail = f"{dots.count} dots issued"
    return res


def check_history_complete(history: list[OpRecord]) -> CheckResult:
    res = CheckResult("history")
    for rec in history:
        if rec.outcome == PENDING:
            res.violations.append(Violation(
                res.name, f"{_describe(rec)} never completed", rec.key))
    res.detail = f"{len(history)} operations"
    return res


def check_all(history: list[OpRecord], dots: DotIndex, final: FinalState, *,
              hinted_handoff: bool, r: int, w: int, lww_prefixes: tuple[bytes, ...] = (),
              damaged: Mapping[bytes, list[float]] | None = None) -> list[CheckResult]:
    """Every checker, in the order the report prints them."""
    causal = Causality(history, dots)
    return [
        check_membership(final),
        check_coordinators(dots, final),
        check_acked_writes(history, dots, final, hints_count=not hinted_handoff, causal=causal),
        check_resurrection(history, dots, final, causal),
        check_blind_puts(history, dots, n=final.n, r=r, w=w, lww_prefixes=lww_prefixes,
                         damaged=damaged, causal=causal),
        check_convergence(final),
        *([check_hints_drained(final)] if hinted_handoff else []),
        check_siblings(history, dots, final, causal),
        check_dots_unique(dots),
        check_history_complete(history),
    ]


class IncrementalChecker:
    """The checks that must hold after every step, run over what is new since the last."""

    def __init__(self, history: list[OpRecord], log: list[DiskWrite]) -> None:
        self.history = history
        self.log = log
        self.dots = DotIndex()
        self._pos = 0

    def step(self) -> list[Violation]:
        out = self.dots.ingest(self.log)
        causal: Causality | None = None
        hist = self.history
        while self._pos < len(hist) and hist[self._pos].outcome != PENDING:
            rec = hist[self._pos]
            self._pos += 1
            if rec.op == "GET" and rec.outcome == OK and len(rec.values) > 1:
                causal = causal or Causality(hist, self.dots)
                for u, writer in sibling_pairs(rec.values, rec.key, causal, self.dots):
                    out.append(Violation("siblings", f"#{rec.id} GET {show(rec.key)} returned "
                                         f"{show(u)} beside {_describe(writer)}, which had "
                                         f"seen it", rec.key))
        return out
