"""The simulated world is a pure function of its seed."""

from __future__ import annotations

from ringfs.dvv import context_descends, decode_context, decode_stored
from ringfs.wire import Op
from simulations.network import LinkConfig
from simulations.workload import Workload
from simulations.world import SimWorld


def run(seed: int, crash: bool = False, stop_at_restart: bool = False
        ) -> tuple[SimWorld, Workload]:
    w = SimWorld(seed, link=LinkConfig(latency_s=0.001, jitter_s=0.003, duplicate=0.0))
    w.add_node("n1")
    wl = Workload(w, clients=4, keys=5)
    wl.start(["10.0.0.1:7001"])
    w.run_for(1.0)
    if crash:
        w.crash("n1")
        w.run_for(0.2)
        w.restart("n1")
        if stop_at_restart:
            return w, wl
        w.run_for(1.5)  # the clients reconnect by themselves
    wl.stop()
    w.run_for(0.5)
    return w, wl


def test_same_seed_same_trace() -> None:
    a, _ = run(7)
    b, _ = run(7)
    assert len(a.trace) > 200
    assert a.trace == b.trace


def test_different_seed_different_trace() -> None:
    a, _ = run(7)
    c, _ = run(8)
    assert a.trace_digest() != c.trace_digest()


def test_acknowledged_writes_survive_a_crash() -> None:
    w, wl = run(11, crash=True, stop_at_restart=True)
    crash_time = next(float(line.split()[0]) for line in w.trace if "crashed" in line)
    acked = [e for e in wl.history
             if e.outcome == "ok" and e.op in ("PUT", "DELETE") and e.end < crash_time]
    assert len(acked) > 20
    # Right after the restart (before any new write could hide a loss) the stored causal
    # state of each key must have seen every write acknowledged before the crash.
    restart_state = w.nodes["n1"].engine
    for e in acked:
        rec = restart_state.get(e.key)
        assert rec is not None, e
        stored = decode_stored(rec.meta).context()
        assert context_descends(stored, decode_context(e.result["context"])), e


def test_same_seed_with_crash_is_deterministic() -> None:
    a, _ = run(3, crash=True)
    b, _ = run(3, crash=True)
    assert a.trace == b.trace and any("crashed" in line for line in a.trace)


def test_simulated_client_sees_protocol_errors() -> None:
    w = SimWorld(1)
    w.add_node("n1")
    c = w.add_client("c")
    seen: list[tuple[str, object]] = []
    c.connect("10.0.0.1:7001")
    c.request(Op.PUT, {"key": b""}, lambda o, p: seen.append((o, p)))
    w.run_for(0.1)
    assert seen and seen[0][0] == "error"
