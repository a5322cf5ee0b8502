"""Shared helpers for the benchmarks: CPU accounting, processes, tables, a bare server.

CPU is measured without psutil: a server's user+system seconds come from
/proc/PID/stat (all of its threads), a child tool's from getrusage(RUSAGE_CHILDREN),
and the whole machine's busy time from /proc/stat, so a run can tell how much CPU
*other* processes took while it measured (interference from concurrent jobs).

The bare server (`python -m bench.common bare-server --listen HOST:PORT`) speaks
just enough of the ringfs wire protocol (HELLO, GET, PUT; 4-byte length + msgpack)
over trio to be driven by bench.loadgen: a dict and nothing else. It is the
ceiling a trio+msgpack Python server can reach on this machine. Two forms: a task
per connection on trio's streams (the default), and with `--poll` one task that
serves every connection from an epoll set, as the ringfs node does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")

KEY_PREFIX = b"key:"
KEY_DIGITS = 12
"""redis-benchmark's `key:__rand_int__` expands to 'key:' + 12 digits: 16-byte keys."""


def bench_key(i: int, prefix: bytes = KEY_PREFIX) -> bytes:
    """The i-th benchmark key, byte-identical to redis-benchmark's -r keys (16 bytes
    with the default 4-byte prefix)."""
    return prefix + b"%012d" % i


def bench_value(size: int) -> bytes:
    """A value of `size` bytes, like redis-benchmark -d (which fills with 'x')."""
    return b"x" * size


# -- CPU accounting ----------------------------------------------------------------

def proc_cpu_s(pid: int) -> float:
    """User+system CPU seconds used so far by process `pid` (all its threads) and by
    its child processes still running (a ringfs node's fsync helper, a redis
    rewrite): their work is the server's too."""
    total = _own_cpu_s(pid)
    for child in _children(pid):
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += _own_cpu_s(child)
    return total


