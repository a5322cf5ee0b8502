"""PutCoordinator against a model: ordinary writes (W acknowledgements) and checked
writes (a blind put, which needs max(W, R) acceptances and is written again over
the states of replicas that refused it as soon as one has and R have answered)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringfs.dvv import DVVSet
from ringfs.quorum import PutCoordinator, QuorumFailure
from ringfs.ring import Replica
from tests.dvv_reference import covers_values

NODES = ("a", "b", "c", "d", "e")


def coordinator(n: int, w: int, check: int) -> PutCoordinator:
    reps = tuple(Replica(NODES[i], "primary", None) for i in range(n))
    return PutCoordinator(b"k", DVVSet.new("a", b"v"), reps, w, 10.0, check)


def held(node: str) -> DVVSet:
    return DVVSet.new(node, b"held by " + node.encode())


@st.composite
def runs(draw: st.DrawFn) -> tuple[int, int, int, list[tuple[str, str]]]:
    n = draw(st.integers(1, 5))
    w = draw(st.integers(1, n))
    check = draw(st.integers(0, n))
    order = draw(st.permutations(NODES[:n]))
    answers = [(node, draw(st.sampled_from(
        ["ack", "refuse", "conflict"] if check else ["ack", "refuse"]))) for node in order]
    return n, w, check, answers


@given(runs())
def test_the_outcome_is_decided_once_and_as_the_model_says(
        run: tuple[int, int, int, list[tuple[str, str]]]) -> None:
    n, w, check, answers = run
    coord = coordinator(n, w, check)
    need = max(w, check)
    acked: list[str] = []
    refused: list[str] = []
    conflicts: list[str] = []
    outcome: str | None = None
    for node, answer in answers:
        if answer == "ack":
            done = coord.on_ack(node)
            failure: QuorumFailure | None = None
        elif answer == "refuse":
            done, failure = False, coord.on_refused(node, "down")
        else:
            done, failure = False, coord.on_conflict(node, held(node))
        decided = [done, failure is not None, coord.rewrite is not None and outcome is None]
        assert sum(decided) <= 1
        if outcome is not None:
            assert not any(decided[:2]), "decided twice"
            continue
        {"ack": acked, "refuse": refused, "conflict": conflicts}[answer].append(node)
        waiting = n - len(acked) - len(refused) - len(conflicts)
        heard = len(acked) + len(conflicts)
        if len(acked) >= need:
            expected = "done"
        elif conflicts and heard >= check:
            expected = "rewrite"  # a read quorum's worth heard, a conflict among it
        elif len(acked) + waiting >= need or (conflicts and heard + waiting >= check):
            expected = None
        else:
            expected = "failed"
        got = ("done" if done else "failed" if failure is not None
               else "rewrite" if coord.rewrite is not None else None)
        assert got == expected, (acked, refused, conflicts)
        outcome = got
        if got == "done":
            # No refusal is ever in hand at success (it would have meant a rewrite):
            # the node gives late refusers the write, never ones heard before.
            assert not conflicts
        if got == "failed":
            assert failure is not None
            assert failure.needed == need and failure.replied == len(acked)
    assert coord.finished == (outcome is not None)
    assert coord.succeeded == (outcome == "done")
    if outcome == "rewrite":
        # The new write must cover every state a conflicting replica answered with.
        assert coord.rewrite is not None
        for node in conflicts:
            assert covers_values(coord.rewrite, held(node))


@given(st.integers(1, 5), st.data())
def test_an_ordinary_write_needs_w_acks_and_fails_once_w_is_out_of_reach(
        n: int, data: st.DataObject) -> None:
    w = data.draw(st.integers(1, n))
    coord = coordinator(n, w, 0)
    refusals = data.draw(st.integers(0, n))
    failures = [coord.on_refused(NODES[i], "down") for i in range(refusals)]
    failed_at = next((i for i, f in enumerate(failures) if f is not None), None)
    assert failed_at == (n - w if refusals > n - w else None)
    if failed_at is None:
        acks = [coord.on_ack(NODES[i]) for i in range(refusals, n)]
        assert acks.index(True) == w - 1 and acks.count(True) == 1


def test_a_late_answer_after_success_changes_nothing() -> None:
    coord = coordinator(3, 2, 2)
    assert not coord.on_ack("a")
    assert coord.on_ack("b")
    assert coord.succeeded and not coord.answered
    assert coord.on_conflict("c", held("c")) is None
    assert coord.rewrite is None and coord.succeeded
