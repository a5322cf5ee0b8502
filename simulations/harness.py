"""The partition-simulation harness: a scenario, a workload, faults, then the checkers.

A run has two phases, after TigerBeetle's VOPR:

1. safety: the workload's clients put, get and delete with contexts while the
   scenario's timeline partitions, clogs, flaps, crashes, pauses and skews the
   cluster. Nodes are the real `Node` objects, driven by `SimWorld`.
2. liveness: the workload stops, everything heals (network faults cleared,
   crashed nodes restarted), operations in flight finish, and the cluster must
   converge within the scenario's `liveness_s`. Until anti-entropy exists the
   harness drives convergence itself: it reads every key with R=N from a live
   node, so read repair runs, then gives repairs a second to land.

Every disk is a RecordingEngine: a MemoryEngine (a crash loses what no sync
covered) that also logs each state it stores, so the checkers learn the dot of
every write, including writes later superseded or lost. Simulated bit rot is not
modelled.

Everything random derives from the seed; the report holds no wall-clock figure
unless asked for, so the same seed prints the same report, byte for byte.
"""

from __future__ import annotations

import gc
import random
import textwrap
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from ringfs.dvv import DVVSet, decode_stored
from ringfs.lww import matches as lww_matches
from ringfs.lww import newest as lww_newest
from ringfs.node import GC_THRESHOLDS, HINT_PREFIX, LOCAL_PREFIX
from ringfs.storage.memory import MemoryEngine
from ringfs.wire import Op
from simulations.checkers import (
    CheckResult,
    DiskWrite,
    DotIndex,
    FinalState,
    IncrementalChecker,
    ViewRecorder,
    Violation,
    check_all,
    check_convergence,
    check_incarnations,
    main_key,
    show,
    stored_state,
)
from simulations.loop import Handle
from simulations.scenario import FaultEvent, Scenario, expand_all
from simulations.workload import ERROR, OK, TIMEOUT, OpRecord, Workload
from simulations.world import SimClient, SimNode, SimWorld


@contextmanager
def roomy_gc() -> Iterator[None]:
    """Collect garbage less often while a run lasts (GC_THRESHOLDS, as `ringfs node`
    does): a run allocates millions of short-lived objects and few cycles."""
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*old)


@dataclass(frozen=True)
class Features:
    """Which protocol features exist, so the harness knows what to demand of them.

    Flip a flag when its feature lands: the liveness phase and the checkers then
    rely on it instead of standing in for it.
    """

    hinted_handoff: bool = True
    """Hints must be delivered: acknowledged writes must reach the primaries and no
    hint may remain after the liveness phase. While False, hints count as copies."""
    anti_entropy: bool = True
    """Replicas converge by themselves: the liveness phase stops reading every key
    (which made read repair do the work) and only waits."""


FEATURES = Features()
"""What ringfs implements today."""


class RecordingEngine(MemoryEngine):
    """A MemoryEngine that logs every state it stores (for the checkers)."""

    def __init__(self, name: str, log: list[DiskWrite], clock: Callable[[], float],
                 actor: Callable[[], str]) -> None:
        super().__init__()
        self.name = name
        self._log = log
        self._clock = clock
        self._actor = actor

    def _note(self, key: bytes, meta: bytes | None) -> None:
        prev = self.get(key)
        # tuple.__new__: DiskWrite(...) without its generated Python __new__ (every write).
        self._log.append(tuple.__new__(DiskWrite, (self._clock(), self.name, key,
                                                   prev.meta if prev is not None else None,
                                                   meta, self._actor())))

    def put(self, key: bytes, value: bytes, meta: bytes = b"") -> int:
        self._note(key, meta)
        return super().put(key, value, meta)

    def delete(self, key: bytes, meta: bytes = b"") -> int:
        self._note(key, meta)
        return super().delete(key, meta)

    def purge(self, key: bytes) -> None:
        if self.get(key) is not None:
            self._note(key, None)
        super().purge(key)


@dataclass
class _Loss:
    nodes: frozenset[str] | None
    probability: float
    duplicate: float
    jitter_s: float


