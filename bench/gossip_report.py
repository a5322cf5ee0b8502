"""SWIM/Lifeguard membership measured in the simulated world.

Every figure comes from simulations/gossip_sim.py (virtual time, one seed per run)
with GossipConfig.lan() unless said otherwise:

  perf        wall time of a 1000-member, 100-probe-interval gossip-only run
  detect      N=1000, 1% loss, members killed one by one: time to first suspicion
              (in probe intervals) and until every live member marks it dead
  false       N=1000, 5% loss: false deaths per member-period
  slow        5% of members handle messages 0.5-2.5 s late; false deaths with
              Lifeguard versus plain SWIM (all three refinements off)
  dissem      N=1000, encrypted: probe intervals until an update reaches 99.9% of
              members; the largest datagram on the wire
  mtu         a join storm of 300 members, encrypted: the largest datagram
  traffic     datagrams + streams per member per probe interval, N=100 and N=1000

Prints a table, then one JSON object per line.

    python -m bench.gossip_report [--quick] [--only detect,slow] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from ringfs.gossip import GossipConfig, MemberEvent
from simulations.gossip_sim import GossipWorld, SimMember

LAN = GossipConfig.lan()
PLAIN_SWIM = GossipConfig.lan(
    lifeguard_awareness=False, lifeguard_suspicion=False, lifeguard_buddy=False
)


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    k = max(0, math.ceil(p / 100 * len(s)) - 1)
    return s[k]


def bench_perf(seed: int, quick: bool) -> dict[str, Any]:
    n, intervals = (1000, 100) if not quick else (300, 30)
    t0 = time.perf_counter()
    w = GossipWorld(n, LAN, seed)
    t1 = time.perf_counter()
    w.run_for(intervals * LAN.probe_interval_s)
    t2 = time.perf_counter()
    return {
        "figure": "perf",
        "nodes": n,
        "intervals": intervals,
        "setup_s": round(t1 - t0, 2),
        "run_s": round(t2 - t1, 2),
        "wall_s": round(t2 - t0, 2),
        "false_deaths": len(w.false_deaths),
    }


def bench_detect(seed: int, quick: bool) -> dict[str, Any]:
    n, kills, spacing = (1000, 40, 3.0) if not quick else (200, 10, 3.0)
    w = GossipWorld(n, LAN, seed, loss=0.01)
    w.run_for(5.0)
    victims = w.rng.sample(sorted(w.members), kills)
    for name in victims:
        w.kill(name)
        w.run_for(spacing)
    w.run_for(40.0)
    recs = list(w.kills.values())
    first = [
        (r.first_suspect - r.killed_at) / LAN.probe_interval_s for r in recs if r.first_suspect
    ]
    dead = [r.all_dead - r.killed_at for r in recs if r.all_dead is not None]
    return {
        "figure": "detect",
        "nodes": n,
        "loss": 0.01,
        "kills": kills,
        "detected": len(first),
        "all_dead": len(dead),
        "first_suspect_mean_intervals": round(statistics.fmean(first), 3),
        "first_suspect_p99_intervals": round(percentile(first, 99), 3),
        "all_dead_mean_s": round(statistics.fmean(dead), 2),
        "all_dead_p50_s": round(percentile(dead, 50), 2),
        "all_dead_p99_s": round(percentile(dead, 99), 2),
        "all_dead_max_s": round(max(dead), 2),
        "false_deaths": len(w.false_deaths),
    }


def bench_false(seed: int, quick: bool) -> dict[str, Any]:
    n, intervals = (1000, 1000) if not quick else (200, 200)
    w = GossipWorld(n, LAN, seed, loss=0.05)
    w.run_for(intervals * LAN.probe_interval_s)
    return {
        "figure": "false",
        "nodes": n,
        "loss": 0.05,
        "member_periods": n * intervals,
        "false_suspicions": len(w.false_suspicions),
        "false_deaths": len(w.false_deaths),
        "false_dead_marks": w.false_dead_marks,
    }


def bench_slow(seed: int, quick: bool) -> dict[str, Any]:
    n, intervals, seeds = (20, 5000, 4) if not quick else (20, 1000, 2)
    out: dict[str, Any] = {"figure": "slow", "nodes": n, "slow_fraction": 0.05}
    for label, cfg in (("lifeguard", LAN), ("swim", PLAIN_SWIM)):
        deaths = marks = susp = 0
        for s in range(seeds):
            w = GossipWorld(n, cfg, seed * 1000 + s, slow_fraction=0.05)
            w.run_for(intervals * cfg.probe_interval_s)
            deaths += len(w.false_deaths)
            marks += w.false_dead_marks
            susp += len(w.false_suspicions)
        out[f"{label}_false_deaths"] = deaths
        out[f"{label}_false_dead_marks"] = marks
        out[f"{label}_false_suspicions"] = susp
    out["member_periods"] = n * intervals * seeds
    lg, sw = out["lifeguard_false_deaths"], out["swim_false_deaths"]
    out["ratio"] = round(sw / lg, 1) if lg else (math.inf if sw else 0)
    return out


def bench_dissem(seed: int, quick: bool) -> dict[str, Any]:
    n, updates = (1000, 10) if not quick else (200, 5)
    w = GossipWorld(n, LAN, seed, loss=0.01, encrypt=True)
    w.run_for(3.0)
    need = math.ceil(0.999 * (n - 1))
    times: list[float] = []
    target: dict[str, Any] = {}

    def listener(who: SimMember, ev: MemberEvent) -> None:
        if (
            ev.kind == "update"
            and ev.member.name == target.get("name")
            and ev.member.incarnation >= target["inc"]
            and who.name not in target["seen"]
        ):
            target["seen"].add(who.name)
            if len(target["seen"]) == need:
                times.append((w.loop.now - target["at"]) / LAN.probe_interval_s)

    w.listeners.append(listener)
    for i, name in enumerate(w.rng.sample(sorted(w.members), updates)):
        m = w.members[name]
        m.swim.update_meta({"zone": "moved", "capacity": i + 2}, w.loop.now)
        target.update(name=name, inc=m.swim.incarnation, at=w.loop.now, seen=set())
        m.flush()
        w.run_for(16 * LAN.probe_interval_s)
    return {
        "figure": "dissem",
        "nodes": n,
        "loss": 0.01,
        "encrypted": True,
        "updates": updates,
        "reached_99_9": len(times),
        "intervals_to_99_9_mean": round(statistics.fmean(times), 2) if times else None,
        "intervals_to_99_9_max": round(max(times), 2) if times else None,
        "max_packet_bytes": w.net.max_packet_bytes,
        "mtu_bytes": LAN.mtu_bytes,
    }


def bench_mtu(seed: int, quick: bool) -> dict[str, Any]:
    """A join storm (everyone joins through one seed at once, encrypted) fills the
    piggyback queues with hundreds of updates: the datagrams are as full as they get."""
    n = 300 if not quick else 100
    w = GossipWorld(n, LAN, seed, encrypt=True, bootstrap=False)
    seed_addr = w.members["n00000"].address
    for m in w.members.values():
        m.swim.join([] if m.address == seed_addr else [seed_addr], w.loop.now)
        m.flush()
    w.run_for(30.0)
    complete = sum(1 for m in w.members.values() if m.swim.num_live == n)
    return {
        "figure": "mtu",
        "nodes": n,
        "encrypted": True,
        "members_with_full_view_after_30s": complete,
        "max_packet_bytes": w.net.max_packet_bytes,
        "mtu_bytes": LAN.mtu_bytes,
    }


def bench_traffic(seed: int, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"figure": "traffic", "loss": 0.01}
    intervals = 60 if not quick else 20
    for n in (100, 1000) if not quick else (50, 300):
        w = GossipWorld(n, LAN, seed, loss=0.01)
        w.run_for(10.0)
        before = w.traffic()
        w.run_for(intervals * LAN.probe_interval_s)
        after = w.traffic()
        msgs = (after["packets"] - before["packets"]) + (after["streams"] - before["streams"])
        out[f"msgs_per_member_interval_n{n}"] = round(msgs / (n * intervals), 3)
    a, b = (v for k, v in out.items() if k.startswith("msgs_"))
    out["relative_difference"] = round(abs(b - a) / a, 3)
    return out


FIGURES: dict[str, Callable[[int, bool], dict[str, Any]]] = {
    "perf": bench_perf,
    "detect": bench_detect,
    "false": bench_false,
    "slow": bench_slow,
    "dissem": bench_dissem,
    "mtu": bench_mtu,
    "traffic": bench_traffic,
}


def table(results: list[dict[str, Any]]) -> str:
    by = {r["figure"]: r for r in results}
    rows: list[tuple[str, str, str]] = []
    if "perf" in by:
        r = by["perf"]
        rows.append(
            (
                f"wall time, {r['nodes']} members x {r['intervals']} intervals",
                f"{r['wall_s']} s (setup {r['setup_s']} s)",
                "< 60 s",
            )
        )
    if "detect" in by:
        r = by["detect"]
        rows.append(
            (
                f"mean time to first suspicion (N={r['nodes']}, 1% loss)",
                f"{r['first_suspect_mean_intervals']} intervals",
                "<= 1.7",
            )
        )
        rows.append(
            (
                "time until all live members mark dead: mean / p50 / p99 / max",
                f"{r['all_dead_mean_s']} / {r['all_dead_p50_s']} / {r['all_dead_p99_s']}"
                f" / {r['all_dead_max_s']} s ({r['kills']} kills)",
                "p99 <= 17 s",
            )
        )
    if "false" in by:
        r = by["false"]
        rows.append(
            (
                f"false deaths at 5% loss (N={r['nodes']})",
                f"{r['false_deaths']} in {r['member_periods']:,} member-periods"
                f" ({r['false_suspicions']} false suspicions, all refuted)",
                "0 in >= 1,000,000",
            )
        )
    if "slow" in by:
        r = by["slow"]
        rows.append(
            (
                f"false deaths, 5% slow members (N={r['nodes']}): Lifeguard vs SWIM",
                f"{r['lifeguard_false_deaths']} vs {r['swim_false_deaths']} in"
                f" {r['member_periods']:,} member-periods each (false suspicions"
                f" {r['lifeguard_false_suspicions']} vs {r['swim_false_suspicions']})",
                ">= 10x fewer",
            )
        )
    if "dissem" in by:
        r = by["dissem"]
        rows.append(
            (
                f"update reaches 99.9% of members (N={r['nodes']}): mean / max",
                f"{r['intervals_to_99_9_mean']} / {r['intervals_to_99_9_max']} intervals",
                "<= 15",
            )
        )
        rows.append(
            (
                "largest datagram (encrypted)",
                f"{r['max_packet_bytes']} bytes",
                f"<= {r['mtu_bytes']}",
            )
        )
    if "mtu" in by:
        r = by["mtu"]
        rows.append(
            (
                f"largest datagram, join storm of {r['nodes']} (encrypted)",
                f"{r['max_packet_bytes']} bytes ({r['members_with_full_view_after_30s']}"
                f"/{r['nodes']} with the full view after 30 s)",
                f"<= {r['mtu_bytes']}",
            )
        )
    if "traffic" in by:
        r = by["traffic"]
        vals = [f"{k.rsplit('_', 1)[1]}: {v}" for k, v in r.items() if k.startswith("msgs_")]
        rows.append(
            (
                "messages per member per interval",
                ", ".join(vals) + f" (diff {r['relative_difference'] * 100:.1f}%)",
                "within 10%",
            )
        )
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    lines = [
        f"| {'figure':<{w0}} | {'measured':<{w1}} | target |",
        f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|--------|",
    ]
    lines += [f"| {a:<{w0}} | {b:<{w1}} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small clusters, a smoke test")
    p.add_argument("--only", default="", help="comma-separated figures: " + ",".join(FIGURES))
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    names = [x for x in args.only.split(",") if x] or list(FIGURES)
    results = []
    for name in names:
        t0 = time.perf_counter()
        r = FIGURES[name](args.seed, args.quick)
        r["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        r["seed"] = args.seed
        results.append(r)
        print(json.dumps(r), flush=True)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
