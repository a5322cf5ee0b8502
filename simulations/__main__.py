"""Command line: `python -m simulations run|vopr|list`.

    python -m simulations run --seed 7 --scenario split_brain_3_2 [--nodes 5] [--duration 30]
                              [--n 3 --r 2 --w 2] [--bug ignore_context] [--timing]
    python -m simulations vopr --seeds 200 [--start 0] [--bug ack_before_sync] [-v]
    python -m simulations list

`run` prints the timeline, workload figures and the checkers' verdict and exits 1
on a violation. `vopr` runs random scenarios, one per seed, and prints every
failing seed with the command that replays it. Output depends only on the
arguments, never on the wall clock (unless --timing).
"""

from __future__ import annotations

import argparse
import sys
import time

from ringfs.node import KNOWN_FAULTS
from simulations.harness import Simulation
from simulations.scenario import ScenarioError, available, load_scenario
from simulations.vopr import known_issue, replay_command, run_seeds


def _bugs(values: list[str] | None) -> frozenset[str]:
    out: set[str] = set()
    for v in values or []:
        out.update(x.strip() for x in v.split(",") if x.strip())
    unknown = out - KNOWN_FAULTS
    if unknown:
        raise SystemExit(f"unknown bug(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(KNOWN_FAULTS))}")
    return frozenset(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations",
                                description="Deterministic simulation of a ringfs cluster.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one scenario with one seed")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--scenario", required=True, help="a shipped scenario name or a TOML file")
    r.add_argument("--nodes", type=int, help="cluster size (default: the scenario's)")
    r.add_argument("--duration", type=float, help="safety phase in simulated seconds")
    r.add_argument("--n", type=int, help="replicas per key")
    r.add_argument("--r", type=int, help="read quorum")
    r.add_argument("--w", type=int, help="write quorum")
    r.add_argument("--bug", action="append", help="inject a known defect (repeatable)")
    r.add_argument("--timing", action="store_true", help="also print wall-clock time")
    r.add_argument("--show-scenario", action="store_true",
                   help="print the scenario as TOML and exit")
    v = sub.add_parser("vopr", help="run random scenarios, one per seed")
    v.add_argument("--seeds", type=int, required=True, help="how many seeds")
    v.add_argument("--start", type=int, default=0, help="first seed")
    v.add_argument("--bug", action="append", help="inject a known defect (repeatable)")
    v.add_argument("--lww", action="store_true",
                   help="every key last-write-wins (lww_prefixes = [\"\"]), same faults")
    v.add_argument("-v", "--verbose", action="store_true", help="one line per seed")
    v.add_argument("--timing", action="store_true", help="also print wall-clock time")
    v.add_argument("--show-scenario", action="store_true",
                   help="print each seed's scenario as TOML instead of running it")
    sub.add_parser("list", help="list the shipped scenarios")
    args = p.parse_args(argv)

    if args.cmd == "list":
        for name in available():
            desc = load_scenario(name).description.split(". ")[0].rstrip(".")
            print(f"{name:<22} {desc}")
        return 0
    bugs = _bugs(args.bug)
    if args.cmd == "run":
        try:
            sc = load_scenario(args.scenario).with_overrides(
                nodes=args.nodes, duration_s=args.duration, n=args.n, r=args.r, w=args.w)
        except ScenarioError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.show_scenario:
            sys.stdout.write(sc.to_toml())
            return 0
        started = time.perf_counter()
        report = Simulation(sc, args.seed, bugs=bugs).run()
        if args.timing:
            report.wall_s = time.perf_counter() - started
        sys.stdout.write(report.render())
        known = known_issue(report) if not report.ok else None
        if known is not None:
            print(f"known issue {known.name}: {known.summary}")
        return 0 if report.ok else 1
    seeds = range(args.start, args.start + args.seeds)
    if args.show_scenario:
        from simulations.vopr import random_scenario
        for s in seeds:
            sys.stdout.write(random_scenario(s, args.lww).to_toml() + "\n")
        return 0
    if args.seeds == 1:
        # One seed: the full report, as `run` prints it.
        from simulations.vopr import run_seed
        started = time.perf_counter()
        report = run_seed(args.start, bugs, lww=args.lww)
        if args.timing:
            report.wall_s = time.perf_counter() - started
        sys.stdout.write(report.render())
        if not report.ok:
            known = known_issue(report)
            if known is not None:
                print(f"known issue {known.name}: {known.summary}")
            print(f"replay: {replay_command(args.start, bugs, args.lww)}")
        return 0 if report.ok else 1
    started = time.perf_counter()
    failed = run_seeds(seeds, bugs, out=sys.stdout, verbose=args.verbose, lww=args.lww)
    print(f"{args.seeds} seeds from {args.start}: {len(failed)} failed"
          + (f" ({', '.join(str(s) for s in failed)})" if failed else ""))
    if args.timing:
        print(f"wall time: {time.perf_counter() - started:.2f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
