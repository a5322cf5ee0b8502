"""A closed-loop load generator for the ringfs wire protocol that stays out of the way.

Every connection keeps exactly one request in flight (like redis-benchmark -P 1):
send, wait for the whole reply, send the next. Request frames (4-byte length +
msgpack [0, id, op, {key, value}]) are encoded once before the run, so the hot
loop only sends bytes, reads bytes, checks the frame length and takes a
timestamp. A worker process with one connection uses a plain blocking socket; a
worker with several multiplexes them with epoll directly (no selectors layer).
Connections can be spread over several worker processes (`--procs`) and over
several servers (`--addr A,B,C`: connection i goes to server i mod 3 here, counted
across all workers), e.g. the nodes of one cluster.

Runs are either timed (`--duration`, after a `--warmup` whose replies are not
counted) or counted (`--requests`, total over all connections). All workers
start on one shared CLOCK_MONOTONIC instant, so the caller can sample a server's
CPU over exactly the measured window. Each worker reports its own CPU seconds
(getrusage) over the window and every latency it measured; percentiles are
computed over all of them.

    python -m bench.loadgen --addr 127.0.0.1:7001 --op put -c 50 --duration 5
    python -m bench.loadgen --addr 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 -c 50
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import select
import socket
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any

import msgpack

from bench.common import (
    KEY_PREFIX,
    bench_key,
    bench_value,
    machine_busy_s,
    percentile,
    print_json,
    proc_cpu_s,
)

OP_HELLO = 0
OP_GET = 2
OP_PUT = 3
OPS = {"get": OP_GET, "put": OP_PUT, "set": OP_PUT}

FRAME_POOL = 1 << 15
"""Distinct pre-encoded request frames per worker (random keys), used round-robin."""
RECV_BYTES = 65536


def _frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def build_frames(op: int, keyspace: int, value_size: int, count: int, seed: int,
                 key_prefix: bytes = KEY_PREFIX) -> list[bytes]:
    """`count` request frames for `op` on random keys of bench_key(0..keyspace-1)."""
    rng = random.Random(seed)
    value = bench_value(value_size)
    frames = []
    for i in range(count):
        key = bench_key(rng.randrange(keyspace), key_prefix)
        args: dict[str, bytes] = {"key": key} if op == OP_GET else {"key": key, "value": value}
        frames.append(_frame([0, i + 1, op, args]))
    return frames


def _read_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(RECV_BYTES)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data


def connect(host: str, port: int) -> socket.socket:
    """A connected, handshaken (HELLO) blocking socket with TCP_NODELAY."""
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(_frame([0, 0, OP_HELLO, {"versions": [1]}]))
    reply = msgpack.unpackb(_read_frame(s)[4:], raw=False)
    if reply[0] != 1:
        raise ConnectionError(f"HELLO refused: {reply!r}")
    s.settimeout(None)
    return s


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the hot loops ---------------------------------------------------------------

def _loop_one(sock: socket.socket, frames: list[bytes], deadline_ns: int, max_ops: int,
              lat: array[int] | None, start_idx: int) -> tuple[int, int, int]:
    """One connection, blocking: returns (ops, errors, next frame index)."""
    clock = time.monotonic_ns
    send = sock.sendall
    recv = sock.recv
    nframes = len(frames)
    i = start_idx
    ops = errors = 0
    record = lat.append if lat is not None else None
    t = clock()
    while t < deadline_ns and ops < max_ops:
        send(frames[i])
        i += 1
        if i == nframes:
            i = 0
        data = recv(RECV_BYTES)
        if len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                chunk = recv(RECV_BYTES)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                data += chunk
        now = clock()
        if record is not None:
            record(now - t)
        # Body byte 0 is the fixarray marker, byte 1 the frame type: 1 = response.
        if data[5] != 1:
            errors += 1
        ops += 1
        t = now
    return ops, errors, i


def _loop_many(socks: list[socket.socket], frames: list[bytes], warm_end_ns: int,
               end_ns: int, max_ops: int, lat: array[int],
               on_measure_start: Any) -> tuple[int, int]:
    """Many connections over epoll, one request in flight each: returns (ops, errors)."""
    clock = time.monotonic_ns
    ep = select.epoll(len(socks))
    by_fd: dict[int, socket.socket] = {}
    for s in socks:
        s.setblocking(False)
        by_fd[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLIN)
    poll = ep.poll
    nframes = len(frames)
    sent: dict[int, int] = {}
    partial: dict[int, bytes] = {}
    record = lat.append
    i = 0
    ops = errors = 0
    measuring = warm_end_ns <= clock()
    if measuring:
        on_measure_start()
    stopping = False
    for fd, s in by_fd.items():
        sent[fd] = clock()
        s.send(frames[i])
        i = (i + 1) % nframes
    outstanding = len(by_fd)
    drain_deadline = 0
    while outstanding:
        events = poll(1.0)
        now = clock()
        if not measuring and now >= warm_end_ns:
            measuring = True
            on_measure_start()
        if not stopping and (now >= end_ns or ops >= max_ops):
            stopping = True
            drain_deadline = now + 2_000_000_000
        if stopping and now >= drain_deadline:
            break
        for fd, _ in events:
            data = by_fd[fd].recv(RECV_BYTES)
            if not data:
                raise ConnectionError("server closed the connection")
            if fd in partial:
                data = partial.pop(fd) + data
            if len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
                partial[fd] = data
                continue
            if data[5] != 1:
                errors += 1
            if measuring and not stopping:
                record(now - sent[fd])
                ops += 1
            if stopping:
                outstanding -= 1
                continue
            t = clock()
            by_fd[fd].send(frames[i])
            sent[fd] = t
            i += 1
            if i == nframes:
                i = 0
    ep.close()
    return ops, errors


def _worker(addrs: list[tuple[str, int]], first_conn: int, nconns: int, op: int,
            keyspace: int, value_size: int, seed: int, warmup_s: float,
            duration_s: float | None, requests: int | None, pipe: Any,
            key_prefix: bytes = KEY_PREFIX) -> None:
    try:
        frames = build_frames(op, keyspace, value_size, FRAME_POOL, seed, key_prefix)
        socks = [connect(*addrs[(first_conn + j) % len(addrs)]) for j in range(nconns)]
        pipe.send("ready")
        t0_ns: int = pipe.recv()
        lat: array[int] = array("q")
        max_ops = requests if requests is not None else sys.maxsize
        if duration_s is None:
            warm_end = t0_ns
            end = sys.maxsize
        else:
            warm_end = t0_ns + int(warmup_s * 1e9)
            end = warm_end + int(duration_s * 1e9)
        delay = (t0_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        mark: dict[str, float] = {}

        def measure_start() -> None:
            mark["cpu"] = _cpu()
            mark["t"] = time.monotonic_ns()

        if nconns == 1:
            idx = 0
            if warm_end > time.monotonic_ns():
                _, _, idx = _loop_one(socks[0], frames, warm_end, sys.maxsize, None, 0)
            measure_start()
            ops, errors, _ = _loop_one(socks[0], frames, end, max_ops, lat, idx)
        else:
            ops, errors = _loop_many(socks, frames, warm_end, end, max_ops, lat, measure_start)
        t_end = time.monotonic_ns()
        cpu = _cpu() - mark["cpu"]
        window = (min(t_end, end) - mark["t"]) / 1e9
        for s in socks:
            s.close()
        pipe.send({"ops": ops, "errors": errors, "cpu_s": cpu, "window_s": window,
                   "lat": lat.tobytes()})
    except BaseException as exc:  # report, never hang the parent
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


# -- the driver ------------------------------------------------------------------

def run_load(host: str, port: int, *, op: str, connections: int,
             duration_s: float | None = 5.0, requests: int | None = None,
             warmup_s: float = 0.5, procs: int = 1, keyspace: int = 100_000,
             value_size: int = 100, server_pid: int | None = None,
             seed: int = 1, addrs: Sequence[tuple[str, int]] | None = None,
             server_pids: Sequence[int] | None = None,
             key_prefix: bytes = KEY_PREFIX) -> dict[str, Any]:
    """Drive host:port with `connections` closed-loop connections; returns the result.

    Exactly one of `duration_s` / `requests` decides when to stop. With
    `server_pid`, the server's CPU over the measured window is reported too.
    `addrs` replaces host:port with several servers, connections spread round-robin;
    `server_pids` replaces server_pid with several processes, whose CPU is summed
    (and also reported per process, in order, as server_cpu_by_pid_s).
    """
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s and requests")
    targets = list(addrs) if addrs else [(host, port)]
    pids = list(server_pids) if server_pids else ([server_pid] if server_pid else [])
    opcode = OPS[op]
    procs = max(1, min(procs, connections))
    ctx = mp.get_context("fork")
    per = [connections // procs + (1 if w < connections % procs else 0) for w in range(procs)]
    per_req = None
    workers = []
    for w in range(procs):
        if requests is not None:
            per_req = requests // procs + (1 if w < requests % procs else 0)
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(targets, sum(per[:w]), per[w], opcode, keyspace,
                                              value_size, seed * 1000 + w, warmup_s,
                                              duration_s, per_req, child, key_prefix),
                        daemon=True)
        p.start()
        child.close()
        workers.append((p, parent))
    try:
        for _, conn in workers:
            msg = conn.recv()
            if msg != "ready":
                raise RuntimeError(f"load generator worker failed: {msg.get('error', msg)}")
        t0 = time.monotonic_ns() + 100_000_000
        for _, conn in workers:
            conn.send(t0)
        measure_from = t0 + (int(warmup_s * 1e9) if duration_s is not None else 0)
        time.sleep(max(0.0, (measure_from - time.monotonic_ns()) / 1e9))
        srv0 = [proc_cpu_s(pid) for pid in pids]
        busy0 = machine_busy_s()
        srv1: list[float] | None = None
        busy1 = None
        if duration_s is not None:
            # Sample at the end of the window, not after the workers' drain and exit.
            time.sleep(max(0.0, (measure_from + int(duration_s * 1e9) - time.monotonic_ns())
                           / 1e9))
            srv1 = [proc_cpu_s(pid) for pid in pids]
            busy1 = machine_busy_s()
        results = []
        for _, conn in workers:
            msg = conn.recv()
            if "error" in msg:
                raise RuntimeError(f"load generator worker failed: {msg['error']}")
            results.append(msg)
        if busy1 is None:
            srv1 = [proc_cpu_s(pid) for pid in pids]
            busy1 = machine_busy_s()
    finally:
        for p, conn in workers:
            conn.close()
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    lat = array("q")
    for r in results:
        lat.frombytes(r["lat"])
    lat_sorted = sorted(lat)
    ops = sum(r["ops"] for r in results)
    window = max(r["window_s"] for r in results)
    client_cpu = sum(r["cpu_s"] for r in results)
    by_pid = [b - a for a, b in zip(srv0, srv1 or [], strict=True)] if pids else []
    server_cpu = sum(by_pid) if pids else None
    other = busy1 - busy0 - client_cpu - (server_cpu or 0.0)
    out = {
        "op": op,
        "connections": connections,
        "procs": procs,
        "ops": ops,
        "errors": sum(r["errors"] for r in results),
        "window_s": window,
        "ops_per_s": ops / window if window > 0 else 0.0,
        "p50_ms": percentile(lat_sorted, 50) / 1e6,
        "p99_ms": percentile(lat_sorted, 99) / 1e6,
        "mean_ms": (sum(lat_sorted) / len(lat_sorted) / 1e6) if lat_sorted else float("nan"),
        "client_cpu_s": client_cpu,
        "client_cpu_max_proc_s": max(r["cpu_s"] for r in results),
        "server_cpu_s": server_cpu,
        "other_cpu_s": max(0.0, other),
    }
    if len(pids) > 1:
        out["server_cpu_by_pid_s"] = by_pid
    return out


def prefill(host: str, port: int, keyspace: int, value_size: int, batch: int = 2000,
            key_prefix: bytes = KEY_PREFIX) -> float:
    """Write every key 0..keyspace-1 once (pipelined); returns the seconds it took."""
    t = time.monotonic()
    value = bench_value(value_size)
    s = connect(host, port)
    try:
        for lo in range(0, keyspace, batch):
            hi = min(keyspace, lo + batch)
            s.sendall(b"".join(_frame([0, k + 1, OP_PUT,
                                       {"key": bench_key(k, key_prefix), "value": value}])
                               for k in range(lo, hi)))
            buf = b""
            got = 0
            while got < hi - lo:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("server closed the connection during prefill")
                buf += chunk
                pos = 0
                while len(buf) - pos >= 4:
                    n = int.from_bytes(buf[pos:pos + 4], "big")
                    if len(buf) - pos - 4 < n:
                        break
                    if buf[pos + 5] != 1:
                        raise RuntimeError(f"prefill PUT failed: "
                                           f"{msgpack.unpackb(buf[pos + 4:pos + 4 + n])!r}")
                    pos += 4 + n
                    got += 1
                buf = buf[pos:]
    finally:
        s.close()
    return time.monotonic() - t


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", default="127.0.0.1:7001",
                   help="HOST:PORT of the server, or several comma-separated (connections "
                   "are spread over them round-robin)")
    p.add_argument("--op", choices=sorted(OPS), default="get")
    p.add_argument("-c", "--connections", type=int, default=50)
    p.add_argument("--procs", type=int, default=1, help="load generator processes")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, help="seconds to measure (default 5)")
    g.add_argument("--requests", type=int, help="requests to send in total instead")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    p.add_argument("--keyspace", type=int, default=100_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--prefill", action="store_true", help="write every key once first")
    p.add_argument("--server-pid", type=int, help="also report this process's CPU")
    a = p.parse_args(argv)
    targets = []
    for addr in a.addr.split(","):
        h, _, p_s = addr.strip().rpartition(":")
        targets.append((h, int(p_s)))
    host, port = targets[0]
    if a.prefill:
        prefill(host, port, a.keyspace, a.value_size)
    duration = a.duration if a.requests is None else None
    if duration is None and a.requests is None:
        duration = 5.0
    res = run_load(host, port, op=a.op, connections=a.connections, duration_s=duration,
                   requests=a.requests, warmup_s=a.warmup, procs=a.procs,
                   keyspace=a.keyspace, value_size=a.value_size, server_pid=a.server_pid,
                   addrs=targets)
    print_json(res)
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
