"""The log store against sqlite3 and LMDB on the same workloads, in one run.

    python -m bench.storage [--keys 1000000] [--quick] [--dir PATH]

Workloads (every engine gets the same keys, 16 bytes, and values, --value-bytes):

  put_sync_each   sequential puts, each made durable before the next: the log
                  store's put + sync(); sqlite in WAL mode with synchronous=FULL,
                  one transaction (autocommit) per put; LMDB with sync=True, one
                  write transaction per put.
  group_commit    --writers concurrent writers emulated in rounds: each of the 64
                  writers issues one put, then one durability step covers all 64
                  (the log store's sync(); one transaction of 64 puts for sqlite
                  and LMDB). This is what the node runtime does: the event loop
                  appends every request and a worker thread syncs them as a group.
  group_commit_pipelined
                  the log store only, with a real worker thread: the main thread
                  keeps appending the next round while the worker fsyncs the last,
                  and a round counts once sync() reports it durable.
  load            the --keys keys written once (one sync or transaction at the end).
  random_get      uniformly random gets over all --keys keys, engines taking turns
                  (see below), best of --repeats. LMDB stores what an engine needs per key
                  (seq, flags, meta, value) and is measured three ways: `lmdb`, a
                  read transaction per get returning the raw row (the reference
                  for the target); `lmdb_record`, the same plus decoding the row
                  into a Record as an LMDB StorageEngine would (like for like with
                  the log store, which verifies a checksum and builds a Record);
                  `lmdb_one_txn`, every get in one long read transaction (LMDB's
                  best case, not an engine call).

put_sync_each and group_commit run in ten turns with the engines taking turns, and
the gets likewise, so that noise from other jobs on the machine (a burst of disk
latency) hurts every engine alike. The gets are cut into ten chunks that every
engine runs in turn, each chunk timed by the wall clock and by the thread's CPU
time; an engine's figure is the sum over the chunks of the best of --repeats runs.
Gets touch only memory and the page cache, so their CPU time is their cost without
the time other processes held the CPU, which on a shared machine is most of the
noise; the ratios are given both ways.

Then the log store alone: reopen time and key-directory memory for --keys keys
(measured in a fresh subprocess), a merge after overwriting 60% of the keys with
the longest maybe_merge() call, and iter_range over the whole ring in 256 ranges
(anti-entropy's pattern). Results print as a table, then one JSON object per line.
Ratios compare the targets: group commit at least 5x sqlite's per-commit rate,
random gets at least 0.8x LMDB.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import bench_key
from ringfs.runtime.server import MAINTENANCE_SYNC_BYTES
from ringfs.storage.engine import Record
from ringfs.storage.logstore import LogStore

Result = dict[str, Any]


# -- engines -----------------------------------------------------------------------------


class Engine:
    """The operations every workload needs, implemented per engine."""

    name = ""

    def put_durable(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def put_group(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def load(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        self.put_group(items)

    def getter(self) -> Callable[[bytes], object]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class LogStoreEngine(Engine):
    name = "logstore"

    def __init__(self, path: str) -> None:
        self.store = LogStore(path)

    def put_durable(self, key: bytes, value: bytes) -> None:
        self.store.put(key, value)
        self.store.sync()

    def put_group(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        put = self.store.put
        for key, value in items:
            put(key, value)
        self.store.sync()

    def load(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        self.put_group(items)
        while self.store.maybe_merge():  # hint files for the retired segments
            pass

    def getter(self) -> Callable[[bytes], object]:
        return self.store.get

    def close(self) -> None:
        self.store.close()


class SqliteEngine(Engine):
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(os.path.join(path, "kv.sqlite"), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")

    def put_durable(self, key: bytes, value: bytes) -> None:
        # Autocommit: the statement is its own transaction, committed with an fsync.
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def put_group(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", items)
        self.db.execute("COMMIT")

    def getter(self) -> Callable[[bytes], object]:
        execute = self.db.execute

        def get(key: bytes) -> object:
            return execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()

        return get

    def close(self) -> None:
        self.db.close()


_LMDB_ROW = struct.Struct("<QBI")
"""seq, flags, meta length: what an LMDB-backed StorageEngine would keep beside a value."""


class LmdbEngine(Engine):
    """LMDB storing what a StorageEngine needs per key: seq, flags, meta and value."""

    name = "lmdb"

    def __init__(self, path: str, keys: int, value_bytes: int) -> None:
        import lmdb  # the optional 'bench' extra; ringfs itself never imports it

        size = max(1 << 30, 4 * keys * (value_bytes + 64))
        self.env = lmdb.open(path, map_size=size, sync=True, metasync=True, lock=True)
        self.seq = 0

    def _row(self, value: bytes) -> bytes:
        self.seq += 1
        return _LMDB_ROW.pack(self.seq, 0, 0) + value

    def put_durable(self, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key, self._row(value))

    def put_group(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            put = txn.put
            for key, value in items:
                put(key, self._row(value))

    def record_getter(self) -> Callable[[bytes], object]:
        """A get as an LMDB StorageEngine would do it: read the row, decode a Record."""
        begin = self.env.begin
        unpack_from = _LMDB_ROW.unpack_from
        head = _LMDB_ROW.size
        new = tuple.__new__

        def get(key: bytes) -> object:
            with begin() as txn:
                row = txn.get(key)
            if row is None:
                return None
            seq, flags, mlen = unpack_from(row)
            return new(Record, (row[head + mlen :], row[head : head + mlen], flags == 1, seq))

        return get

    def getter(self) -> Callable[[bytes], object]:
        begin = self.env.begin

        def get(key: bytes) -> object:
            with begin() as txn:
                return txn.get(key)

        return get

    def one_txn_gets(self, keys: Sequence[bytes]) -> tuple[float, float]:
        """Wall-clock and thread CPU seconds for all gets inside a single read transaction."""
        with self.env.begin() as txn:
            return timed_gets(txn.get, keys)

    def close(self) -> None:
        self.env.close()


# -- workloads -------------------------------------------------------------------------------


def result(workload: str, engine: str, ops: int, seconds: float, **extra: Any) -> Result:
    return {
        "bench": "storage",
        "workload": workload,
        "engine": engine,
        "ops": ops,
        "seconds": round(seconds, 4),
        "ops_per_s": round(ops / seconds, 1) if seconds > 0 else None,
        **extra,
    }


TURNS = 10
"""The durable-write workloads run in this many turns, the engines taking turns, so
that a burst of disk latency from a neighbour hurts every engine alike."""


def durable_writes(engines: list[Engine], args: argparse.Namespace, value: bytes) -> list[Result]:
    """put_sync_each and group_commit, interleaved across engines."""
    spent: dict[tuple[str, str], float] = {}
    per_turn = max(1, args.sync_puts // TURNS)
    rounds_per_turn = max(1, args.group_rounds // TURNS)
    for turn in range(TURNS):
        for engine in engines:
            t = time.perf_counter()
            for i in range(turn * per_turn, (turn + 1) * per_turn):
                engine.put_durable(b"seq:%012d" % i, value)
            key = ("put_sync_each", engine.name)
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            for r in range(turn * rounds_per_turn, (turn + 1) * rounds_per_turn):
                base = r * args.writers
                engine.put_group([(b"grp:%012d" % (base + w), value) for w in range(args.writers)])
            key = ("group_commit", engine.name)
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
    out: list[Result] = []
    for (workload, name), seconds in spent.items():
        if workload == "put_sync_each":
            out.append(result(workload, name, per_turn * TURNS, seconds))
        else:
            ops = rounds_per_turn * TURNS * args.writers
            out.append(result(workload, name, ops, seconds, writers=args.writers))
    out.sort(key=lambda r: (r["workload"] != "put_sync_each", r["engine"]))
    return out


def load(engine: Engine, args: argparse.Namespace, value: bytes) -> Result:
    """The --keys keys written once; the engine stays open for the gets."""
    batch = 100_000
    t = time.perf_counter()
    for start in range(0, args.keys, batch):
        engine.load([(bench_key(i), value) for i in range(start, min(args.keys, start + batch))])
    return result("load", engine.name, args.keys, time.perf_counter() - t)


def timed_gets(get: Callable[[bytes], object], keys: Sequence[bytes]) -> tuple[float, float]:
    """Wall-clock and thread CPU seconds for one get of each key."""
    cpu = time.thread_time()
    wall = time.perf_counter()
    for key in keys:
        get(key)
    return time.perf_counter() - wall, time.thread_time() - cpu


def random_gets(
    engines: list[Engine], args: argparse.Namespace, sample: list[bytes]
) -> list[Result]:
    """Best of --repeats runs of each chunk of the sample per engine, the engines taking
    turns chunk by chunk so that a noisy neighbour on the machine hurts them all alike."""
    runners: list[tuple[str, Callable[[Sequence[bytes]], tuple[float, float]]]] = []
    for engine in engines:
        runners.append((engine.name, functools.partial(timed_gets, engine.getter())))
        if isinstance(engine, LmdbEngine):
            runners.append(("lmdb_one_txn", engine.one_txn_gets))
            runners.append(("lmdb_record", functools.partial(timed_gets, engine.record_getter())))
    step = -(-len(sample) // TURNS)
    chunks = [sample[i : i + step] for i in range(0, len(sample), step)]
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(args.repeats):
        for i, chunk in enumerate(chunks):
            for name, run in runners:
                wall, cpu = run(chunk)
                old = best.get((name, i))
                best[(name, i)] = (
                    (wall, cpu) if old is None else (min(old[0], wall), min(old[1], cpu))
                )
    out: list[Result] = []
    for name, _ in runners:
        wall = sum(best[(name, i)][0] for i in range(len(chunks)))
        cpu = sum(best[(name, i)][1] for i in range(len(chunks)))
        out.append(
            result(
                "random_get",
                name,
                len(sample),
                wall,
                keys=args.keys,
                cpu_seconds=round(cpu, 4),
                cpu_ops_per_s=round(len(sample) / cpu, 1) if cpu > 0 else None,
            )
        )
    return out


def pipelined_group_commit(path: str, args: argparse.Namespace, value: bytes) -> Result:
    """Appends on this thread while a worker thread fsyncs, as the runtime does.

    At most one round waits for durability while the next is appended, like 64
    clients that each send their next put once the previous one is acknowledged.
    """
    store = LogStore(path)
    wake = threading.Event()
    synced = threading.Event()
    stop = False
    syncs = 0

    def syncer() -> None:
        nonlocal syncs
        while True:
            wake.wait()
            wake.clear()
            if stop:
                return
            store.sync()
            syncs += 1
            synced.set()

    def wait_durable(seq: int) -> None:
        while store.durable_seq < seq:
            wake.set()
            synced.wait(0.01)
            synced.clear()

    worker = threading.Thread(target=syncer)
    worker.start()
    t = time.perf_counter()
    previous = last = 0
    for r in range(args.group_rounds):
        base = r * args.writers
        for w in range(args.writers):
            last = store.put(b"pipe:%012d" % (base + w), value)
        wake.set()
        wait_durable(previous)
        previous = last
    wait_durable(last)
    seconds = time.perf_counter() - t
    stop = True
    wake.set()
    worker.join()
    store.close()
    ops = args.group_rounds * args.writers
    return result(
        "group_commit_pipelined", "logstore", ops, seconds, writers=args.writers, syncs=syncs
    )


def merge_run(path: str, args: argparse.Namespace, value: bytes) -> Result:
    """Overwrite 60% of the keys, then merge to the end, timing every maybe_merge() call."""
    store = LogStore(path)
    rng = random.Random(11)
    before = store.stats()
    for i in rng.sample(range(args.keys), int(args.keys * 0.6)):
        store.put(bench_key(i), value)
    store.sync()
    fragmented = store.stats()
    calls: list[float] = []
    t0 = time.perf_counter()
    idle = 0
    maintenance_syncs = 0
    while idle < 2:
        t = time.perf_counter()
        worked = store.maybe_merge()
        calls.append(time.perf_counter() - t)
        # As the node's runtime does: merge and hint output is fsynced on a worker
        # thread (the event loop is free meanwhile), so no call fsyncs inline.
        if store.maintenance_sync_wanted(MAINTENANCE_SYNC_BYTES):
            worker = threading.Thread(target=store.sync_maintenance)
            worker.start()
            worker.join()
            maintenance_syncs += 1
            worked = True
        if not worked:
            store.sync()  # a swap waits for a sync covering the overwrites
            idle += 1
        else:
            idle = 0
    total = time.perf_counter() - t0
    after = store.stats()
    store.close()
    calls.sort()
    return result(
        "merge",
        "logstore",
        len(calls),
        total,
        data_bytes_before=before.data_bytes,
        data_bytes_fragmented=fragmented.data_bytes,
        data_bytes_after=after.data_bytes,
        merges=after.merges,
        maintenance_syncs=maintenance_syncs,
        max_call_ms=round(calls[-1] * 1e3, 2),
        p99_call_ms=round(calls[int(len(calls) * 0.99)] * 1e3, 2),
    )


def iter_range_run(path: str) -> Result:
    """Anti-entropy's access pattern: the whole ring in 256 token ranges, in order."""
    store = LogStore(path)
    step = (1 << 128) // 256
    t = time.perf_counter()
    first = sum(1 for _ in store.iter_range(0, step))  # builds the token index
    build = time.perf_counter() - t
    t = time.perf_counter()
    total = first
    for i in range(1, 256):
        total += sum(1 for _ in store.iter_range(i * step, (i + 1) * step % (1 << 128)))
    seconds = time.perf_counter() - t
    n = len(store)
    store.close()
    return result(
        "iter_range_256_ranges",
        "logstore",
        total,
        seconds + build,
        keys=n,
        first_call_s=round(build, 3),
        per_range_ms=round(seconds / 255 * 1e3, 2),
    )


