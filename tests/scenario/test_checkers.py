"""The checkers on hand-made histories: each rule passes on a correct history and
fails on one that breaks it, so a checker that cannot fail is caught here."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from ringfs.dvv import DVVSet, Entry, encode_context
from ringfs.node import hint_key
from simulations.checkers import (
    DiskWrite,
    DotIndex,
    FinalState,
    IncrementalChecker,
    ViewRecorder,
    check_acked_writes,
    check_all,
    check_blind_puts,
    check_convergence,
    check_dots_unique,
    check_hints_drained,
    check_history_complete,
    check_incarnations,
    check_membership,
    check_resurrection,
    check_siblings,
)
from simulations.harness import Simulation
from simulations.scenario import Scenario
from simulations.workload import OpRecord, WorkloadConfig

K = b"k"
NODES = ["n1", "n2", "n3"]


def state(*entries: Entry) -> DVVSet:
    return DVVSet(tuple(sorted(entries)))


def meta(st: DVVSet) -> bytes:
    return msgpack.packb(st.to_wire(), use_bin_type=True)  # type: ignore[no-any-return]


def ctx(**vv: int) -> bytes:
    return encode_context(vv)


class History:
    """A tiny builder of histories and disk logs."""

    def __init__(self) -> None:
        self.ops: list[OpRecord] = []
        self.log: list[DiskWrite] = []
        self._last: dict[tuple[str, bytes], bytes] = {}

    def op(self, op: str, start: float, end: float, *, value: bytes | None = None,
           context: bytes | None = None, source: int | None = None, outcome: str = "ok",
           result: Any = None, client: str = "c0") -> OpRecord:
        rec = OpRecord(len(self.ops), client, op, K, value, context, source, "n1", start,
                       end=end, outcome=outcome, result=result)
        self.ops.append(rec)
        return rec

    def put(self, value: bytes, start: float, end: float, **kw: Any) -> OpRecord:
        return self.op("PUT", start, end, value=value,
                       result={"context": b"", "siblings": 1}, **kw)

    def get(self, start: float, end: float, values: list[bytes], context: bytes,
            **kw: Any) -> OpRecord:
        return self.op("GET", start, end,
                       result={"found": bool(values), "values": values, "context": context},
                       **kw)

    def disk(self, t: float, st: DVVSet, node: str = "n1", key: bytes = K,
             actor: str = "a") -> None:
        """`node`, running as `actor`, stores `st` (issuing actor's newest dot if new)."""
        m = meta(st)
        self.log.append(DiskWrite(t, node, key, self._last.get((node, key)), m, actor))
        self._last[(node, key)] = m

    def dots(self) -> DotIndex:
        d = DotIndex()
        d.ingest(self.log)
        return d


def final(per_node: dict[str, DVVSet | None], *,
          hints: list[tuple[str, str, DVVSet]] | None = None,
          views: dict[str, dict[str, str]] | None = None) -> FinalState:
    states: dict[str, DVVSet | None] = {n: per_node.get(n) for n in NODES}
    alive = {n: "alive" for n in NODES}
    return FinalState(n=3, nodes=NODES, up=NODES, views=views or {n: alive for n in NODES},
                      preference={K: tuple(NODES)}, states={K: states},
                      hints={K: hints} if hints else {})


def everywhere(st: DVVSet) -> dict[str, DVVSet | None]:
    return {n: st for n in NODES}


def overwrite() -> tuple[History, DVVSet]:
    """v1 written blind; a client reads it and overwrites it with v2."""
    h = History()
    h.put(b"v1", 1.0, 1.1)
    h.disk(1.05, state(("a", 1, (b"v1",))))
    h.get(1.2, 1.3, [b"v1"], ctx(a=1), client="c1")
    h.put(b"v2", 1.4, 1.5, context=ctx(a=1), source=1, client="c1")
    v2 = state(("a", 2, (b"v2",)))
    h.disk(1.45, v2)
    return h, v2


# -- acked writes ---------------------------------------------------------------------

def test_a_superseded_write_is_not_lost() -> None:
    h, v2 = overwrite()
    res = check_acked_writes(h.ops, h.dots(), final(everywhere(v2)), hints_count=True)
    assert res.ok, res.violations
    assert "1 present, 1 superseded" in res.detail


def test_a_write_missing_from_the_final_state_is_lost() -> None:
    h, _ = overwrite()
    older = state(("a", 1, (b"v1",)))  # every replica rolled back to before v2
    res = check_acked_writes(h.ops, h.dots(), final(everywhere(older)), hints_count=True)
    assert [v.message.split(":")[0] for v in res.violations] == \
        ["lost #2 c1 PUT v2 (context from #1) [1.400s..1.500s ok]"]


def test_a_write_dropped_by_a_context_older_than_it_is_lost() -> None:
    """A context with high counters that predates the write (as after counters are
    issued again) does not justify dropping it."""
    h = History()
    h.get(0.1, 0.5, [b"v0"], ctx(a=5))  # #0: an old read of another generation
    h.put(b"v1", 1.0, 1.1)  # #1: written after the old read ended
    h.disk(1.05, state(("a", 1, (b"v1",))))
    h.put(b"v2", 1.4, 1.5, context=ctx(a=5), source=0)  # #2: writes with the old context
    v2 = state(("a", 6, (b"v2",)))
    h.disk(1.45, v2)
    res = check_acked_writes(h.ops, h.dots(), final(everywhere(v2)), hints_count=True)
    assert len(res.violations) == 1
    assert "lost #1 c0 PUT v1" in res.violations[0].message
    assert "no write saw it" in res.violations[0].message


def test_a_write_kept_only_as_a_hint_counts_until_handoff_exists() -> None:
    h, v2 = overwrite()
    v1 = state(("a", 1, (b"v1",)))
    f = final(everywhere(v1), hints=[("n4", "n2", v2)])
    assert check_acked_writes(h.ops, h.dots(), f, hints_count=True).ok
    assert not check_acked_writes(h.ops, h.dots(), f, hints_count=False).ok


def test_an_acknowledged_write_no_disk_stored_is_reported() -> None:
    h = History()
    h.put(b"ghost", 1.0, 1.1)
    res = check_acked_writes(h.ops, h.dots(), final({}), hints_count=True)
    assert "no disk ever stored it" in res.violations[0].message


def test_a_failed_write_may_be_lost() -> None:
    h = History()
    h.put(b"v1", 1.0, 1.1, outcome="error")
    h.disk(1.05, state(("a", 1, (b"v1",))))
    assert check_acked_writes(h.ops, h.dots(), final({}), hints_count=True).ok


# -- resurrection -----------------------------------------------------------------------

def deleted() -> History:
    h = History()
    h.put(b"v1", 1.0, 1.1)
    h.disk(1.05, state(("a", 1, (b"v1",))))
    h.get(1.2, 1.3, [b"v1"], ctx(a=1))
    h.op("DELETE", 1.4, 1.5, context=ctx(a=1), source=1, result={"context": b"",
                                                                   "siblings": 0})
    h.disk(1.45, state(("a", 1, ()), ("b", 1, (None,))), actor="b")
    return h


def test_a_deleted_key_that_stays_deleted_passes() -> None:
    h = deleted()
    tomb = state(("a", 1, ()), ("b", 1, (None,)))
    res = check_resurrection(h.ops, h.dots(), final(everywhere(tomb)))
    assert res.ok and "1 absent" in res.detail


def test_a_deleted_value_that_comes_back_is_caught() -> None:
    h = deleted()
    back = state(("a", 1, (b"v1",)), ("b", 1, (None,)))  # the delete kept v1 live
    res = check_resurrection(h.ops, h.dots(), final(everywhere(back)))
    assert len(res.violations) == 1
    assert "v1 is live in the final state of key k" in res.violations[0].message
    assert "DELETE" in res.violations[0].message


def test_a_value_concurrent_with_the_delete_may_survive() -> None:
    h = deleted()
    h.put(b"v9", 1.41, 1.6, client="c9")  # blind, concurrent: stored beside the tombstone
    both = state(("a", 1, ()), ("b", 1, (None,)), ("c", 1, (b"v9",)))
    h.disk(1.55, state(("c", 1, (b"v9",))), node="n2", actor="c")
    assert check_resurrection(h.ops, h.dots(), final(everywhere(both))).ok


# -- siblings ---------------------------------------------------------------------------

def test_siblings_from_a_write_that_saw_the_other_are_caught() -> None:
    h, _ = overwrite()
    h.get(2.0, 2.1, [b"v1", b"v2"], ctx(a=2))
    res = check_siblings(h.ops, h.dots(), None)
    assert len(res.violations) == 1
    assert "returned siblings v1 and v2" in res.violations[0].message


def test_concurrent_siblings_pass() -> None:
    h = History()
    h.put(b"v1", 1.0, 1.1)
    h.disk(1.05, state(("a", 1, (b"v1",))))
    h.put(b"v2", 1.0, 1.1, context=b"", source=None, client="c1")  # saw nothing
    h.disk(1.06, state(("a", 2, (b"v2", b"v1"))))
    h.get(2.0, 2.1, [b"v1", b"v2"], ctx(a=2))
    res = check_siblings(h.ops, h.dots(), None)
    assert res.ok and "at most 2 siblings" in res.detail


def test_a_blind_write_is_judged_by_the_state_it_was_first_stored_in() -> None:
    h = History()
    h.put(b"v1", 1.0, 1.1)
    h.disk(1.05, state(("a", 1, (b"v1",))))
    h.put(b"v2", 1.2, 1.3, client="c1")  # blind: its coordinator superseded v1 ...
    h.disk(1.25, state(("a", 2, (b"v2",))))
    h.get(2.0, 2.1, [b"v1", b"v2"], ctx(a=2))  # ... so v1 may not be its sibling
    assert not check_siblings(h.ops, h.dots(), None).ok
    h2 = History()
    h2.put(b"v1", 1.0, 1.1)
    h2.disk(1.05, state(("a", 1, (b"v1",))))
    h2.put(b"v2", 1.2, 1.3, client="c1")  # blind, but its coordinator had not seen v1
    h2.disk(1.25, state(("b", 1, (b"v2",))), node="n2", actor="b")
    h2.get(2.0, 2.1, [b"v1", b"v2"], ctx(a=1, b=1))
    assert check_siblings(h2.ops, h2.dots(), None).ok


def test_siblings_in_a_final_state_are_checked_too() -> None:
    h, _ = overwrite()
    both = state(("a", 2, (b"v2", b"v1")))
    res = check_siblings(h.ops, h.dots(), final({"n3": both}))
    assert len(res.violations) == 1 and res.violations[0].message.startswith("n3 holds")


# -- convergence, membership, dots, history --------------------------------------------------

def test_convergence() -> None:
    a = state(("a", 1, (b"v1",)))
    b = state(("a", 2, (b"v2",)))
    tomb = state(("a", 2, (None,)))
    assert check_convergence(final(everywhere(a))).ok
    # A tombstone and a reaped key read alike.
    assert check_convergence(final({"n1": tomb, "n2": None, "n3": tomb})).ok
    res = check_convergence(final({"n1": a, "n2": b, "n3": a}))
    assert len(res.violations) == 1 and "replicas of k differ" in res.violations[0].message


def test_hints_must_drain() -> None:
    a = state(("a", 1, (b"v1",)))
    assert check_hints_drained(final(everywhere(a))).ok
    res = check_hints_drained(final(everywhere(a), hints=[("n4", "n2", a)]))
    assert [v.message for v in res.violations] == ["n4 still keeps a hint of k for n2"]


def test_membership() -> None:
    alive = {n: "alive" for n in NODES}
    assert check_membership(final({})).ok
    split = {"n1": alive, "n2": alive, "n3": {"n3": "alive", "n1": "dead"}}
    res = check_membership(final({}, views=split))
    assert [v.message for v in res.violations] == ["n3's view: missing n2; sees n1=dead"]


def test_a_dot_issued_twice_is_caught() -> None:
    h = History()
    h.disk(1.0, state(("a", 1, (b"v1",))))
    h.disk(1.1, state(("a", 1, (b"v1",))), node="n2", actor="b")  # a replica: no issuance
    assert check_dots_unique(h.dots()).ok
    h.log.append(DiskWrite(1.5, "n1", K, h.log[0].meta, None, "a"))  # reaped
    h._last.pop(("n1", K))
    h.disk(2.0, state(("a", 1, (None,))))  # the counter starts again, for a delete
    res = check_dots_unique(h.dots())
    assert [v.message for v in res.violations] == [
        "dot (a, 1) of key k was issued at 1.000s by n1 for v1, and again at 2.000s for "
        "<tombstone>"]


def test_an_operation_that_never_completed_is_caught() -> None:
    h = History()
    h.op("GET", 1.0, -1.0, outcome="pending")
    assert not check_history_complete(h.ops).ok


def test_the_incremental_checker_sees_new_results_only_once() -> None:
    h, _ = overwrite()
    inc = IncrementalChecker(h.ops, h.log)
    assert inc.step() == []
    h.get(2.0, 2.1, [b"v1", b"v2"], ctx(a=2))
    assert len(inc.step()) == 1
    assert inc.step() == []


# -- the whole pipeline ------------------------------------------------------------------------

@pytest.mark.parametrize("tamper", ["rollback", "none"])
def test_a_run_whose_disks_lose_acknowledged_writes_fails(tamper: str) -> None:
    """Rolling every replica of a key back after the run is reported as lost writes."""
    sc = Scenario("tiny", nodes=3, duration_s=3.0, liveness_s=20.0,
                  workload=WorkloadConfig(clients=2, keys=1, rate_ops_s=40))
    sim = Simulation(sc, 5)
    sim.setup()
    sim.advance(sc.duration_s)
    assert sim.workload is not None
    sim.workload.stop()  # a later write would supersede what the rollback loses
    sim.world.run_for(1.0)
    assert sim.workload.inflight == 0
    if tamper == "rollback":
        for name in sim.names:
            sim.world.nodes[name].engine.purge(b"k000")
    sim.world.run_for(0.1)
    report = sim.finish()
    if tamper == "none":
        assert report.ok, report.render()
    else:
        assert "acked-writes" in report.failed_checks()


def test_incarnations_never_go_back_in_a_view() -> None:
    rec = ViewRecorder()
    rec.observe(1.0, "n1", 1, {"n1": (0, "alive"), "n2": (0, "alive")})
    rec.observe(2.0, "n1", 1, {"n1": (0, "alive"), "n2": (0, "suspect")})
    rec.observe(3.0, "n1", 1, {"n1": (0, "alive"), "n2": (1, "alive")})  # refuted
    rec.observe(4.0, "n1", 1, {"n1": (0, "alive")})  # reaped
    rec.observe(5.0, "n1", 1, {"n1": (0, "alive"), "n2": (0, "alive")})  # back afresh
    rec.observe(6.0, "n1", 2, {"n1": (0, "alive"), "n2": (0, "alive")})  # n1 restarted
    assert check_incarnations(rec).ok
    # A stale suspicion about incarnation 0 undoes the refutation: the injected
    # defect wrong_incarnation_precedence.
    rec.observe(7.0, "n1", 2, {"n1": (0, "alive"), "n2": (1, "alive")})
    rec.observe(8.0, "n1", 2, {"n1": (0, "alive"), "n2": (0, "suspect")})
    res = check_incarnations(rec)
    assert [v.message for v in res.violations] == [
        "at 8.000s n1 took n2 from alive at incarnation 1 back to suspect at incarnation 0: "
        "news about an older incarnation overrode newer news"]


def rewritten(outcome: str = "ok") -> History:
    """A blind put of "new" at a stale coordinator (actor b): its first issuance
    (b, 1) did not see "old"; written again as (b, 2), it did."""
    h = History()
    h.put(b"old", 1.0, 1.1)
    h.disk(1.05, state(("a", 1, (b"old",))), node="n2", actor="a")
    h.put(b"new", 1.2, 1.4, client="c1", outcome=outcome)
    h.disk(1.25, state(("b", 1, (b"new",))), node="n1", actor="b")
    h.disk(1.3, state(("a", 1, ()), ("b", 2, (b"new",))), node="n1", actor="b")
    return h


def test_a_value_written_again_is_judged_by_the_issuance_that_is_live() -> None:
    h = rewritten()
    # The second issuance saw "old": both live beside it is a sibling it should
    # have removed, and "old" is revived.
    bad = state(("a", 1, (b"old",)), ("b", 2, (b"new",)))
    failed = {r.name for r in check_all(h.ops, h.dots(), final(everywhere(bad)),
                                        hinted_handoff=True, r=2, w=2) if not r.ok}
    assert {"siblings", "resurrection"} <= failed
    # The first issuance had not seen it: as siblings, they were concurrent (the
    # second issuance went nowhere, so the put was not acknowledged).
    h = rewritten(outcome="timeout")
    fine = state(("a", 1, (b"old",)), ("b", 1, (b"new",)))
    results = {r.name: r for r in check_all(h.ops, h.dots(), final(everywhere(fine)),
                                            hinted_handoff=True, r=2, w=2)}
    assert results["siblings"].ok and results["resurrection"].ok


def blind_after(*, seen: bool, old_end: float = 1.1) -> History:
    """"old" is acknowledged (or not yet, with a later `old_end`), then a blind put
    of "new" starts; its coordinator n1 stores it over a copy that had seen "old"
    or not."""
    h = History()
    h.put(b"old", 1.0, old_end)
    h.disk(1.05, state(("a", 1, (b"old",))), node="n2", actor="a")
    h.put(b"new", 1.2, 1.3, client="c1")
    h.disk(1.25, state(("a", 1, ()), ("b", 1, (b"new",))) if seen
           else state(("b", 1, (b"new",))), node="n1", actor="b")
    return h


def blind_puts_ok(h: History, **kw: Any) -> bool:
    args: dict[str, Any] = {"n": 3, "r": 2, "w": 2, **kw}
    return check_blind_puts(h.ops, h.dots(), **args).ok


def test_a_blind_put_must_supersede_what_was_acknowledged_before_it() -> None:
    assert blind_puts_ok(blind_after(seen=True))
    h = blind_after(seen=False)
    res = check_blind_puts(h.ops, h.dots(), n=3, r=2, w=2)
    assert not res.ok
    assert "did not supersede #0 c0 PUT old" in res.violations[0].message
    # Still running when the blind put began: the two were concurrent.
    assert blind_puts_ok(blind_after(seen=False, old_end=1.22))


def test_blind_puts_are_judged_under_strict_quorums_only() -> None:
    h = blind_after(seen=False)
    # R + W <= N, or 2W <= N (with fewer than R replicas up a put needs only W).
    assert blind_puts_ok(h, r=1, w=2)
    assert blind_puts_ok(h, r=3, w=1)
    assert "not judged" in check_blind_puts(h.ops, h.dots(), n=3, r=3, w=1).detail
    assert not blind_puts_ok(h, r=3, w=2)
    # A last-write-wins key is checked against one replica.
    assert blind_puts_ok(h, lww_prefixes=(K,))
    # A fallback took "old" for n3 (a sloppy quorum): it may survive as a sibling.
    sloppy = blind_after(seen=False)
    sloppy.disk(1.06, state(("a", 1, (b"old",))), node="n4", key=hint_key("n3", K), actor="a")
    assert blind_puts_ok(sloppy)
    # Taken for another node itself.
    sloppy = blind_after(seen=False)
    sloppy.disk(1.27, state(("b", 1, (b"new",))), node="n4", key=hint_key("n3", K), actor="b")
    assert blind_puts_ok(sloppy)
    # ... but a fallback that got the value later (read repair, a later sloppy
    # write carrying it) did not make its write sloppy.
    late = blind_after(seen=False)
    late.disk(1.15, state(("a", 1, (b"old",))), node="n4", key=hint_key("n3", K), actor="a")
    late.disk(1.35, state(("b", 1, (b"new",))), node="n4", key=hint_key("n3", K), actor="b")
    assert not blind_puts_ok(late)
    # The key was reaped, or a copy damaged by bit rot, in between (damage as late
    # as while the blind put was in flight: the replica then has nothing to refuse).
    reaped = blind_after(seen=False)
    reaped.log.append(DiskWrite(1.15, "n2", K, reaped.log[0].meta, None, "a"))
    assert blind_puts_ok(reaped)
    assert blind_puts_ok(h, damaged={K: [1.15]})
    assert blind_puts_ok(h, damaged={K: [1.22]})
    assert not blind_puts_ok(h, damaged={K: [0.5]})
    # A hint dropped after its handoff removes nothing from the owners.
    handed = blind_after(seen=False)
    hk = hint_key("n3", K)
    handed.disk(1.06, state(("a", 1, (b"old",))), node="n4", key=hk, actor="a")
    handed.log.append(DiskWrite(1.15, "n4", hk, handed.log[-1].meta, None, "a"))
    assert blind_puts_ok(handed)  # (sloppy: the fallback took "old" while it was written)
    handed.ops[0].start, handed.ops[0].end = 1.07, 1.1
    assert not blind_puts_ok(handed)
    # A put with a context is judged by the other checks.
    h.ops[1].context_sent = ctx(a=1)
    assert blind_puts_ok(h)


def test_a_get_may_see_the_first_issuance_beside_what_the_second_supersedes() -> None:
    h = rewritten()
    h.get(1.26, 1.27, [b"old", b"new"], ctx(a=1, b=1))  # between the two writes
    final_state = state(("a", 1, ()), ("b", 2, (b"new",)))
    results = {r.name: r for r in check_all(h.ops, h.dots(), final(everywhere(final_state)),
                                            hinted_handoff=True, r=2, w=2)}
    assert results["siblings"].ok, results["siblings"].violations
