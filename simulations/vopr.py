"""VOPR: random scenarios, one per seed, each a safety phase then a liveness phase.

For a seed S the scenario (cluster size 3-6, N/R/W with R+W>N, workload, link
and disk speeds, and a timeline of random faults) is drawn from an rng seeded
with S alone, and the run itself uses seed S: `python -m simulations vopr
--seeds 1 --start S` replays it exactly, and `--show-scenario` prints it as a
scenario file for `python -m simulations run --scenario FILE --seed S`.

Seeds are kept short (20 simulated seconds of faults) so that hundreds run in a
test; the faults are dense enough that the known defects show within a few
seeds (see tests/scenario/test_vopr.py for the bounds).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from simulations.harness import FEATURES, Features, Report, Simulation
from simulations.network import LinkConfig
from simulations.scenario import FaultEvent, Scenario
from simulations.workload import WorkloadConfig
from simulations.world import DiskConfig

SAFETY_S = 20.0
LIVENESS_S = 60.0


def random_scenario(seed: int, lww: bool = False) -> Scenario:
    """The scenario of one VOPR seed (a pure function of the seed); `lww`: every key
    last-write-wins (the same draws otherwise, so the same faults)."""
    rng = random.Random(f"vopr:{seed}")
    nodes = rng.randint(3, 6)
    n = min(nodes, rng.choice((2, 3, 3, 3, 4, 5)))
    r = rng.randint(1, n)
    w = rng.randint(n - r + 1, n)
    workload = WorkloadConfig(
        clients=rng.randint(2, 6),
        keys=rng.randint(2, 10),
        rate_ops_s=round(rng.uniform(15, 45), 1),
        put_ratio=round(rng.uniform(0.3, 0.55), 2),
        delete_ratio=round(rng.uniform(0.05, 0.2), 2),
        context_ratio=round(rng.uniform(0.5, 1.0), 2),
    )
    network = LinkConfig(latency_s=round(rng.uniform(0.0002, 0.002), 5),
                         jitter_s=round(rng.uniform(0.0, 0.002), 5))
    disk = DiskConfig(fsync_latency_s=round(rng.uniform(0.001, 0.02), 4),
                      fsync_jitter_s=round(rng.uniform(0.0, 0.01), 4))
    settings: dict[str, Any] = {"tombstone_grace_s": float(rng.choice((2, 5, 10, 10, 30)))}
    if lww:
        settings["lww_prefixes"] = ("",)
    names = [f"n{i + 1}" for i in range(nodes)]
    events = [_random_event(rng, names) for _ in range(rng.randint(2, 8))]
    events.sort(key=lambda e: e.at)
    return Scenario(name=f"vopr-{seed}", description=f"random scenario of seed {seed}",
                    nodes=nodes, n=n, r=r, w=w, duration_s=SAFETY_S, liveness_s=LIVENESS_S,
                    workload=workload, network=network, disk=disk,
                    node_settings=settings, events=tuple(events))


_KINDS = ("partition", "partition", "isolate", "crash", "crash", "crash", "power", "pause",
          "skew", "clog", "loss", "flap", "heal")


def _split(rng: random.Random, names: list[str]) -> tuple[tuple[str, ...], ...]:
    shuffled = names[:]
    rng.shuffle(shuffled)
    k = rng.randint(1, len(names) - 1)
    return (tuple(sorted(shuffled[:k])), tuple(sorted(shuffled[k:])))


def _some(rng: random.Random, names: list[str], most: int) -> tuple[str, ...]:
    return tuple(sorted(rng.sample(names, rng.randint(1, min(most, len(names))))))


def _random_event(rng: random.Random, names: list[str]) -> FaultEvent:
    at = round(rng.uniform(0.5, SAFETY_S - 1.0), 3)
    kind = rng.choice(_KINDS)

    def dur(lo: float, hi: float) -> float:
        return round(rng.uniform(lo, hi), 3)

    if kind == "partition":
        return FaultEvent(at, "partition", groups=_split(rng, names),
                          one_way=rng.random() < 0.25,
                          duration_s=dur(1, 8) if rng.random() < 0.8 else None)
    if kind == "isolate":
        return FaultEvent(at, "isolate", nodes=_some(rng, names, 1), duration_s=dur(1, 6))
    if kind == "crash":
        return FaultEvent(at, "crash", nodes=_some(rng, names, 2),
                          duration_s=dur(0.2, 8) if rng.random() < 0.85 else None)
    if kind == "power":
        return FaultEvent(at, "crash", nodes=tuple(names), duration_s=dur(0.05, 2))
    if kind == "pause":
        return FaultEvent(at, "pause", nodes=_some(rng, names, 1), duration_s=dur(0.2, 4))
    if kind == "skew":
        return FaultEvent(at, "skew", nodes=_some(rng, names, 1),
                          skew_s=round(rng.uniform(-5, 5), 3))
    if kind == "clog":
        return FaultEvent(at, "clog", nodes=_some(rng, names, 2),
                          clog_s=round(rng.uniform(0.01, 1.0), 3), duration_s=dur(1, 6))
    if kind == "loss":
        return FaultEvent(at, "loss", probability=round(rng.uniform(0.01, 0.3), 3),
                          nodes=_some(rng, names, 1) if rng.random() < 0.5 else (),
                          duplicate=round(rng.uniform(0, 0.1), 3),
                          jitter_s=round(rng.uniform(0, 0.2), 3), duration_s=dur(2, 10))
    if kind == "flap":
        d = dur(2, 8)
        return FaultEvent(at, "flap", groups=_split(rng, names), one_way=rng.random() < 0.25,
                          period_s=round(rng.uniform(0.2, 2.0), 3), duration_s=d)
    return FaultEvent(at, "heal")


@dataclass(frozen=True)
class KnownIssue:
    """A defect of ringfs found by the simulator and not fixed yet.

    A failing seed whose report fails `check` is attributed to the issue: once that
    check fails, the others judge a cluster that never came back together and prove
    little. tests/scenario/test_scenarios.py holds a strict-xfail reproduction of
    each issue, so that fixing it fails that test until the entry is removed.
    """

    name: str
    check: str
    summary: str


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    KnownIssue(
        "reap-reuses-dots", "dots-unique",
        "a node can still reissue one of its old dots for a key whose tombstone was "
        "reaped under flapping partitions (vopr seed 17: dot (n2@1, 2) of k008 issued "
        "twice). Nodes remember their counter for keys they reap and continue above it, "
        "which fixed the shipped tombstone_reaping scenario and its deterministic test; "
        "the path behind seed 17 is not found yet"),
)


VIEW_INDEPENDENT = frozenset({"node-invariants", "incarnations", "siblings", "dots-unique",
                              "history"})
"""Checks that hold whatever the nodes believe about each other: a failure of one of
these is never put down to a known issue."""


def known_issue(report: Report) -> KnownIssue | None:
    """The known issue a failing report is attributed to, if any: one whose check
    failed, provided no view-independent check failed that no such issue explains."""
    failed = set(report.failed_checks())
    matched = [k for k in KNOWN_ISSUES if k.check in failed]
    if not matched or (failed & VIEW_INDEPENDENT) - {k.check for k in matched}:
        return None
    return matched[0]


def run_seed(seed: int, bugs: Iterable[str] = (), features: Features = FEATURES,
             lww: bool = False) -> Report:
    """Run one VOPR seed."""
    return Simulation(random_scenario(seed, lww), seed, bugs=bugs, features=features).run()


def replay_command(seed: int, bugs: Iterable[str] = (), lww: bool = False) -> str:
    bug = "".join(f" --bug {b}" for b in sorted(bugs))
    return f"python -m simulations vopr --seeds 1 --start {seed}{bug}{' --lww' if lww else ''}"


def summary_line(seed: int, report: Report) -> str:
    sc = report.scenario
    what = (f"{sc.nodes} nodes N={sc.n} R={sc.r} W={sc.w}, {len(sc.events)} faults, "
            f"{len(report.history)} ops")
    if report.ok:
        return f"seed {seed}: ok ({what})"
    first = report.violations[0]
    known = known_issue(report)
    tag = f" [known issue {known.name}]" if known is not None else ""
    return (f"seed {seed}: FAIL {','.join(report.failed_checks())}{tag} ({what}): "
            f"{first.message}")


def run_seeds(seeds: Iterable[int], bugs: Iterable[str] = (), *, out: TextIO | None = None,
              verbose: bool = False, features: Features = FEATURES,
              stop_after: int | None = None, lww: bool = False) -> list[int]:
    """Run each seed; print failures (every seed when verbose) with replay commands."""
    bugs = frozenset(bugs)
    failed: list[int] = []
    for seed in seeds:
        report = run_seed(seed, bugs, features, lww)
        if not report.ok:
            failed.append(seed)
        if out is not None and (verbose or not report.ok):
            out.write(summary_line(seed, report) + "\n")
            if not report.ok:
                out.write(f"  replay: {replay_command(seed, bugs, lww)}\n")
            out.flush()
        if stop_after is not None and len(failed) >= stop_after:
            break
    return failed