# -- reopen and memory, in a fresh process ------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def reopen_probe(path: str, keys: int) -> Result:
    """Open a closed store twice: timed with RSS, then under tracemalloc."""
    rss0 = rss_bytes()
    t = time.perf_counter()
    store = LogStore(path)
    seconds = time.perf_counter() - t
    rss1 = rss_bytes()
    report = store.recovery
    n = len(store)
    store.close()
    del store
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store = LogStore(path)
    traced, peak = tracemalloc.get_traced_memory()
    traced -= base
    tracemalloc.stop()
    store.close()
    key_object = sys.getsizeof(bench_key(0))
    return result(
        "reopen",
        "logstore",
        n,
        seconds,
        keys_expected=keys,
        segments_from_hints=report.segments_from_hints,
        segments_scanned=report.segments_scanned,
        keydir_bytes_per_key_tracemalloc=round(traced / n, 1),
        key_object_bytes=key_object,
        keydir_bytes_per_key_without_key_objects=round(traced / n - key_object, 1),
        open_peak_bytes_per_key_tracemalloc=round((peak - base) / n, 1),
        rss_delta_bytes_per_key=round((rss1 - rss0) / n, 1),
    )


def probe_in_subprocess(path: str, keys: int) -> Result:
    out = subprocess.run(
        [sys.executable, "-m", "bench.storage", "--reopen-probe", path, "--keys", str(keys)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    parsed: Result = json.loads(out.strip().splitlines()[-1])
    return parsed


# -- reporting ------------------------------------------------------------------------------------


def filesystem_of(path: str) -> str:
    best, fstype = "", "unknown"
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and real.startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    return fstype


def rate(results: list[Result], workload: str, engine: str, field: str = "ops_per_s") -> float:
    for r in results:
        if r["workload"] == workload and r["engine"] == engine:
            return float(r[field])
    return float("nan")


def print_table(results: list[Result], ratios: list[Result]) -> None:
    print(f"{'workload':<24}{'engine':<14}{'ops':>10}{'seconds':>10}{'ops/s':>14}")
    for r in results:
        if r["workload"] in ("reopen", "merge", "iter_range_256_ranges"):
            continue
        cpu = f"  (CPU time: {r['cpu_ops_per_s']:,.0f}/s)" if "cpu_ops_per_s" in r else ""
        print(
            f"{r['workload']:<24}{r['engine']:<14}{r['ops']:>10}"
            f"{r['seconds']:>10.3f}{r['ops_per_s']:>14,.0f}{cpu}"
        )
    for r in results:
        if r["workload"] == "reopen":
            print(
                f"\nreopen of {r['ops']:,} keys: {r['seconds']:.2f} s "
                f"({r['segments_from_hints']} segments from hints, "
                f"{r['segments_scanned']} scanned); keydir "
                f"{r['keydir_bytes_per_key_tracemalloc']} B/key by tracemalloc "
                f"({r['keydir_bytes_per_key_without_key_objects']} B/key without the "
                f"{r['key_object_bytes']}-byte key objects), "
                f"peak while opening {r['open_peak_bytes_per_key_tracemalloc']} B/key, "
                f"RSS delta {r['rss_delta_bytes_per_key']} B/key"
            )
        if r["workload"] == "iter_range_256_ranges":
            print(
                f"iter_range over {r['keys']:,} keys in 256 ranges: {r['seconds']:.2f} s "
                f"({r['first_call_s']} s first call with the index build, then "
                f"{r['per_range_ms']} ms per range of ~{r['keys'] // 256:,} records)"
            )
        if r["workload"] == "merge":
            print(
                f"merge after overwriting 60%: {r['merges']} merges, data "
                f"{r['data_bytes_fragmented'] / 1e6:.0f} MB -> "
                f"{r['data_bytes_after'] / 1e6:.0f} MB "
                f"in {r['seconds']:.1f} s over {r['ops']} maybe_merge() calls; "
                f"longest call {r['max_call_ms']} ms, p99 {r['p99_call_ms']} ms "
                f"({r['maintenance_syncs']} fsyncs of merge output on a worker thread)"
            )
    print()
    for r in ratios:
        verdict = "meets" if r["value"] >= r["target"] else "MISSES"
        print(f"{r['ratio']:<52}{r['value']:>8.2f}x  (target {r['target']}x: {verdict})")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.storage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--keys", type=int, default=1_000_000, help="keys for load/get/reopen")
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--sync-puts", type=int, default=2000, help="puts in put_sync_each")
    p.add_argument("--writers", type=int, default=64, help="writers per group commit")
    p.add_argument("--group-rounds", type=int, default=500)
    p.add_argument("--gets", type=int, default=300_000)
    p.add_argument("--repeats", type=int, default=3, help="get passes; the best counts")
    p.add_argument("--dir", default=None, help="where to create the stores (a real disk)")
    p.add_argument("--quick", action="store_true", help="100k keys and fewer ops")
    p.add_argument("--engines", default="logstore,sqlite,lmdb")
    p.add_argument("--reopen-probe", metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reopen_probe:
        print(json.dumps(reopen_probe(args.reopen_probe, args.keys)))
        return 0
    if args.quick:
        args.keys = min(args.keys, 100_000)
        args.sync_puts = min(args.sync_puts, 300)
        args.group_rounds = min(args.group_rounds, 100)
        args.gets = min(args.gets, 100_000)

    root = tempfile.mkdtemp(prefix="ringfs-bench-storage-", dir=args.dir)
    fstype = filesystem_of(root)
    print(
        f"# storage bench in {root} ({fstype}); {args.keys:,} keys, {args.value_bytes}-byte values"
    )
    if fstype in ("tmpfs", "ramfs"):
        print("# warning: fsync is free on this filesystem; durable rates are meaningless")
    value = os.urandom(args.value_bytes)
    rng = random.Random(7)
    sample = [bench_key(rng.randrange(args.keys)) for _ in range(args.gets)]
    results: list[Result] = []
    engines: list[Engine] = []
    try:
        for name in args.engines.split(","):
            path = os.path.join(root, name)
            os.makedirs(path)
            engine: Engine
            if name == "logstore":
                engine = LogStoreEngine(path)
            elif name == "sqlite":
                engine = SqliteEngine(path)
            elif name == "lmdb":
                engine = LmdbEngine(path, args.keys, args.value_bytes)
            else:
                p.error(f"unknown engine {name}")
            engines.append(engine)
        results.extend(durable_writes(engines, args, value))
        print("# durable writes done", flush=True)
        for engine in engines:
            results.append(load(engine, args, value))
        print("# loads done", flush=True)
        results.extend(random_gets(engines, args, sample))
        for engine in engines:
            engine.close()
        engines = []
        if "logstore" in args.engines.split(","):
            results.append(pipelined_group_commit(os.path.join(root, "pipe"), args, value))
            results.append(probe_in_subprocess(os.path.join(root, "logstore"), args.keys))
            results.append(merge_run(os.path.join(root, "logstore"), args, value))
            results.append(iter_range_run(os.path.join(root, "logstore")))
    finally:
        for engine in engines:
            engine.close()
        shutil.rmtree(root, ignore_errors=True)

    ratios = [
        {
            "bench": "storage",
            "ratio": "group_commit logstore / put_sync_each sqlite",
            "value": rate(results, "group_commit", "logstore")
            / rate(results, "put_sync_each", "sqlite"),
            "target": 5.0,
        },
        {
            "bench": "storage",
            "ratio": "random_get logstore / lmdb (txn per get)",
            "value": rate(results, "random_get", "logstore") / rate(results, "random_get", "lmdb"),
            "target": 0.8,
        },
        {
            "bench": "storage",
            "ratio": "random_get logstore / lmdb (txn per get), CPU time",
            "value": rate(results, "random_get", "logstore", "cpu_ops_per_s")
            / rate(results, "random_get", "lmdb", "cpu_ops_per_s"),
            "target": 0.8,
        },
        {
            "bench": "storage",
            "ratio": "random_get logstore / lmdb_record",
            "value": rate(results, "random_get", "logstore")
            / rate(results, "random_get", "lmdb_record"),
            "target": 0.8,
        },
        {
            "bench": "storage",
            "ratio": "random_get logstore / lmdb_one_txn",
            "value": rate(results, "random_get", "logstore")
            / rate(results, "random_get", "lmdb_one_txn"),
            "target": 0.8,
        },
        {
            "bench": "storage",
            "ratio": "put_sync_each logstore / sqlite",
            "value": rate(results, "put_sync_each", "logstore")
            / rate(results, "put_sync_each", "sqlite"),
            "target": 1.0,
        },
    ]
    print()
    print_table(results, ratios)
    print()
    for r in [*results, *ratios]:
        if isinstance(r.get("value"), float):
            r["value"] = round(r["value"], 3)
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
