"""The timer heap shared by the sans-IO cores."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringfs.timers import Timers


def test_timers_run_in_time_then_schedule_order_and_cancelled_ones_never() -> None:
    t = Timers()
    ran: list[tuple[str, float]] = []

    def note(name: str, now: float) -> None:
        ran.append((name, now))

    t.at(2.0, note, "b")
    t.at(1.0, note, "a")
    late = t.at(2.0, note, "c")
    gone = t.at(0.5, note, "x")
    Timers.cancel(gone)
    assert t.next_deadline() == 1.0  # the cancelled one does not wake anyone
    for fn, args in t.due(1.5):
        fn(*args, 1.5)
    assert ran == [("a", 1.5)]
    for fn, args in t.due(2.0):
        fn(*args, 2.0)
    assert ran == [("a", 1.5), ("b", 2.0), ("c", 2.0)]
    Timers.cancel(late)  # already ran: nothing happens
    Timers.cancel(None)
    assert t.next_deadline() is None and len(t) == 0


def test_a_timer_scheduled_while_running_due_ones_runs_in_the_same_pass_when_due() -> None:
    t = Timers()
    ran: list[str] = []

    def first(now: float) -> None:
        ran.append("first")
        t.at(now, lambda now: ran.append("now"))
        t.at(now + 1, lambda now: ran.append("later"))

    t.at(1.0, first)
    for fn, args in t.due(1.0):
        fn(*args, 1.0)
    assert ran == ["first", "now"]
    assert t.next_deadline() == 2.0


@given(st.lists(st.tuples(st.floats(0, 100), st.booleans()), max_size=50), st.floats(0, 100))
def test_due_yields_exactly_the_live_timers_due_in_time_order(
        plan: list[tuple[float, bool]], now: float) -> None:
    t = Timers()
    entries = [(when, cancel, t.at(when, lambda *_: None, i)) for i, (when, cancel) in
               enumerate(plan)]
    for _, cancel, e in entries:
        if cancel:
            Timers.cancel(e)
    got = [args[0] for _, args in t.due(now)]
    want = [i for i, (when, cancel) in sorted(enumerate(plan), key=lambda p: (p[1][0], p[0]))
            if not cancel and when <= now]
    assert got == want
    rest = [when for when, cancel in plan if not cancel and when > now]
    assert t.next_deadline() == (min(rest) if rest else None)