def _own_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    # After the name, field 3 (state) is index 0, so utime (14) is 11 and stime (15) 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (from each thread's /proc children list)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores have spent not idle since boot (from /proc/stat)."""
    with open("/proc/stat", "rb") as f:
        parts = f.readline().split()
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    v = [int(x) for x in parts[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy / CLK_TCK


def self_cpu_s() -> float:
    """This process's user+system CPU seconds."""
    t = os.times()
    return t.user + t.system


def children_cpu_s() -> float:
    """User+system CPU seconds of every waited-for child so far."""
    t = os.times()
    return t.children_user + t.children_system


# -- processes ---------------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes] | None,
                   timeout_s: float = 15.0) -> None:
    """Block until something accepts on host:port; raise if `proc` dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout_s}s")


@contextlib.contextmanager
def server_process(cmd: Sequence[str], host: str, port: int, *, cwd: str | None = None,
                   env: dict[str, str] | None = None,
                   log_path: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command until the block ends (SIGTERM, then SIGKILL after 5 s)."""
    with contextlib.ExitStack() as files:
        log: Any = (files.enter_context(open(log_path, "wb")) if log_path
                    else subprocess.DEVNULL)
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        with _terminating(proc):
            wait_listening(host, port, proc)
            yield proc


@contextlib.contextmanager
def _terminating(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_env(tree: str) -> dict[str, str]:
    """The environment that makes `python -m ringfs` run the code of `tree`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = tree + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- statistics and output ---------------------------------------------------------

def percentile(sorted_values: Sequence[int | float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100); nan if empty."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    k = max(0, min(n - 1, math.ceil(q / 100.0 * n) - 1))
    return float(sorted_values[k])


def fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]],
                file: Any = None) -> None:
    """Print rows as an aligned table; columns are (key, header, format spec)."""
    file = file or sys.stdout
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([fmt(r.get(k), spec) for k, _, spec in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))), file=file)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=file)
    file.flush()


def print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


# -- the bare reference server -----------------------------------------------------

def bare_replies(buf: bytes, store: dict[bytes, bytes], pack: Any,
                 unpackb: Any) -> tuple[bytes, int]:
    """Serve every whole frame in `buf` from `store`: the replies, and how many bytes
    of `buf` the frames took."""
    out = []
    pos, end = 0, len(buf)
    while end - pos >= 4:
        n = int.from_bytes(buf[pos:pos + 4], "big")
        if end - pos - 4 < n:
            break
        _, rid, op, args = unpackb(buf[pos + 4:pos + 4 + n])
        pos += 4 + n
        if op == 3:
            store[args["key"]] = args["value"]
            res: dict[str, Any] = {"context": b""}
        elif op == 2:
            v = store.get(args["key"])
            res = {"found": v is not None, "values": [] if v is None else [v], "context": b""}
        else:
            res = {"version": 1}
        body = pack([1, rid, res])
        out.append(len(body).to_bytes(4, "big") + body)
    return (out[0] if len(out) == 1 else b"".join(out)), pos


def run_bare_server(host: str, port: int) -> None:
    """A trio+msgpack dict server speaking the ringfs frame format: the ceiling."""
    import msgpack
    import trio

    store: dict[bytes, bytes] = {}
    unpackb = msgpack.unpackb

    async def handle(stream: trio.SocketStream) -> None:
        pack = msgpack.Packer(use_bin_type=True).pack
        buf = b""
        try:
            while True:
                data = await stream.receive_some(262144)
                if not data:
                    return
                buf = buf + data if buf else data
                replies, pos = bare_replies(buf, store, pack, unpackb)
                buf = buf[pos:]
                if replies:
                    await stream.send_all(replies)
        except trio.BrokenResourceError:
            return

    async def main() -> None:
        await trio.serve_tcp(handle, port, host=host)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)


def run_bare_poll_server(host: str, port: int) -> None:
    """The bare dict server with one task reading every connection from an epoll set
    (trio waits on the set's descriptor only while nothing is ready)."""
    import select

    import msgpack
    import trio

    store: dict[bytes, bytes] = {}
    pack = msgpack.Packer(use_bin_type=True).pack
    unpackb = msgpack.unpackb
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    inbuf: dict[int, bytes] = {}
    outbuf: dict[int, bytes] = {}

    def close(fd: int) -> None:
        ep.unregister(fd)
        socks.pop(fd).close()
        inbuf.pop(fd, None)
        outbuf.pop(fd, None)

    def serve(fd: int, events: int) -> None:
        s = socks[fd]
        if events & select.EPOLLOUT:
            try:
                n = s.send(outbuf[fd])
            except OSError:
                close(fd)
                return
            rest = outbuf.pop(fd)[n:]
            if rest:
                outbuf[fd] = rest
                return
            ep.modify(fd, select.EPOLLIN)
        if not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            data = s.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            close(fd)
            return
        buf = inbuf.pop(fd, b"")
        buf = buf + data if buf else data
        data, pos = bare_replies(buf, store, pack, unpackb)
        if pos < len(buf):
            inbuf[fd] = buf[pos:]
        if data:
            if fd in outbuf:
                outbuf[fd] += data
                return
            try:
                n = s.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                close(fd)
                return
            if n < len(data):
                outbuf[fd] = data[n:]
                ep.modify(fd, select.EPOLLIN | select.EPOLLOUT)

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)

        async def accept(ln: trio.SocketListener) -> None:
            while True:
                stream = await ln.accept()
                raw = socket.socket(fileno=stream.socket.detach())
                raw.setblocking(False)
                socks[raw.fileno()] = raw
                ep.register(raw.fileno(), select.EPOLLIN)

        async with trio.open_nursery() as nursery:
            for ln in listeners:
                nursery.start_soon(accept, ln)
            while True:
                ready = ep.poll(0, 256)
                if not ready:
                    await trio.lowlevel.wait_readable(ep.fileno())
                    continue
                for fd, events in ready:
                    if fd in socks:
                        serve(fd, events)
                await trio.lowlevel.checkpoint()

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.common")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bare-server", help="run the bare trio+msgpack dict server")
    b.add_argument("--listen", default="127.0.0.1:7101")
    b.add_argument("--poll", action="store_true",
                   help="one task serving every connection from an epoll set")
    args = p.parse_args(argv)
    if args.cmd == "bare-server":
        host, _, port = args.listen.rpartition(":")
        (run_bare_poll_server if args.poll else run_bare_server)(host, int(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def derive_row(r: dict[str, Any], connections: int, base: dict[str, Any] | None,
               ratio_key: str, runs: list[float]) -> dict[str, Any]:
    """A measured run with its per-core and per-op figures and its ratio to `base`."""
    r = dict(r)
    w = r["window_s"] or 1.0
    r["connections"] = connections
    r["server_core_pct"] = 100.0 * r["server_cpu_s"] / w
    r["client_core_pct"] = 100.0 * r["client_cpu_s"] / w
    r["other_core_pct"] = 100.0 * r["other_cpu_s"] / w
    r["server_us_per_op"] = 1e6 * r["server_cpu_s"] / max(1, r["ops"])
    r["client_us_per_op"] = 1e6 * r["client_cpu_s"] / max(1, r["ops"])
    r[ratio_key] = r["ops_per_s"] / base["ops_per_s"] if base else None
    r["all_ops_per_s"] = [round(x, 1) for x in runs]
    return r