class NetworkFaults:
    """Partitions, clogs and losses that compose; the network is rebuilt from them on change.

    Only links between nodes are affected: clients reach every node, so a client
    on the minority side of a partition keeps talking to its node.
    """

    def __init__(self, world: SimWorld, names: list[str]) -> None:
        self.world = world
        self.names = names
        self.partitions: dict[int, tuple[tuple[tuple[str, ...], ...], bool]] = {}
        self.clogs: dict[int, tuple[frozenset[str], float]] = {}
        self.losses: dict[int, _Loss] = {}
        self._ids = 0

    def new_id(self) -> int:
        self._ids += 1
        return self._ids

    def clear(self) -> None:
        self.partitions.clear()
        self.clogs.clear()
        self.losses.clear()
        self.apply()

    @property
    def active(self) -> bool:
        return bool(self.partitions or self.clogs or self.losses)

    def apply(self) -> None:
        net = self.world.net
        net.heal()
        addr = {n: self.world.nodes[n].address for n in self.names}
        for groups, one_way in self.partitions.values():
            if one_way:
                net.partition([addr[n] for n in groups[0]], [addr[n] for n in groups[1]],
                              one_way=True)
                continue
            for i, side in enumerate(groups):
                for other in groups[i + 1:]:
                    net.partition([addr[n] for n in side], [addr[n] for n in other])
        if not (self.clogs or self.losses):
            return
        base = net.default
        for a in self.names:
            for b in self.names:
                if a == b:
                    continue
                clog = sum(s for nodes, s in self.clogs.values() if a in nodes or b in nodes)
                loss = dup = jitter = 0.0
                for ls in self.losses.values():
                    if ls.nodes is None or a in ls.nodes or b in ls.nodes:
                        loss = max(loss, ls.probability)
                        dup = max(dup, ls.duplicate)
                        jitter = max(jitter, ls.jitter_s)
                if clog or loss or dup or jitter:
                    net.set_link(addr[a], addr[b], replace(
                        base, clog_s=base.clog_s + clog, loss=max(base.loss, loss),
                        duplicate=max(base.duplicate, dup), jitter_s=base.jitter_s + jitter),
                        both_ways=False)


@dataclass
class Report:
    """Everything a run found; `render()` is what the command line prints."""

    seed: int
    scenario: Scenario
    bugs: frozenset[str]
    timeline: list[tuple[float, str]]
    history: list[OpRecord]
    safety_end: float
    checks: list[CheckResult]
    stats: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def violations(self) -> list[Violation]:
        return [v for c in self.checks for v in c.violations]

    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    def render(self, *, max_violations: int = 5) -> str:
        s = self.scenario
        lines = [f"ringfs simulation: scenario {s.name}, seed {self.seed}, {s.nodes} nodes, "
                 f"N={s.n} R={s.r} W={s.w}, bug {','.join(sorted(self.bugs)) or 'none'}"]
        if s.description:
            lines += textwrap.wrap(s.description, 92, initial_indent="  ",
                                   subsequent_indent="  ")
        wl = s.workload
        lines.append(f"  workload: {wl.clients} clients, {wl.keys} keys, ~{wl.rate_ops_s:g} ops/s"
                     f" for {s.duration_s:g}s; puts {wl.put_ratio:g}, deletes "
                     f"{wl.delete_ratio:g}, with context {wl.context_ratio:g}")
        lines.append("")
        lines.append("timeline (simulated seconds from the start of the workload)")
        for t, text in self.timeline:
            lines.append(f"  {t:9.3f}  {text}")
        lines.append("")
        lines += self._workload_lines()
        lines.append("")
        lines.append("checks")
        for c in self.checks:
            verdict = "ok" if c.ok else f"FAIL ({len(c.violations)})"
            lines.append(f"  {c.name:<14} {verdict:<10} {c.detail}")
            for v in c.violations[:max_violations]:
                lines.append(f"      {v.message}")
            if len(c.violations) > max_violations:
                lines.append(f"      ... and {len(c.violations) - max_violations} more")
        lines.append("")
        if self.ok:
            lines.append("verdict: PASS")
        else:
            lines.append(f"verdict: FAIL ({', '.join(self.failed_checks())})")
        if self.wall_s is not None:
            lines.append(f"wall time: {self.wall_s:.2f}s")
        return "\n".join(lines) + "\n"

    def _workload_lines(self) -> list[str]:
        ops = self.history
        done = [r for r in ops if r.outcome != "pending"]
        dur = self.scenario.duration_s
        by_op = Counter(r.op for r in ops)
        outcomes = Counter(r.outcome for r in done)
        errors = Counter(r.error for r in done if r.outcome == ERROR)
        lines = [f"workload (safety phase {dur:g}s)",
                 f"  ops          {len(ops)} ({len(ops) / dur:.1f}/s): "
                 + ", ".join(f"{op.lower()} {by_op[op]}" for op in ("GET", "PUT", "DELETE")),
                 "  outcomes     " + ", ".join(f"{o} {outcomes[o]}" for o in (OK, ERROR, TIMEOUT)),
                 "  errors       " + (", ".join(f"{e} {n}" for e, n in sorted(errors.items()))
                                      or "none")]
        lines.append("  latency ms       n     p50     p90     p99     max   (ok results)")
        for op in ("GET", "PUT", "DELETE"):
            lat = sorted(r.latency_s * 1000 for r in done if r.op == op and r.outcome == OK)
            if lat:
                lines.append(f"    {op.lower():<8} {len(lat):>7} " + " ".join(
                    f"{_pct(lat, p):7.2f}" for p in (50, 90, 99)) + f" {lat[-1]:7.2f}")
        for k, v in self.stats.items():
            lines.append(f"  {k:<12} {v}")
        return lines


