"""Ring balance and cost versus virtual nodes per node.

For each vnode count: the worst deviation of any node's share of the token space
from fair (for the names node-0..node-7, and over random name sets), the time of a
preference-list lookup with and without the per-position cache, the memory a ring
holds (with and without a warmed cache) and the build time. Prints a table, then
one JSON object per line.

    python -m bench.ring_balance [--nodes 8] [--n 3] [--keys 20000] [--sets 100]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable

from ringfs.ring import Ring, RingMember

VNODE_COUNTS = (16, 32, 64, 128, 256, 512, 1024)


def max_deviation(ring: Ring) -> float:
    """Largest |share - fair| / fair over the ring's nodes."""
    shares = ring.shares()
    fair = 1 / len(shares)
    return max(abs(s - fair) / fair for s in shares.values())


def members(names: list[str]) -> list[RingMember]:
    return [RingMember(name, f"10.0.0.{i + 1}:7001") for i, name in enumerate(names)]


def per_call_us(fn: Callable[[bytes], object], keys: list[bytes], rounds: int = 25) -> float:
    """Mean time of fn(key) in microseconds: the best of many short rounds over
    slices of `keys`, so that a burst of other work on the machine is discarded."""
    chunk = max(1, len(keys) // 10)
    best = float("inf")
    gc.disable()  # as timeit does: a collection pause is not the lookup's cost
    try:
        for r in range(rounds):
            part = keys[(r % 10) * chunk : (r % 10 + 1) * chunk]
            start = time.perf_counter()
            for key in part:
                fn(key)
            best = min(best, (time.perf_counter() - start) / len(part))
    finally:
        gc.enable()
    return best * 1e6


def held_bytes(make: Callable[[], object]) -> int:
    """Bytes still allocated after `make()` returns, i.e. what its result holds."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = make()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def measure(vnodes: int, args: argparse.Namespace) -> dict[str, object]:
    rnd = random.Random(vnodes)
    fixed = members([f"node-{i}" for i in range(args.nodes)])
    ring = Ring.build(fixed, vnodes)

    deviations = sorted(
        max_deviation(
            Ring.build(members([f"{rnd.getrandbits(48):012x}" for _ in range(args.nodes)]), vnodes)
        )
        for _ in range(args.sets)
    )

    builds = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            start = time.perf_counter()
            Ring.build(fixed, vnodes)
            builds.append(time.perf_counter() - start)
    finally:
        gc.enable()

    keys = [rnd.randbytes(16) for _ in range(args.keys)]
    n = args.n
    uncached_us = per_call_us(lambda k: ring.compute_preference_list(k, n), keys)
    ring.warm(n)
    cached_us = per_call_us(lambda k: ring.preference_list(k, n), keys)
    up = frozenset(ring.nodes)
    apl_us = per_call_us(lambda k: ring.apl(k, n, up), keys)

    def warmed() -> Ring:
        r = Ring.build(fixed, vnodes)
        r.warm(n)
        return r

    return {
        "bench": "ring_balance",
        "nodes": args.nodes,
        "vnodes_per_node": vnodes,
        "n": n,
        "max_dev_fixed_names": round(max_deviation(ring), 4),
        "max_dev_random_mean": round(statistics.fmean(deviations), 4),
        "max_dev_random_p95": round(deviations[int(0.95 * (len(deviations) - 1))], 4),
        "max_dev_random_worst": round(deviations[-1], 4),
        "random_sets_over_10pct": sum(d > 0.10 for d in deviations),
        "random_sets": len(deviations),
        "lookup_cached_us": round(cached_us, 3),
        "lookup_uncached_us": round(uncached_us, 3),
        "apl_all_up_us": round(apl_us, 3),
        "ring_bytes": held_bytes(lambda: Ring.build(fixed, vnodes)),
        "ring_warmed_bytes": held_bytes(warmed),
        "build_ms": round(min(builds) * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--n", type=int, default=3, help="replicas per key")
    parser.add_argument("--keys", type=int, default=20000, help="keys timed per lookup kind")
    parser.add_argument("--sets", type=int, default=100, help="random name sets per row")
    args = parser.parse_args()

    rows = [measure(v, args) for v in VNODE_COUNTS]
    header = (
        f"{'vnodes':>6} {'dev fixed':>9} {'dev mean':>8} {'dev p95':>7} {'dev worst':>9}"
        f" {'>10%':>7} {'cached':>7} {'uncached':>8} {'apl':>6} {'ring KiB':>8}"
        f" {'warm KiB':>8} {'build ms':>8}"
    )
    print(f"{args.nodes} nodes, n={args.n}; deviation = max |share-fair|/fair; times in µs")
    print(header)
    for r in rows:
        print(
            f"{r['vnodes_per_node']:>6} {r['max_dev_fixed_names']:>9.1%}"
            f" {r['max_dev_random_mean']:>8.1%} {r['max_dev_random_p95']:>7.1%}"
            f" {r['max_dev_random_worst']:>9.1%}"
            f" {r['random_sets_over_10pct']:>3}/{r['random_sets']:<3}"
            f" {r['lookup_cached_us']:>7.2f} {r['lookup_uncached_us']:>8.2f}"
            f" {r['apl_all_up_us']:>6.2f} {int(str(r['ring_bytes'])) / 1024:>8.0f}"
            f" {int(str(r['ring_warmed_bytes'])) / 1024:>8.0f} {r['build_ms']:>8.2f}"
        )
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
