"""ringfs versus redis on one node, at equal durability, with 1 and 50 connections.

Both servers sync to disk once a second: redis with `appendonly yes` +
`appendfsync everysec`, ringfs with `--durability interval:1000` (on the `log`
engine when ringfs/storage/logstore.py exists and imports, else `memory`; the
choice is printed). Keys are 16 bytes (redis-benchmark's `key:` + 12 digits,
byte-identical on both sides), values 100 bytes, keys drawn at random from
100000, and every key is written once before measuring so GETs find values.

redis is driven by redis-benchmark (-P 1: one request in flight per connection);
ringfs by bench.loadgen, which does the same over raw sockets with pre-encoded
frames. `--with-bare` adds two more contestants, bare trio+msgpack dict servers
(bench.common) speaking the ringfs frame format: `bare` with a task per connection
on trio's streams, `bare-poll` with one task serving every connection from an
epoll set, as a ringfs node does; the second is the ceiling for a Python server.
`--with-split` adds `ringfs-x2`: two independent one-node ringfs processes, the
connections dealt between them (each prefilled with every key). They are two
stores, not one, and share nothing, so their sum bounds from above what any node
spread over two processes could do on this machine, before paying for the routing
and coordination between them.
All servers run side by side for the whole run and the measurements interleave,
so a burst of load from elsewhere hits every contestant alike. Each measurement
is repeated (`--repeat`, default 2) and the best kept.

Reported per system, op and connection count: ops/s, p50/p99 latency, CPU seconds
of the server (/proc/PID/stat) and of the load generator (getrusage), server CPU
per op, CPU that *other* processes used meanwhile (interference), and the ratio
to redis. A table first, then one JSON object per line.

    python -m bench.kv [--duration 3] [--requests N] [--quick] [--with-bare] [--with-split]
    python -m bench.kv profile --tool cprofile|py-spy --op get -c 50 [--duration 5]
    python -m bench.kv ab --base DIR [--op put,get] [-c 1,50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from bench.common import (
    bench_key,
    bench_value,
    children_cpu_s,
    derive_row,
    free_port,
    machine_busy_s,
    print_json,
    print_table,
    proc_cpu_s,
    repo_root,
    server_process,
    temp_dir,
    tree_env,
)
from bench.loadgen import prefill, run_load

HOST = "127.0.0.1"
KEYSPACE = 100_000
VALUE_BYTES = 100
DURABILITY = "interval:1000"
SYSTEMS = ("redis", "ringfs", "bare", "bare-poll", "ringfs-x2")
RINGFS_LOG = os.path.join(tempfile.gettempdir(), "bench-kv-ringfs.log")
INSTALL_HINT = (
    "redis-server and redis-benchmark are needed for this benchmark.\n"
    "Install them with:  apt-get update && apt-get install -y redis-server\n"
    "(the redis-server package pulls in redis-tools, which provides redis-benchmark)"
)


# -- contestants -------------------------------------------------------------------

def pick_engine(requested: str) -> tuple[str, str]:
    """The ringfs engine to use and why."""
    if requested == "memory":
        return "memory", "asked for with --engine memory"
    try:
        mod = importlib.import_module("ringfs.storage.logstore")
        mod.LogStore  # noqa: B018 - present, not just importable
    except Exception as exc:  # missing, or present but broken
        if requested == "log":
            raise SystemExit(f"bench.kv: --engine log, but ringfs.storage.logstore "
                             f"does not import: {exc}") from None
        return "memory", f"ringfs/storage/logstore.py unavailable ({type(exc).__name__}: {exc})"
    return "log", "ringfs/storage/logstore.py imports"


def redis_cmd(port: int, data_dir: str) -> list[str]:
    return ["redis-server", "--port", str(port), "--bind", HOST, "--dir", data_dir,
            "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--auto-aof-rewrite-percentage", "0",
            "--daemonize", "no", "--logfile", "", "--protected-mode", "no"]


def single_node_settings() -> dict[str, int]:
    """Config settings that make one node a whole cluster (N=R=W=1), if ringfs has them."""
    import dataclasses

    from ringfs.config import NodeConfig

    names = {f.name for f in dataclasses.fields(NodeConfig)}
    return {k: 1 for k in ("n_replicas", "r", "w") if k in names}


def ringfs_cmd(port: int, data_dir: str, engine: str) -> list[str]:
    """`ringfs node` for a single-node store; N=R=W=1 go in a TOML file beside data_dir."""
    cmd = [sys.executable, "-m", "ringfs", "node", "--name", "bench",
           "--listen", f"{HOST}:{port}", "--data-dir", data_dir, "--engine", engine,
           "--durability", DURABILITY, "--log-level", "warning"]
    settings = single_node_settings()
    if settings:
        path = data_dir.rstrip("/") + ".toml"
        with open(path, "w") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in settings.items()))
        cmd += ["--config", path]
    return cmd


def bare_cmd(port: int, poll: bool = False) -> list[str]:
    return [sys.executable, "-m", "bench.common", "bare-server", "--listen", f"{HOST}:{port}",
            *(["--poll"] if poll else [])]


def redis_prefill(port: int, keyspace: int, value_size: int, batch: int = 5000) -> None:
    """SET every key once over one pipelined RESP connection."""
    value = bench_value(value_size)
    with socket.create_connection((HOST, port)) as s:
        for lo in range(0, keyspace, batch):
            hi = min(keyspace, lo + batch)
            cmds = []
            for k in range(lo, hi):
                key = bench_key(k)
                cmds.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                            % (len(key), key, len(value), value))
            s.sendall(b"".join(cmds))
            want = (hi - lo) * 5  # "+OK\r\n"
            got = b""
            while len(got) < want:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("redis closed the connection during prefill")
                got += chunk
            if got != b"+OK\r\n" * (hi - lo):
                raise RuntimeError(f"redis prefill failed: {got[:200]!r}")


def run_redis_benchmark(port: int, server_pid: int, op: str, connections: int,
                        requests: int, keyspace: int, value_size: int) -> dict[str, Any]:
    """One redis-benchmark run of `op` (set|get); CPU of both sides over the run."""
    cmd = ["redis-benchmark", "-h", HOST, "-p", str(port), "-c", str(connections),
           "-n", str(requests), "-d", str(value_size), "-r", str(keyspace), "-P", "1",
           "-t", op, "-q", "--csv"]
    srv0, cli0, busy0 = proc_cpu_s(server_pid), children_cpu_s(), machine_busy_s()
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - t0
    srv1, cli1, busy1 = proc_cpu_s(server_pid), children_cpu_s(), machine_busy_s()
    if out.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed ({out.returncode}): {out.stderr.strip()}")
    rows = [r for r in csv.DictReader(io.StringIO(out.stdout)) if r.get("test")]
    if len(rows) != 1:
        raise RuntimeError(f"unexpected redis-benchmark output: {out.stdout!r}")
    r = rows[0]
    rps = float(r["rps"])
    server_cpu = srv1 - srv0
    client_cpu = cli1 - cli0
    return {
        "op": op, "connections": connections, "procs": 1, "ops": requests, "errors": 0,
        "window_s": requests / rps if rps else elapsed,
        "ops_per_s": rps,
        "p50_ms": float(r["p50_latency_ms"]),
        "p99_ms": float(r["p99_latency_ms"]),
        "mean_ms": float(r["avg_latency_ms"]),
        "server_cpu_s": server_cpu,
        "client_cpu_s": client_cpu,
        "other_cpu_s": max(0.0, busy1 - busy0 - server_cpu - client_cpu),
        "elapsed_s": elapsed,
    }


# -- the comparison ----------------------------------------------------------------

QUIET_CORE_FRACTION = 0.15


def wait_quiet(max_wait_s: float, sample_s: float = 0.5) -> tuple[float, float]:
    """Wait until the machine's busy CPU over `sample_s` is below QUIET_CORE_FRACTION of a
    core, or `max_wait_s` passes; returns (seconds waited, last busy fraction of a core)."""
    t0 = time.monotonic()
    while True:
        b0 = machine_busy_s()
        time.sleep(sample_s)
        frac = (machine_busy_s() - b0) / sample_s
        waited = time.monotonic() - t0
        if frac < QUIET_CORE_FRACTION or waited >= max_wait_s:
            return waited, frac


def compare(args: argparse.Namespace) -> int:
    systems = [x.strip() for x in args.systems.split(",")] if args.systems else (
        ["redis", "ringfs"] + (["bare", "bare-poll"] if args.with_bare else [])
        + (["ringfs-x2"] if args.with_split else []))
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        print(f"bench.kv: unknown system(s) {sorted(unknown)}; use {', '.join(SYSTEMS)}",
              file=sys.stderr)
        return 2
    if "redis" in systems and not (shutil.which("redis-server")
                                   and shutil.which("redis-benchmark")):
        print(f"bench.kv: {INSTALL_HINT}", file=sys.stderr)
        return 2
    tree = os.path.abspath(args.ringfs_tree) if args.ringfs_tree else repo_root()
    with ExitStack() as prio:
        if args.nice:
            try:
                prio.enter_context(run_niced(args.nice))
            except OSError as exc:
                print(f"bench.kv: cannot change niceness by {args.nice}: {exc}",
                      file=sys.stderr)
                return 2
        return _compare(args, systems, tree)


@contextlib.contextmanager
def run_niced(increment: int) -> Iterator[None]:
    """Raise (negative `increment`) this process's priority and its session autogroup's.

    Children inherit the niceness. With kernel autogroups on, niceness only ranks
    processes within one session, so the session's autogroup (restored afterwards)
    is niced too; otherwise other sessions' jobs still get an equal share.
    """
    os.nice(increment)
    path = "/proc/self/autogroup"
    old = None
    try:
        with open(path) as f:
            old = int(f.read().split("nice")[1])
        with open(path, "w") as f:
            f.write(str(max(-20, min(19, old + increment))))
    except (OSError, ValueError, IndexError):
        old = None
    try:
        yield
    finally:
        if old is not None:
            with contextlib.suppress(OSError), open(path, "w") as f:
                f.write(str(old))


def _compare(args: argparse.Namespace, systems: list[str], tree: str) -> int:
    engine, why = pick_engine(args.engine)
    conns_list = [int(c) for c in args.connections.split(",")]
    ops = [o.strip() for o in args.ops.split(",")]
    print(f"# kv: ringfs engine={engine} ({why}), durability {DURABILITY}; "
          f"redis appendonly yes + appendfsync everysec; keys 16 B, values {args.value_size} B, "
          f"keyspace {args.keyspace}; connections {conns_list}; "
          + (f"{args.requests} requests" if args.requests else f"{args.duration:g} s")
          + f" per measurement, best of {args.repeat}; loadgen procs {args.procs}; "
          f"{os.cpu_count()} CPUs"
          + (f"; ringfs from {tree}" if args.ringfs_tree else "")
          + (f"; niceness {os.nice(0)} (session autogroup too)" if args.nice else ""),
          flush=True)
    root = repo_root()
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    ringfs_env = dict(env)
    ringfs_env["PYTHONPATH"] = tree + os.pathsep + env["PYTHONPATH"]
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    runs: dict[tuple[str, str, int], list[float]] = {}
    redis_rate: dict[tuple[str, int], float] = {}
    with ExitStack() as stack:
        ports = {s: free_port() for s in systems}
        pids: dict[str, int] = {}
        if "redis" in systems:
            rd = stack.enter_context(temp_dir("bench-kv-redis-"))
            pids["redis"] = stack.enter_context(
                server_process(redis_cmd(ports["redis"], rd), HOST, ports["redis"])).pid
        if "ringfs" in systems:
            fd = stack.enter_context(temp_dir("bench-kv-ringfs-"))
            pids["ringfs"] = stack.enter_context(
                server_process(ringfs_cmd(ports["ringfs"], os.path.join(fd, "data"), engine),
                               HOST, ports["ringfs"], cwd=tree, env=ringfs_env,
                               log_path=RINGFS_LOG if args.keep_logs else None)).pid
        split: list[tuple[int, int]] = []  # ringfs-x2's (port, pid) pairs; the first is ports[]'s
        if "ringfs-x2" in systems:
            fd = stack.enter_context(temp_dir("bench-kv-ringfs-x2-"))
            for i in range(2):
                port = ports["ringfs-x2"] if i == 0 else free_port()
                split.append((port, stack.enter_context(
                    server_process(ringfs_cmd(port, os.path.join(fd, f"data{i}"), engine),
                                   HOST, port, cwd=tree, env=ringfs_env)).pid))
            pids["ringfs-x2"] = split[0][1]
        for bare in ("bare", "bare-poll"):
            if bare in systems:
                pids[bare] = stack.enter_context(
                    server_process(bare_cmd(ports[bare], poll=bare == "bare-poll"), HOST,
                                   ports[bare], cwd=root, env=env)).pid
        for s in systems:
            t = time.monotonic()
            if s == "redis":
                redis_prefill(ports[s], args.keyspace, args.value_size)
            elif s == "ringfs-x2":
                for port, _ in split:
                    prefill(HOST, port, args.keyspace, args.value_size)
            else:
                prefill(HOST, ports[s], args.keyspace, args.value_size)
            print(f"# prefilled {s} with {args.keyspace} keys in {time.monotonic() - t:.1f} s",
                  flush=True)
        # redis-benchmark counts requests, not seconds: size its runs from a short probe.
        if not args.requests and "redis" in systems:
            for c in conns_list:
                for op in ops:
                    probe = 5000 if c == 1 else 20000
                    r = run_redis_benchmark(ports["redis"], pids["redis"], redis_op(op), c,
                                            probe, args.keyspace, args.value_size)
                    redis_rate[(op, c)] = r["ops_per_s"]
        for c in conns_list:
            for op in ops:
                for rep in range(args.repeat):
                    waited = wait_quiet(args.wait_quiet) if args.wait_quiet else None
                    if waited is not None and waited[1] > QUIET_CORE_FRACTION:
                        print(f"#   machine still busy after {waited[0]:.0f} s "
                              f"({100 * waited[1]:.0f}% of a core used elsewhere)", flush=True)
                    for s in systems:
                        if s == "redis":
                            n = args.requests or max(
                                10_000, int(redis_rate[(op, c)] * args.duration))
                            r = run_redis_benchmark(ports[s], pids[s], redis_op(op), c, n,
                                                    args.keyspace, args.value_size)
                        else:
                            where: dict[str, Any] = (
                                {"addrs": [(HOST, port) for port, _ in split],
                                 "server_pids": [pid for _, pid in split]}
                                if s == "ringfs-x2" else {"server_pid": pids[s]})
                            r = run_load(HOST, ports[s], op=ringfs_op(op), connections=c,
                                         duration_s=None if args.requests else args.duration,
                                         requests=args.requests, warmup_s=args.warmup,
                                         procs=args.procs, keyspace=args.keyspace,
                                         value_size=args.value_size, **where)
                        r["system"] = s
                        r["run"] = rep + 1
                        r["op"] = op
                        key = (s, op, c)
                        runs.setdefault(key, []).append(r["ops_per_s"])
                        if key not in best or r["ops_per_s"] > best[key]["ops_per_s"]:
                            best[key] = r
                        print(f"#   {s:<6} {op} c={c:<3} run {rep + 1}: "
                              f"{r['ops_per_s']:>9.0f} ops/s  p50 {r['p50_ms']:.3f} ms  "
                              f"p99 {r['p99_ms']:.3f} ms  srv {r['server_cpu_s']:.2f} s  "
                              f"cli {r['client_cpu_s']:.2f} s  other {r['other_cpu_s']:.2f} s"
                              + (f"  ERRORS {r['errors']}" if r["errors"] else ""),
                              flush=True)
    rows = []
    for c in conns_list:
        for op in ops:
            base = best.get(("redis", op, c))
            for s in systems:
                rows.append(derive_row(best[(s, op, c)], c, base, "ratio_vs_redis",
                                       runs[(s, op, c)]))
    print()
    print_table(rows, [
        ("system", "system", ""), ("op", "op", ""), ("connections", "conns", "d"),
        ("ops_per_s", "ops/s", ",.0f"), ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"),
        ("server_cpu_s", "srv cpu s", ".2f"), ("server_core_pct", "srv %core", ".0f"),
        ("server_us_per_op", "srv us/op", ".1f"),
        ("client_cpu_s", "cli cpu s", ".2f"), ("client_core_pct", "cli %core", ".0f"),
        ("other_core_pct", "other %core", ".0f"), ("ratio_vs_redis", "vs redis", ".2f"),
    ])
    print()
    targets = {1: 0.7, 50: 0.5}
    for c in conns_list:
        parts = []
        for op in ops:
            mine = best.get(("ringfs", op, c))
            theirs = best.get(("redis", op, c))
            if mine and theirs:
                parts.append(f"{op} {mine['ops_per_s'] / theirs['ops_per_s']:.2f}")
        if not parts:
            continue
        tgt = targets.get(c)
        print(f"# ringfs/redis at {c} connection(s): {', '.join(parts)}"
              + (f" (target {tgt})" if tgt else ""))
    busy = [r for r in rows if r["other_core_pct"] > 20]
    if busy:
        print(f"# WARNING: other processes used >20% of a core during {len(busy)} of the "
              f"best measurements; the box was not quiet, compare ratios, not absolutes")
    for r in rows:
        out = {k: v for k, v in r.items() if k not in ("elapsed_s",)}
        out.update(bench="kv", engine=engine if r["system"] == "ringfs" else None,
                   durability=DURABILITY if r["system"] == "ringfs" else
                   ("appendfsync everysec" if r["system"] == "redis" else "none"),
                   key_bytes=16, value_bytes=args.value_size, keyspace=args.keyspace,
                   best_of=args.repeat)
        print_json(out)
    return 0


def redis_op(op: str) -> str:
    return {"put": "set", "set": "set", "get": "get"}[op]


def ringfs_op(op: str) -> str:
    return {"put": "put", "set": "put", "get": "get"}[op]


# -- profiling the ringfs server under load ----------------------------------------

def _serve_profiled(listen: str, data_dir: str, engine: str, out: str) -> None:
    """Run a ringfs node in this process under cProfile; dump stats to `out` on exit."""
    import cProfile

    from ringfs.config import build_config
    from ringfs.runtime.server import serve_config

    config = build_config({"name": "bench", "listen": listen, "data_dir": data_dir,
                           "engine": engine, "durability": DURABILITY, "log_level": "warning",
                           **single_node_settings()})
    import signal

    prof = cProfile.Profile()
    # Profile only the measured load, not start-up and prefill: the driver sends SIGUSR1.
    signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
    try:
        serve_config(config)
    finally:
        prof.disable()
        prof.dump_stats(out)


def _find_pyspy() -> str | None:
    for cand in (os.environ.get("PYSPY"), shutil.which("py-spy"),
                 os.path.join(os.path.dirname(sys.executable), "py-spy")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _pyspy_summary(collapsed: str, top: int) -> None:
    """Self and inclusive sample shares per function (lines merged) from py-spy raw output."""
    import re

    strip_line = re.compile(r":\d+\)$")
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    line_n: dict[str, int] = {}
    total = 0
    with open(collapsed) as f:
        for line in f:
            stack, _, n_s = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(n_s)
            total += n
            frames = stack.split(";")
            funcs = [strip_line.sub(")", fr) for fr in frames]
            for fn in set(funcs):
                incl_n[fn] = incl_n.get(fn, 0) + n
            self_n[funcs[-1]] = self_n.get(funcs[-1], 0) + n
            line_n[frames[-1]] = line_n.get(frames[-1], 0) + n
    print(f"# py-spy: {total} samples (active threads only)")
    for title, d in (("self time, per function", self_n),
                     ("inclusive time, per function", incl_n),
                     ("self time, per line", line_n)):
        print(f"\n## top {top} by {title}")
        for fr, n in sorted(d.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{100.0 * n / total:6.1f}%  {fr}")


def profile(args: argparse.Namespace) -> int:
    engine, why = pick_engine(args.engine)
    root = repo_root()
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    port = free_port()
    with temp_dir("bench-kv-prof-") as d:
        stats = os.path.join(d, "server.prof")
        if args.tool == "cprofile":
            cmd = [sys.executable, "-m", "bench.kv", "_serve-profiled", "--listen",
                   f"{HOST}:{port}", "--data-dir", os.path.join(d, "data"), "--engine", engine,
                   "--out", stats]
        else:
            cmd = ringfs_cmd(port, os.path.join(d, "data"), engine)
        print(f"# profiling ringfs (engine={engine}: {why}) with {args.tool}: {args.op} "
              f"c={args.connections} for {args.duration:g} s", flush=True)
        with server_process(cmd, HOST, port, cwd=root, env=env) as proc:
            if args.op == "get":
                prefill(HOST, port, args.keyspace, VALUE_BYTES)
            spy = None
            if args.tool == "cprofile":
                os.kill(proc.pid, signal.SIGUSR1)
            if args.tool == "py-spy":
                pyspy = _find_pyspy()
                if pyspy is None:
                    print("bench.kv: py-spy not found; `.venv/bin/pip install py-spy` or set "
                          "PYSPY=/path/to/py-spy", file=sys.stderr)
                    return 2
                spy = subprocess.Popen(
                    [pyspy, "record", "--pid", str(proc.pid), "--rate", "250",
                     "--duration", str(int(args.duration + args.warmup + 1)),
                     "--format", "raw", "--output", stats, "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
            r = run_load(HOST, port, op=args.op, connections=args.connections,
                         duration_s=args.duration, warmup_s=args.warmup, procs=args.procs,
                         keyspace=args.keyspace, server_pid=proc.pid)
            print_json(r)
            if spy is not None:
                spy.wait()
        if args.tool == "cprofile":
            import pstats

            st = pstats.Stats(stats)
            st.sort_stats("tottime").print_stats(args.top)
            st.sort_stats("cumulative").print_stats(args.top)
            if args.save:
                shutil.copy(stats, args.save)
        else:
            _pyspy_summary(stats, args.top)
            if args.save:
                shutil.copy(stats, args.save)
    return 0


def ab(args: argparse.Namespace) -> int:
    """Two ringfs nodes side by side, one running the code of `--base` (A), one this
    tree's (B), loaded in turns by bench.loadgen with the settings of the main
    comparison; the order alternates each round, so both see the same machine
    speed however much it drifts. Prints every round, the best of each, and B/A."""
    engine, why = pick_engine(args.engine)
    trees = {"A": os.path.abspath(args.base), "B": repo_root()}
    if not os.path.isfile(os.path.join(trees["A"], "ringfs", "node.py")):
        print(f"bench.kv ab: {trees['A']} is not a ringfs tree", file=sys.stderr)
        return 2
    ops = [o.strip() for o in args.op.split(",")]
    conns = [int(c) for c in args.connections.split(",")]
    best: dict[tuple[str, int, str], dict[str, Any]] = {}
    with ExitStack() as stack:
        if args.nice:
            stack.enter_context(run_niced(args.nice))
        work = stack.enter_context(temp_dir("bench-kv-ab-"))
        servers: dict[str, tuple[int, int]] = {}
        for label, tree in trees.items():
            port = free_port()
            pid = stack.enter_context(server_process(
                ringfs_cmd(port, os.path.join(work, label), engine), HOST, port, cwd=tree,
                env=tree_env(tree))).pid
            prefill(HOST, port, args.keyspace, VALUE_BYTES)
            servers[label] = (port, pid)
        print(f"# A: {trees['A']}\n# B: {trees['B']}\n# engine {engine} ({why}); ops {ops}, "
              f"connections {conns}, {args.rounds} rounds of {args.duration:g} s, in turns",
              flush=True)
        for rnd in range(args.rounds):
            for op in ops:
                for c in conns:
                    for label in (list(trees) if rnd % 2 == 0 else list(reversed(trees))):
                        port, pid = servers[label]
                        r = run_load(HOST, port, op=op, connections=c,
                                     duration_s=args.duration, warmup_s=args.warmup, procs=1,
                                     keyspace=args.keyspace, server_pid=pid)
                        us = 1e6 * r["server_cpu_s"] / max(1, r["ops"])
                        print(f"# round {rnd + 1} {op} c={c} {label}: {r['ops_per_s']:,.0f} "
                              f"ops/s, {us:.1f} us of server CPU per op", flush=True)
                        key = (op, c, label)
                        if key not in best or r["ops_per_s"] > best[key]["ops_per_s"]:
                            best[key] = r
    for op in ops:
        for c in conns:
            a, b = best[(op, c, "A")], best[(op, c, "B")]
            print(f"{op} c={c}: A {a['ops_per_s']:,.0f} B {b['ops_per_s']:,.0f} ops/s (best of "
                  f"{args.rounds}); B/A {b['ops_per_s'] / max(1.0, a['ops_per_s']):.3f}x")
    return 0


def micro(args: argparse.Namespace) -> int:
    """CPU microseconds per call of each layer of the request path, in this process.

    Uses process CPU time (not wall time), best of `--repeat`, so a busy machine
    disturbs it far less than the end-to-end runs. Layers: frame splitting, the
    node's whole request handling (parse, handler, engine, DVV, reply encoding),
    the engine alone, and what a bare dict server does for the same request.
    """
    import random

    import msgpack

    from ringfs.config import build_config
    from ringfs.node import Node
    from ringfs.runtime.server import open_engine
    from ringfs.wire import FrameDecoder

    engine_name, why = pick_engine(args.engine)
    n: int = args.ops
    value = bench_value(VALUE_BYTES)
    rng = random.Random(1)
    keys = [bench_key(rng.randrange(args.keyspace)) for _ in range(n)]

    def frame(obj: Any) -> bytes:
        body: bytes = msgpack.packb(obj, use_bin_type=True)
        return len(body).to_bytes(4, "big") + body

    get_bodies = [[0, i + 1, 2, {"key": k}] for i, k in enumerate(keys)]
    put_bodies = [[0, i + 1, 3, {"key": k, "value": value}] for i, k in enumerate(keys)]
    get_frames = [frame(b) for b in get_bodies]
    put_frames = [frame(b) for b in put_bodies]

    def best(fn: Any) -> float:
        times: list[float] = []
        for _ in range(args.repeat):
            t = time.process_time()
            fn()
            times.append(time.process_time() - t)
        return 1e6 * min(times) / n

    results: dict[str, float] = {}
    with temp_dir("bench-kv-micro-") as d:
        config = build_config({"name": "bench", "listen": "127.0.0.1:1",
                               "data_dir": os.path.join(d, "data"), "engine": engine_name,
                               "durability": DURABILITY, "log_level": "warning",
                               **single_node_settings()})
        engine = open_engine(config)
        node = Node(config, engine, random.Random(0), 0.0)
        node.client_connected(1, 0.0)
        hello = node.client_request(1, [0, 0, 0, {"versions": [1]}], 0.0)
        assert hello is not None
        request = node.client_request
        drain = node.drain_outbox
        for k in range(args.keyspace):  # every key present, as in the end-to-end runs
            request(1, [0, 1, 3, {"key": bench_key(k), "value": value}], 0.0)
            drain()

        def node_get() -> None:
            for b in get_bodies:
                request(1, b, 0.0)
                drain()

        def node_put() -> None:
            for b in put_bodies:
                request(1, b, 0.0)
                drain()

        def decode_get() -> None:
            dec = FrameDecoder(1 << 20)
            for f in get_frames:
                dec.feed(f)

        def decode_put() -> None:
            dec = FrameDecoder(1 << 20)
            for f in put_frames:
                dec.feed(f)

        def engine_get() -> None:
            g = engine.get
            for k in keys:
                g(k)

        def engine_put() -> None:
            p = engine.put
            rec = engine.get(keys[0])
            meta = rec.meta if rec is not None else b""
            for k in keys:
                p(k, b"", meta)

        results["decode GET frame (FrameDecoder.feed)"] = best(decode_get)
        results["decode PUT frame (FrameDecoder.feed)"] = best(decode_put)
        results["Node.client_request GET (+drain_outbox)"] = best(node_get)
        results["Node.client_request PUT (+drain_outbox)"] = best(node_put)
        results[f"engine.get ({engine_name})"] = best(engine_get)
        results[f"engine.put ({engine_name})"] = best(engine_put)
        if hasattr(node, "_load"):
            ld = node._load

            def node_load() -> None:
                for k in keys:
                    ld(k)

            results["Node._load (engine.get + meta unpack + DVVSet)"] = best(node_load)
        engine.close()

    store: dict[bytes, bytes] = {k: value for k in keys}
    unpackb = msgpack.unpackb
    pack = msgpack.Packer(use_bin_type=True).pack

    def bare(frames: list[bytes]) -> None:
        for f in frames:
            _, rid, op, a = unpackb(f[4:])
            if op == 3:
                store[a["key"]] = a["value"]
                res: dict[str, Any] = {"context": b""}
            else:
                v = store.get(a["key"])
                res = {"found": v is not None, "values": [v], "context": b""}
            body = pack([1, rid, res])
            len(body).to_bytes(4, "big") + body

    results["bare: unpack + dict GET + pack"] = best(lambda: bare(get_frames))
    results["bare: unpack + dict SET + pack"] = best(lambda: bare(put_frames))
    print(f"# micro: engine={engine_name} ({why}); {n} calls, best of {args.repeat}, "
          f"process CPU time")
    width = max(len(k) for k in results)
    for name, us in results.items():
        print(f"{name:<{width}}  {us:8.2f} us")
    print_json({"bench": "kv_micro", "engine": engine_name,
                "us_per_call": {k: round(v, 3) for k, v in results.items()}})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve-profiled"]:
        p = argparse.ArgumentParser(prog="python -m bench.kv _serve-profiled")
        p.add_argument("--listen", required=True)
        p.add_argument("--data-dir", required=True)
        p.add_argument("--engine", required=True)
        p.add_argument("--out", required=True)
        a = p.parse_args(argv[1:])
        _serve_profiled(a.listen, a.data_dir, a.engine, a.out)
        return 0
    if argv[:1] == ["ab"]:
        p = argparse.ArgumentParser(prog="python -m bench.kv ab", description=ab.__doc__)
        p.add_argument("--base", required=True, metavar="DIR",
                       help="a checkout of the version to compare against")
        p.add_argument("--op", default="put", help="comma-separated: put,get (default put)")
        p.add_argument("-c", "--connections", default="50", help="comma-separated (default 50)")
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--duration", type=float, default=2.0)
        p.add_argument("--warmup", type=float, default=0.3)
        p.add_argument("--keyspace", type=int, default=KEYSPACE)
        p.add_argument("--engine", choices=("auto", "memory", "log"), default="auto")
        p.add_argument("--nice", type=int, default=0, metavar="N")
        return ab(p.parse_args(argv[1:]))
    if argv[:1] == ["micro"]:
        p = argparse.ArgumentParser(prog="python -m bench.kv micro",
                                    description="CPU cost per call of each request-path layer.")
        p.add_argument("--ops", type=int, default=30_000)
        p.add_argument("--repeat", type=int, default=3)
        p.add_argument("--keyspace", type=int, default=KEYSPACE)
        p.add_argument("--engine", choices=("auto", "memory", "log"), default="auto")
        return micro(p.parse_args(argv[1:]))
    if argv[:1] == ["profile"]:
        p = argparse.ArgumentParser(prog="python -m bench.kv profile",
                                    description="Profile a ringfs node under bench.loadgen.")
        p.add_argument("--tool", choices=("cprofile", "py-spy"), default="cprofile")
        p.add_argument("--op", choices=("get", "put"), default="get")
        p.add_argument("-c", "--connections", type=int, default=50)
        p.add_argument("--duration", type=float, default=5.0)
        p.add_argument("--warmup", type=float, default=0.5)
        p.add_argument("--procs", type=int, default=1)
        p.add_argument("--keyspace", type=int, default=KEYSPACE)
        p.add_argument("--engine", choices=("auto", "memory", "log"), default="auto")
        p.add_argument("--top", type=int, default=30)
        p.add_argument("--save", help="copy the raw profile here")
        return profile(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="python -m bench.kv", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, default=None,
                   help="seconds per measurement (default 3; 1 with --quick)")
    g.add_argument("--requests", type=int, help="requests per measurement instead of seconds")
    p.add_argument("--quick", action="store_true",
                   help="1 s per measurement, one repeat, 20000 keys")
    p.add_argument("--repeat", type=int, default=None, help="runs per measurement, best kept "
                   "(default 2; 1 with --quick)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds (loadgen)")
    p.add_argument("--connections", default="1,50", help="comma-separated (default 1,50)")
    p.add_argument("--ops", default="set,get", help="comma-separated: set,get")
    p.add_argument("--with-bare", action="store_true",
                   help="also run the bare trio+msgpack dict servers (the Python ceiling)")
    p.add_argument("--with-split", action="store_true",
                   help="also run ringfs-x2, two independent one-node ringfs processes "
                   "sharing the connections (an upper bound for a node spread over two)")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)} "
                   "(default redis,ringfs, plus both bare servers with --with-bare and "
                   "ringfs-x2 with --with-split)")
    p.add_argument("--ringfs-tree", metavar="DIR",
                   help="run the ringfs server from this source tree (compare a change)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each round, wait up to this long for other processes to "
                   "use less than 15%% of a core (shared machines)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="add N to the niceness of every process of the run (negative, as "
                   "root, to win CPU from unrelated jobs on a shared machine)")
    p.add_argument("--engine", choices=("auto", "memory", "log"), default="auto")
    p.add_argument("--procs", type=int, default=1, help="load generator processes")
    p.add_argument("--keyspace", type=int, default=None)
    p.add_argument("--value-size", type=int, default=VALUE_BYTES)
    p.add_argument("--keep-logs", action="store_true",
                   help=f"write the ringfs server log to {RINGFS_LOG}")
    a = p.parse_args(argv)
    if a.duration is None:
        a.duration = 1.0 if a.quick else 3.0
    if a.repeat is None:
        a.repeat = 1 if a.quick else 2
    if a.keyspace is None:
        a.keyspace = 20_000 if a.quick else KEYSPACE
    if a.quick:
        a.warmup = min(a.warmup, 0.3)
    return compare(a)


if __name__ == "__main__":
    sys.exit(main())