def _pct(sorted_vals: list[float], p: int) -> float:
    """Nearest-rank percentile."""
    i = max(0, min(len(sorted_vals) - 1, -(-p * len(sorted_vals) // 100) - 1))
    return sorted_vals[i]


class Simulation:
    """One seeded run of a scenario (or, driven step by step, of a test's choices)."""

    def __init__(self, scenario: Scenario, seed: int, *, bugs: Iterable[str] = (),
                 features: Features = FEATURES, vnodes: int = 64) -> None:
        self.scenario = expand_all(scenario)
        self.seed = seed
        self.bugs = frozenset(bugs)
        self.features = features
        self.disk_log: list[DiskWrite] = []
        s = self.scenario
        defaults: dict[str, Any] = {"n_replicas": s.n, "r": s.r, "w": s.w,
                                    "vnodes_per_capacity": vnodes, **s.node_settings}
        self.world = SimWorld(seed, link=s.network, disk=s.disk, node_defaults=defaults,
                              faults=self.bugs, engine_factory=self._engine, trace=False)
        self.names = s.node_names
        self.views = ViewRecorder()
        self.world.view_observers.append(self._observe_views)
        self.timeline: list[tuple[float, str]] = []
        self.t0 = 0.0
        self.safety_end = 0.0
        self.violations: list[Violation] = []
        self._handles: list[Handle] = []
        self.workload: Workload | None = None
        self.faults: NetworkFaults | None = None
        self.rng: random.Random | None = None
        self._sweepers: dict[str, SimClient] = {}
        self._lww_check: CheckResult | None = None
        self.sweep_failures: list[str] = []
        self.damaged: defaultdict[bytes, list[float]] = defaultdict(list)
        """Keys whose record bit rot damaged on some disk (hints apart), with when."""

    def _observe_views(self, sn: SimNode) -> None:
        """A view observer (the world calls it when the node's gossip view changed)."""
        g = sn.node.gossip
        assert g is not None
        self.views.observe(self.now, sn.name, sn.epoch, g.incarnations())

    def _engine(self, name: str) -> MemoryEngine:
        def actor() -> str:
            sn = self.world.nodes.get(name)
            return sn.node.actor if sn is not None else ""

        return RecordingEngine(name, self.disk_log, lambda: self.world.loop.now, actor)

    @property
    def now(self) -> float:
        """Simulated seconds since the workload started."""
        return self.world.now - self.t0

    def note(self, text: str) -> None:
        self.timeline.append((self.now, text))

    # -- phases ----------------------------------------------------------------------
    def setup(self, *, auto: bool = True) -> None:
        """Start the nodes, wait for their views to agree, start the clients."""
        w = self.world
        for name in self.names:
            w.add_node(name)
        addresses = [w.nodes[n].address for n in self.names]
        self._run_until(lambda: self.membership_converged(), w.now + 10.0, 0.1)
        self.t0 = w.now
        self.faults = NetworkFaults(w, self.names)
        self.rng = random.Random(w.rng.getrandbits(64))
        self.workload = Workload(w, config=self.scenario.workload)
        self.workload.start(addresses, auto=auto)
        self.note(f"{len(self.names)} nodes up, views agree; workload starts")

    def run(self) -> Report:
        """The whole run: setup, safety phase with the timeline, liveness, checks."""
        with roomy_gc():
            self.setup()
            for ev in sorted(self.scenario.events, key=lambda e: e.at):
                self._handles.append(self.world.loop.call_at(self.t0 + ev.at, self.apply, ev))
            self.advance(self.scenario.duration_s)
            return self.finish()

    def advance(self, seconds: float) -> None:
        """Run the world; node invariants are checked every simulated second."""
        end = self.world.now + seconds
        while self.world.now < end and not self.violations:
            try:
                self.world.run_for(min(1.0, end - self.world.now))
            except AssertionError as exc:
                self.violations.append(Violation("node-invariants",
                                                 f"at {self.now:.3f}s: {exc}"))

    def finish(self) -> Report:
        """Stop the workload, heal everything, demand convergence, run the checkers."""
        w = self.world
        wl = self.workload
        assert wl is not None and self.faults is not None
        self.safety_end = w.now
        wl.stop()
        for h in self._handles:
            h.cancel()
        self._handles.clear()
        self.faults.clear()
        down = [n for n in self.names if not w.nodes[n].up]
        for n in down:
            w.restart(n)
        self.note("safety phase over: workload stops, network heals"
                  + (f", {','.join(down)} restart" if down else ""))
        deadline = w.now + self.scenario.liveness_s
        self._run_until(lambda: wl.inflight == 0, deadline, 0.05)
        settle = float(self.scenario.node_settings.get("unreachable_s", 2.0)) + 1.0
        w.run_for(max(0.0, self.safety_end + settle - w.now))
        self._run_until(self.membership_converged, deadline, 0.25)
        if self.features.hinted_handoff:
            # Hints first: a hint delivered after the reads below would leave its owner
            # ahead of the other replicas. Half the remaining time at most.
            self._run_until(lambda: self._hints_left() == 0,
                            w.now + (deadline - w.now) / 2, 0.25)
            self.note(f"liveness: hinted handoff; {self._hints_left()} hints left")
        if self.features.anti_entropy:
            self._run_until(self.converged, deadline, 0.5)
            self.note("liveness: waited for anti-entropy")
        else:
            self._sweep(deadline)
            w.run_for(1.0)
            self.note(f"liveness: read every key with R={self.scenario.n} "
                      f"(read repair); {len(self.sweep_failures)} unreadable")
        if self.converged():
            self._lww_check = self._read_lww_keys()
        self.note("final state taken; checks run")
        return self.report()

    # -- liveness helpers --------------------------------------------------------------
    def _run_until(self, done: Callable[[], bool], limit: float, poll_s: float) -> bool:
        w = self.world
        while not done():
            if w.now >= limit:
                return False
            try:
                w.run_for(min(poll_s, limit - w.now))
            except AssertionError as exc:
                self.violations.append(Violation("node-invariants", f"at {self.now:.3f}s: {exc}"))
                return False
        return True

    def membership_converged(self) -> bool:
        views = [self.view(n) for n in self.names if self.world.nodes[n].up]
        want = {n: "alive" for n in self.names}
        return all(v == want for v in views)

    def view(self, name: str) -> dict[str, str]:
        members = self.world.nodes[name].node.membership.members
        return {m: members[m].state for m in sorted(members)}

    def converged(self) -> bool:
        final = self.snapshot()
        return check_convergence(final).ok

    def _hints_left(self) -> int:
        return sum(1 for sn in self.world.nodes.values()
                   for k, _ in sn.engine.iter_range(0, 0) if k.startswith(HINT_PREFIX))

    def _sweep(self, deadline: float) -> None:
        """Read every key with R=N through some live node, retrying until the deadline."""
        assert self.workload is not None
        w = self.world
        order = [n for n in self.names if w.nodes[n].up]
        for i, key in enumerate(self.workload.keys):
            done = False
            attempt = 0
            while not done and w.now < deadline:
                node = order[(i + attempt) % len(order)]
                attempt += 1
                c = self._sweeper(node)
                if c is None:
                    continue
                outcome, _ = c.call(Op.GET, {"key": key, "r": self.scenario.n},
                                    timeout_s=min(10.0, max(0.1, deadline - w.now)))
                done = outcome == OK
            if not done:
                self.sweep_failures.append(show(key))

    def _lww_prefixes(self) -> tuple[bytes, ...]:
        return tuple(p.encode() for p in self.scenario.node_settings.get("lww_prefixes", ()))

    def _read_lww_keys(self) -> CheckResult | None:
        """With last-write-wins keys, once converged: every up node must answer a GET
        of each such key with the newest stamped value the replicas hold, unstamped
        (the checks above see stamps taken off, so only this one judges LWW reads)."""
        prefixes = self._lww_prefixes()
        if not prefixes:
            return None
        assert self.workload is not None
        res = CheckResult("lww-reads")
        w = self.world
        up = [n for n in self.names if w.nodes[n].up]
        keys = [k for k in self.workload.keys if lww_matches(k, prefixes)]
        reads = 0
        for key in keys:
            merged = DVVSet()
            for n in up:
                rec = w.nodes[n].engine.get(key)
                if rec is not None:
                    merged = merged.sync(decode_stored(rec.meta))
            newest = lww_newest(merged)
            want = [] if newest is None else [newest]
            for n in up:
                c = self._sweeper(n)
                if c is None:
                    continue
                outcome, result = c.call(Op.GET, {"key": key, "r": self.scenario.n})
                reads += 1
                got = result.get("values") if outcome == OK else outcome
                if got != want:
                    res.violations.append(Violation(
                        res.name, f"GET {show(key)} through {n} returned "
                        f"{got if isinstance(got, str) else [show(v) for v in got]}, "
                        f"the newest stamped value is {[show(v) for v in want]}", key))
        res.detail = f"{reads} reads of {len(keys)} keys after convergence"
        return res

    def _sweeper(self, node: str) -> SimClient | None:
        c = self._sweepers.get(node)
        if c is None:
            c = self.world.add_client(f"sweep-{node}")
            try:
                c.open(self.world.nodes[node].address)
            except RuntimeError:
                return None
            self._sweepers[node] = c
        return c

    # -- faults ----------------------------------------------------------------------
    def apply(self, ev: FaultEvent) -> None:
        """Carry out one timeline event now."""
        w = self.world
        f = self.faults
        assert f is not None and self.rng is not None
        self.note(ev.describe())
        a = ev.action
        if a in ("partition", "isolate"):
            if a == "isolate":
                others = tuple(n for n in self.names if n not in ev.nodes)
                groups: tuple[tuple[str, ...], ...] = (ev.nodes, others)
            else:
                groups = ev.groups
            pid = f.new_id()
            f.partitions[pid] = (groups, ev.one_way)
            f.apply()
            if ev.duration_s is not None:
                self._later(ev.duration_s, self._end_fault, f.partitions, pid, f"{a} ends")
        elif a == "heal":
            f.clear()
        elif a == "crash":
            for n in ev.nodes:
                w.crash(n)
            if ev.duration_s is not None:
                self._later(ev.duration_s, self._restart, ev.nodes)
        elif a == "restart":
            for n in ev.nodes:
                w.restart(n)
        elif a == "pause":
            assert ev.duration_s is not None
            for n in ev.nodes:
                w.pause(n, ev.duration_s)
        elif a == "skew":
            for n in ev.nodes:
                w.set_skew(n, ev.skew_s)
        elif a == "clog":
            cid = f.new_id()
            f.clogs[cid] = (frozenset(ev.nodes), ev.clog_s)
            f.apply()
            if ev.duration_s is not None:
                self._later(ev.duration_s, self._end_fault, f.clogs, cid, "clog ends")
        elif a == "loss":
            lid = f.new_id()
            f.losses[lid] = _Loss(frozenset(ev.nodes) if ev.nodes else None, ev.probability,
                                  ev.duplicate, ev.jitter_s)
            f.apply()
            if ev.duration_s is not None:
                self._later(ev.duration_s, self._end_fault, f.losses, lid, "loss ends")
        elif a == "rot":
            for n in ev.nodes:
                hit = w.rot(n, ev.probability, self.rng)
                for stored in hit:
                    key, owner = main_key(stored)
                    if owner is None:  # (a damaged hint leaves the owners' copies be)
                        self.damaged[key].append(w.now)
                self.note(f"{len(hit)} records of {n} damaged")
        elif a == "flap":
            assert ev.duration_s is not None
            self._flap(ev, f.new_id(), self.world.now + ev.duration_s, 0)
        else:  # validated when the scenario was read
            raise ValueError(f"unknown action {a!r}")

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self._handles.append(self.world.loop.call_later(delay, fn, *args))

    def _end_fault(self, table: dict[int, Any], fid: int, text: str) -> None:
        if table.pop(fid, None) is not None:
            assert self.faults is not None
            self.faults.apply()
            self.note(text)

    def _restart(self, nodes: tuple[str, ...]) -> None:
        back = [n for n in nodes if not self.world.nodes[n].up]
        for n in back:
            self.world.restart(n)
        if back:
            self.note(f"restart {','.join(back)}")

    def _flap(self, ev: FaultEvent, pid: int, until: float, toggles: int) -> None:
        f = self.faults
        assert f is not None and self.rng is not None
        if self.world.now >= until:
            if f.partitions.pop(pid, None) is not None:
                f.apply()
            self.note(f"flap ends after {toggles} toggles")
            return
        if pid in f.partitions:
            del f.partitions[pid]
        else:
            f.partitions[pid] = (ev.groups, ev.one_way)
        f.apply()
        delay = min(ev.period_s * (0.5 + self.rng.random()), max(0.0, until - self.world.now))
        self._later(delay, self._flap, ev, pid, until, toggles + 1)

    # -- results -----------------------------------------------------------------------
    def snapshot(self) -> FinalState:
        """Read every node's disk and view (the final state the checkers judge)."""
        w = self.world
        up = [n for n in self.names if w.nodes[n].up]
        # The ring the checks judge by: that of the node that sees the most members alive
        # (all views are equal when membership converged; when it did not, the fullest
        # view is the cluster as it was meant to be).
        best = max(up, key=lambda n: (sum(s == "alive" for s in self.view(n).values()),
                                      -self.names.index(n)), default=None)
        ref = w.nodes[best].node.membership.ring if best is not None else None
        states: dict[bytes, dict[str, DVVSet | None]] = {}
        hints: dict[bytes, list[tuple[str, str, DVVSet]]] = {}
        assert self.workload is not None
        keys = set(self.workload.keys)
        for name in self.names:
            for stored, rec in w.nodes[name].engine.iter_range(0, 0):
                if stored[:2] == LOCAL_PREFIX:
                    continue  # node bookkeeping (the saved membership view), not data
                key, owner = main_key(stored)
                st = stored_state(rec.meta)
                keys.add(key)
                if owner is None:
                    states.setdefault(key, {})[name] = st
                else:
                    hints.setdefault(key, []).append((name, owner, st))
        for key in keys:
            per = states.setdefault(key, {})
            for name in self.names:
                per.setdefault(name, None)
        n = self.scenario.n
        pref = {k: ref.preference_list(k, n) for k in sorted(keys)} if ref is not None else {}
        return FinalState(n=n, nodes=list(self.names), up=up,
                          views={name: self.view(name) for name in up},
                          preference=pref, states=dict(sorted(states.items())),
                          hints=dict(sorted(hints.items())))

    def report(self) -> Report:
        assert self.workload is not None
        final = self.snapshot()
        dots = DotIndex()
        dots.ingest(self.disk_log)
        checks = check_all(self.workload.history, dots, final,
                           hinted_handoff=self.features.hinted_handoff,
                           r=self.scenario.r, w=self.scenario.w,
                           lww_prefixes=self._lww_prefixes(), damaged=self.damaged)
        live = CheckResult("liveness", detail=f"bound {self.scenario.liveness_s:g}s")
        for key in self.sweep_failures:
            live.violations.append(Violation(
                "liveness", f"key {key} could not be read with R={self.scenario.n} "
                "within the liveness bound"))
        if self.workload.inflight:
            live.violations.append(Violation(
                "liveness", f"{self.workload.inflight} client operations still in flight"))
        inv = CheckResult("node-invariants", list(self.violations),
                          detail="Node.check_invariants every simulated second")
        checks = [inv, check_incarnations(self.views), *checks,
                  *([self._lww_check] if self._lww_check is not None else []), live]
        stats = self._stats(final)
        return Report(self.seed, self.scenario, self.bugs, list(self.timeline),
                      self.workload.history, self.safety_end - self.t0, checks, stats)

    def _stats(self, final: FinalState) -> dict[str, Any]:
        w = self.world
        counters: Counter[str] = Counter()
        for sn in w.nodes.values():
            counters.update(sn.node.counters)
        present = 0
        for k in final.preference:
            st = final.primaries_state(k)
            present += st is not None and not st.is_tombstone()
        hints = sum(len(v) for v in final.hints.values())
        return {
            "network": f"{w.net.streams_sent} stream messages, {w.net.streams_failed} failed",
            "replication": f"{counters['read_repairs']} read repairs, "
                           f"{counters['forwarded']} forwards, {counters['hints_delivered']} hints "
                           f"delivered, {counters['reaps']} reaps "
                           "(counted since each node's last start)",
            "final state": f"{len(final.preference)} keys, {present} present, "
                           f"{hints} hints kept",
        }


__all__ = ["FEATURES", "Features", "IncrementalChecker", "NetworkFaults", "RecordingEngine",
           "Report", "Simulation"]
