"""A 3-node ringfs cluster against a 3-member etcd cluster, side by side, 1 and 50 connections.

Both clusters run on loopback for the whole run and are measured in turns.

- ringfs: three `ringfs node` processes, N=3 R=2 W=2, log engine, `--durability
  group` (a write is fsynced, shared with the writes that arrived with it, before
  it is acknowledged), gossip preset `local`. Driven by bench.loadgen, its
  connections spread round-robin over the three nodes (every node is a primary
  replica of every key with N=3 on three nodes, so none is forwarded).
- etcd: three `etcd` members (Debian's etcd-server), default settings: the WAL is
  fsynced before a write is acknowledged, and a range (get) is linearizable (it
  confirms leadership with a quorum before answering). Driven by wrk through
  etcd's gRPC gateway (HTTP/JSON, POST /v3/kv/put and /v3/kv/range, base64 keys
  and values), one wrk process (one thread) per member with the connections
  spread round-robin over the members, the leader first; one connection goes to
  the leader.

Why linearizable gets: a ringfs get waits for R=2 of the N=3 replicas, a quorum,
so it sees every write acknowledged by W=2. etcd's linearizable range is its
quorum read; a serializable range answers from one member's copy, like R=1.

`put` is ringfs's default: a put without a context, written as a checked write
(one round trip; replicas holding versions it has not seen refuse it, and it is
written again over them), so that it supersedes every write acknowledged before
it (docs/protocol.md 4.7). `put-lww` (not in the default --ops) puts the same keys
under a last-write-wins prefix (the nodes run with `--lww-prefix lww:`; keys are
`lww:` + 12 digits, prefilled too), stamped and needing W acceptances rather than
max(W, R) (docs/protocol.md 4.10, with the data loss it accepts); it is compared
with the same etcd put, measured again in turn with it.

Keys are 16 bytes (`key:` + 12 digits, the same on both sides), values 100 bytes,
keys drawn at random from `--keyspace` (default 100,000), and every key is
written once on both clusters before measuring, so gets find values (checked:
ringfs's status counts the keys on every node; etcd counts them, and a short wrk
check run confirms that wrk's gets all return a value). Each generator builds its
requests before the run (loadgen: msgpack frames; wrk: HTTP requests from Lua),
so its hot loop only sends and receives.

Reported per system, op and connection count: ops/s, p50/p99 latency, CPU seconds
of the servers (all three processes, /proc/PID/stat) and of the load generator
(getrusage of its processes), CPU that other processes used meanwhile, and
ringfs/etcd. A generator process that used more than 90% of a core is flagged as
a possible bottleneck. Each measurement is repeated (`--repeat`), the systems
taking turns (their order alternates each round), and the best run by ops/s is
kept for each. wrk counts responses with status >= 400 and socket errors
(connect, read, write, timeout) as errors; any error fails the run.

    python -m bench.cluster [--duration 5] [--conns 1,50] [--quick] [--nice -10]
    python -m bench.cluster profile --op put -c 50 [--duration 5] [--nice -10]
    python -m bench.cluster ab --base DIR [--op put] [--rounds 10] [--nice -10]

`profile` runs only the ringfs cluster under bench.loadgen and samples all three
nodes with py-spy (`pip install py-spy`; not a dependency) while the GIL is held,
then prints where the Python time of the three nodes together went.

`ab` compares two versions of ringfs: a cluster running the checkout in DIR and
one running this tree, side by side, with the load alternating between them in
short rounds, so that both see the same machine speed however much it drifts
(on a shared virtual machine it moves by half within minutes).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from bench.common import (
    KEY_PREFIX,
    bench_key,
    bench_value,
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
from bench.kv import QUIET_CORE_FRACTION, _find_pyspy, _pyspy_summary, run_niced, wait_quiet
from bench.loadgen import prefill, run_load

HOST = "127.0.0.1"
NODES = 3
KEYSPACE = 100_000
VALUE_BYTES = 100
BOTTLENECK_CORE_FRACTION = 0.9
"""A generator process using more than this share of a core may be limiting the run."""
ETCD_TXN_OPS = 128
"""Puts per transaction when prefilling etcd (its default --max-txn-ops)."""
TARGET_RATIO = 1.5
INSTALL_HINT = (
    "etcd (Debian package etcd-server) and wrk are needed for this benchmark.\n"
    "Install them with:  apt-get update && apt-get install -y etcd-server etcd-client wrk"
)

# Requests for etcd's JSON gateway, built once per wrk thread. Arguments after `--`:
# op (put|get), keyspace, value size, random seed. With WRK_CHECK set in the
# environment, every range reply is also checked for a value (slower; not measured).
WRK_SCRIPT = r"""
local reqs, n, i = {}, 0, 0
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
  local out = {}
  for p = 1, #s, 3 do
    local a, b, c = s:byte(p, p + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = {}
    for k = 3, 0, -1 do
      local idx = math.floor(v / 64 ^ k) % 64
      q[#q + 1] = alphabet:sub(idx + 1, idx + 1)
    end
    if not b then q[3] = "=" end
    if not c then q[4] = "=" end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  local op, keyspace, vsize = args[1], tonumber(args[2]), tonumber(args[3])
  math.randomseed(tonumber(args[4]))
  local value = b64(string.rep("x", vsize))
  local headers = {["Content-Type"] = "application/json"}
  for j = 1, POOL do
    local key = b64(string.format("key:%012d", math.random(0, keyspace - 1)))
    if op == "put" then
      reqs[j] = wrk.format("POST", "/v3/kv/put", headers,
                           '{"key":"' .. key .. '","value":"' .. value .. '"}')
    else
      reqs[j] = wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key .. '"}')
    end
  end
  n = #reqs
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

missing = 0
if os.getenv("WRK_CHECK") then
  function response(status, headers, body)
    if status ~= 200 or not body:find('"value":"', 1, true) then missing = missing + 1 end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local lost = 0
  for _, t in ipairs(threads) do lost = lost + (t:get("missing") or 0) end
  io.write(string.format(
    "RESULT requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d "
    .. "missing=%d\n", summary.requests, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, lost))
  for j = 1, #latency do
    local v, c = latency(j)
    io.write(string.format("LAT %d %d\n", v, c))
  end
end
"""
WRK_POOL = 8192
"""Distinct pre-built requests per wrk thread (random keys), used round-robin."""


# -- pure helpers (tested) ---------------------------------------------------------

def spread(connections: int, targets: int) -> list[int]:
    """Connections per target when `connections` are dealt round-robin over `targets`."""
    return [connections // targets + (1 if i < connections % targets else 0)
            for i in range(targets)]


def parse_wrk_output(text: str) -> tuple[dict[str, int], dict[int, int]]:
    """The RESULT fields and the latency histogram (microseconds -> count) of a wrk run
    driven by WRK_SCRIPT."""
    fields: dict[str, int] = {}
    hist: dict[int, int] = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            for part in line.split()[1:]:
                k, _, v = part.partition("=")
                fields[k] = int(v)
        elif line.startswith("LAT "):
            _, v, c = line.split()
            hist[int(v)] = hist.get(int(v), 0) + int(c)
    if "requests" not in fields:
        raise RuntimeError(f"no RESULT line in wrk output: {text[-500:]!r}")
    return fields, hist


def hist_percentile(hist: dict[int, int], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a value -> count histogram; nan if empty."""
    total = sum(hist.values())
    if total == 0:
        return float("nan")
    rank = max(1, math.ceil(q / 100.0 * total))
    seen = 0
    for v in sorted(hist):
        seen += hist[v]
        if seen >= rank:
            return float(v)
    return float(max(hist))


def hist_mean(hist: dict[int, int]) -> float:
    total = sum(hist.values())
    return sum(v * c for v, c in hist.items()) / total if total else float("nan")


# -- ringfs ------------------------------------------------------------------------

LWW_PREFIX = b"lww:"
"""Keys of the put-lww measurements: a last-write-wins namespace on every node."""


def ringfs_node_cmd(name: str, port: int, seeds: Sequence[int], data_dir: str) -> list[str]:
    return [sys.executable, "-m", "ringfs", "node", "--name", name,
            "--listen", f"{HOST}:{port}", "--data-dir", data_dir,
            "--seeds", ",".join(f"{HOST}:{p}" for p in seeds),
            "--engine", "log", "--durability", "group",
            "--n-replicas", "3", "--r", "2", "--w", "2",
            "--gossip", "local", "--log-level", "warning",
            "--lww-prefix", LWW_PREFIX.decode()]


def ringfs_op(op: str) -> tuple[str, bytes]:
    """The loadgen op and key prefix of a measured op (put-lww: puts of LWW keys)."""
    return ("put", LWW_PREFIX) if op == "put-lww" else (op, KEY_PREFIX)


def etcd_op(op: str) -> str:
    """What etcd runs to compare with a measured op (it has no LWW keys: a put is one)."""
    return "put" if op == "put-lww" else op


def start_ringfs(stack: ExitStack, tree: str, data_root: str,
                 log_dir: str | None = None) -> tuple[list[int], list[int]]:
    """Start the 3 nodes of a cluster running `tree`'s code (stopped when `stack`
    closes) and wait until they serve; returns their ports and pids."""
    env = tree_env(tree)
    ports = [free_port() for _ in range(NODES)]
    pids = []
    for i, port in enumerate(ports):
        name = f"n{i + 1}"
        cmd = ringfs_node_cmd(name, port, [p for p in ports if p != port],
                              os.path.join(data_root, name))
        log_path = os.path.join(log_dir, f"bench-cluster-{name}.log") if log_dir else None
        pids.append(stack.enter_context(
            server_process(cmd, HOST, port, cwd=tree, env=env, log_path=log_path)).pid)
    wait_ringfs_ready(ports, env)
    return ports, pids


def ringfs_status(port: int, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "ringfs", "status", "--node", f"{HOST}:{port}",
                          "--json", "--timeout", "2"], capture_output=True, text=True,
                         env=env, check=False, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(f"ringfs status failed: {out.stderr.strip()}")
    st: dict[str, Any] = json.loads(out.stdout)
    return st


def wait_ringfs_ready(ports: Sequence[int], env: dict[str, str], timeout_s: float = 30) -> None:
    """Until every node sees all NODES members alive."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            alive = [sum(1 for m in ringfs_status(p, env)["members"] if m["state"] == "alive")
                     for p in ports]
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError):
            alive = [0]
        if min(alive) == NODES:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"ringfs cluster not formed after {timeout_s:g} s: "
                               f"alive members seen per node {alive}")
        time.sleep(0.3)


def check_ringfs_keys(ports: Sequence[int], env: dict[str, str], keyspace: int,
                      timeout_s: float = 30) -> list[int]:
    """Wait until every node stores every key (N=3 on 3 nodes); returns the counts."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = [int(ringfs_status(p, env)["storage"]["keys"]) for p in ports]
        if min(counts) >= keyspace or time.monotonic() > deadline:
            return counts
        time.sleep(0.3)


# -- etcd --------------------------------------------------------------------------

@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    pid: int = 0
    member_id: str = ""


def etcd_cmd(m: EtcdMember, members: Sequence[EtcdMember], data_dir: str) -> list[str]:
    cluster = ",".join(f"{x.name}=http://{HOST}:{x.peer_port}" for x in members)
    return ["etcd", "--name", m.name, "--data-dir", data_dir,
            "--listen-client-urls", f"http://{HOST}:{m.client_port}",
            "--advertise-client-urls", f"http://{HOST}:{m.client_port}",
            "--listen-peer-urls", f"http://{HOST}:{m.peer_port}",
            "--initial-advertise-peer-urls", f"http://{HOST}:{m.peer_port}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "bench-cluster",
            "--logger", "zap", "--log-level", "warn"]


def etcd_call(port: int, path: str, body: dict[str, Any],
              conn: http.client.HTTPConnection | None = None) -> dict[str, Any]:
    """POST a JSON request to etcd's gateway; raise unless the reply is 200."""
    c = conn or http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        c.request("POST", path, body=json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"etcd {path}: HTTP {r.status}: {data[:300]!r}")
        out: dict[str, Any] = json.loads(data)
        return out
    finally:
        if conn is None:
            c.close()


def wait_etcd_ready(members: Sequence[EtcdMember], timeout_s: float = 30) -> str:
    """Until every member answers and all name the same leader; returns its member id."""
    deadline = time.monotonic() + timeout_s
    while True:
        leaders = set()
        try:
            for m in members:
                st = etcd_call(m.client_port, "/v3/maintenance/status", {})
                m.member_id = st["header"]["member_id"]
                leaders.add(st.get("leader", "0"))
        except (OSError, RuntimeError, KeyError, ValueError):
            leaders = set()
        if len(leaders) == 1 and "0" not in leaders:
            return leaders.pop()
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd cluster without a leader after {timeout_s:g} s")
        time.sleep(0.2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def etcd_prefill(port: int, keyspace: int, value_size: int) -> None:
    """Put every key once, ETCD_TXN_OPS puts per transaction."""
    value = b64(bench_value(value_size))
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        for lo in range(0, keyspace, ETCD_TXN_OPS):
            ops = [{"request_put": {"key": b64(bench_key(k)), "value": value}}
                   for k in range(lo, min(keyspace, lo + ETCD_TXN_OPS))]
            r = etcd_call(port, "/v3/kv/txn", {"success": ops}, conn)
            if not r.get("succeeded"):
                raise RuntimeError(f"etcd prefill transaction failed: {r!r}")
    finally:
        conn.close()


def etcd_count(port: int) -> int:
    r = etcd_call(port, "/v3/kv/range", {"key": b64(b"key:"), "range_end": b64(b"key;"),
                                         "count_only": True})
    return int(r.get("count", 0))


def run_wrk(members: Sequence[EtcdMember], script: str, op: str, connections: int,
            duration_s: int, keyspace: int, value_size: int, seed: int,
            check: bool = False) -> dict[str, Any]:
    """Drive the etcd members with one wrk process (one thread) each; returns the result.

    Server CPU and machine busy time are sampled from the start of the wrk
    processes to their exit; each wrk process's own CPU comes from wait4.
    """
    env = dict(os.environ)
    if check:
        env["WRK_CHECK"] = "1"
    shares = spread(connections, len(members))
    with tempfile.TemporaryDirectory(prefix="bench-cluster-wrk-") as d:
        procs = []
        srv0 = [proc_cpu_s(m.pid) for m in members]
        busy0 = machine_busy_s()
        t0 = time.monotonic()
        for i, (m, n) in enumerate(zip(members, shares, strict=True)):
            if n == 0:
                continue
            out_path = os.path.join(d, f"wrk{i}.out")
            with open(out_path, "wb") as out:
                p = subprocess.Popen(
                    ["wrk", "-t1", f"-c{n}", f"-d{duration_s}s", "--timeout", "10s",
                     "-s", script, f"http://{HOST}:{m.client_port}", "--", op,
                     str(keyspace), str(value_size), str(seed * 100 + i)],
                    stdout=out, stderr=subprocess.STDOUT, env=env)
            procs.append((p, out_path))
        cpus = []
        failed = []
        for p, out_path in procs:
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            cpus.append(ru.ru_utime + ru.ru_stime)
            if p.returncode != 0:
                with open(out_path, errors="replace") as f:
                    failed.append(f"wrk exited {p.returncode}: {f.read()[-500:]}")
        elapsed = time.monotonic() - t0
        srv1 = [proc_cpu_s(m.pid) for m in members]
        busy1 = machine_busy_s()
        if failed:
            raise RuntimeError("; ".join(failed))
        hist: dict[int, int] = {}
        requests = 0
        rate = 0.0
        window = 0.0
        errors: dict[str, int] = {}
        for _, out_path in procs:
            with open(out_path, errors="replace") as f:
                fields, h = parse_wrk_output(f.read())
            for v, c in h.items():
                hist[v] = hist.get(v, 0) + c
            requests += fields["requests"]
            dur = fields["duration_us"] / 1e6
            rate += fields["requests"] / dur if dur > 0 else 0.0
            window = max(window, dur)
            for k in ("connect", "read", "write", "status", "timeout", "missing"):
                errors[k] = errors.get(k, 0) + fields.get(k, 0)
    n_errors = sum(errors.values())
    if n_errors:
        detail = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
        raise RuntimeError(f"wrk against etcd ({op}, {connections} connections) reported "
                           f"{n_errors} error(s): {detail}")
    server_cpu = sum(b - a for a, b in zip(srv0, srv1, strict=True))
    client_cpu = sum(cpus)
    return {
        "op": op, "connections": connections, "procs": len(procs), "ops": requests,
        "errors": 0, "window_s": window, "ops_per_s": rate,
        "p50_ms": hist_percentile(hist, 50) / 1e3,
        "p99_ms": hist_percentile(hist, 99) / 1e3,
        "mean_ms": hist_mean(hist) / 1e3,
        "server_cpu_s": server_cpu,
        "server_cpu_by_pid_s": [b - a for a, b in zip(srv0, srv1, strict=True)],
        "client_cpu_s": client_cpu,
        "client_cpu_max_proc_s": max(cpus),
        "other_cpu_s": max(0.0, busy1 - busy0 - server_cpu - client_cpu),
        "elapsed_s": elapsed,
    }


def tool_version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


# -- the comparison ----------------------------------------------------------------

def compare(args: argparse.Namespace) -> int:
    systems = [x.strip() for x in args.systems.split(",")]
    unknown = set(systems) - {"ringfs", "etcd"}
    if unknown:
        print(f"bench.cluster: unknown system(s) {sorted(unknown)}; use ringfs, etcd",
              file=sys.stderr)
        return 2
    bad_ops = {o.strip() for o in args.ops.split(",")} - {"put", "put-lww", "get"}
    if bad_ops:
        print(f"bench.cluster: unknown op(s) {sorted(bad_ops)}; use put, put-lww, get",
              file=sys.stderr)
        return 2
    if "etcd" in systems and not (shutil.which("etcd") and shutil.which("wrk")):
        print(f"bench.cluster: {INSTALL_HINT}", file=sys.stderr)
        return 2
    with ExitStack() as prio:
        if args.nice:
            try:
                prio.enter_context(run_niced(args.nice))
            except OSError as exc:
                print(f"bench.cluster: cannot change niceness by {args.nice}: {exc}",
                      file=sys.stderr)
                return 2
        return _compare(args, systems)


def _compare(args: argparse.Namespace, systems: list[str]) -> int:
    conns_list = [int(c) for c in args.conns.split(",")]
    ops = [o.strip() for o in args.ops.split(",")]
    versions = []
    if "etcd" in systems:
        versions = [tool_version(["etcd", "--version"]), tool_version(["wrk", "-v"])]
    print(f"# cluster: ringfs 3 nodes (N=3 R=2 W=2, log engine, durability group) vs etcd "
          f"3 members (fsync before ack, linearizable gets); keys 16 B, values "
          f"{args.value_size} B, keyspace {args.keyspace}; connections {conns_list}; "
          f"{args.duration} s per measurement, best of {args.repeat}, systems in turn; "
          f"loadgen procs {args.procs}; {os.cpu_count()} CPUs"
          + (f"; {', '.join(versions)}" if versions else "")
          + (f"; niceness {os.nice(0)} (session autogroup too)" if args.nice else ""),
          flush=True)
    root = repo_root()
    env = tree_env(root)
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    runs: dict[tuple[str, str, int], list[float]] = {}
    notes: dict[str, str] = {}
    with ExitStack() as stack:
        work = stack.enter_context(temp_dir("bench-cluster-"))
        rports: list[int] = []
        rpids: list[int] = []
        members: list[EtcdMember] = []
        script = os.path.join(work, "etcd_kv.lua")
        if "ringfs" in systems:
            rports, rpids = start_ringfs(stack, root, os.path.join(work, "ringfs"),
                                         tempfile.gettempdir() if args.keep_logs else None)
        if "etcd" in systems:
            with open(script, "w") as f:
                f.write(WRK_SCRIPT.replace("POOL", str(WRK_POOL)))
            members = [EtcdMember(f"e{i + 1}", free_port(), free_port()) for i in range(NODES)]
            for m in members:
                log_path = (os.path.join(tempfile.gettempdir(), f"bench-cluster-{m.name}.log")
                            if args.keep_logs else None)
                m.pid = stack.enter_context(server_process(
                    etcd_cmd(m, members, os.path.join(work, "etcd", m.name)), HOST,
                    m.client_port, cwd=work, log_path=log_path)).pid
            leader = wait_etcd_ready(members)
            members.sort(key=lambda m: m.member_id != leader)  # the leader first
            notes["etcd"] = f"leader {members[0].name}"
        for s in systems:
            t = time.monotonic()
            if s == "ringfs":
                prefixes = sorted({ringfs_op(op)[1] for op in ops})
                for prefix in prefixes:
                    prefill(HOST, rports[0], args.keyspace, args.value_size, key_prefix=prefix)
                want = args.keyspace * len(prefixes)
                counts = check_ringfs_keys(rports, env, want)
                if min(counts) < want:
                    raise RuntimeError(f"ringfs nodes hold {counts} keys after prefill, "
                                       f"expected {want} each")
                detail = f"keys per node {counts}"
            else:
                etcd_prefill(members[0].client_port, args.keyspace, args.value_size)
                n = etcd_count(members[-1].client_port)
                if n != args.keyspace:
                    raise RuntimeError(f"etcd counts {n} keys after prefill, "
                                       f"expected {args.keyspace}")
                chk = run_wrk(members, script, "get", NODES, 1, args.keyspace,
                              args.value_size, seed=99, check=True)
                detail = (f"{n} keys; wrk check run: {chk['ops']} gets, every one "
                          f"returned a value")
            print(f"# prefilled {s} with {args.keyspace} keys in "
                  f"{time.monotonic() - t:.1f} s ({detail})", flush=True)
        if "etcd" in systems:
            print(f"# etcd members {', '.join(m.name for m in members)} "
                  f"({notes['etcd']}); wrk connections per member, leader first: "
                  + "; ".join(f"{c}: {spread(c, NODES)}" for c in conns_list), flush=True)
        round_no = 0
        for c in conns_list:
            for op in ops:
                for rep in range(args.repeat):
                    waited = wait_quiet(args.wait_quiet) if args.wait_quiet else None
                    if waited is not None and waited[1] > QUIET_CORE_FRACTION:
                        print(f"#   machine still busy after {waited[0]:.0f} s "
                              f"({100 * waited[1]:.0f}% of a core used elsewhere)", flush=True)
                    order = systems if round_no % 2 == 0 else systems[::-1]
                    round_no += 1
                    for s in order:
                        if s == "ringfs":
                            lop, prefix = ringfs_op(op)
                            r = run_load(HOST, rports[0], op=lop, connections=c,
                                         duration_s=args.duration, warmup_s=args.warmup,
                                         procs=args.procs, keyspace=args.keyspace,
                                         value_size=args.value_size,
                                         addrs=[(HOST, p) for p in rports],
                                         server_pids=rpids, seed=rep + 1, key_prefix=prefix)
                        else:
                            eop = etcd_op(op)
                            if args.warmup > 0:
                                run_wrk(members, script, eop, c, 1, args.keyspace,
                                        args.value_size, seed=1000 + rep)
                            r = run_wrk(members, script, eop, c, args.duration, args.keyspace,
                                        args.value_size, seed=rep + 1)
                        r["op"] = op  # put-lww: the loadgen and wrk both ran puts
                        if r["errors"]:
                            raise RuntimeError(f"{s} {op} c={c}: {r['errors']} error replies")
                        r["system"] = s
                        r["run"] = rep + 1
                        key = (s, op, c)
                        runs.setdefault(key, []).append(r["ops_per_s"])
                        if key not in best or r["ops_per_s"] > best[key]["ops_per_s"]:
                            best[key] = r
                        w = r["window_s"] or 1.0
                        print(f"#   {s:<6} {op} c={c:<3} run {rep + 1}: "
                              f"{r['ops_per_s']:>8.0f} ops/s  p50 {r['p50_ms']:.3f} ms  "
                              f"p99 {r['p99_ms']:.3f} ms  srv {r['server_cpu_s']:.2f} s  "
                              f"gen {r['client_cpu_s']:.2f} s "
                              f"({100 * r['client_cpu_max_proc_s'] / w:.0f}% of a core max "
                              f"per process)  other {r['other_cpu_s']:.2f} s", flush=True)
    rows = report(best, runs, conns_list, ops, systems)
    for r in rows:
        out = {k: v for k, v in r.items() if k != "elapsed_s"}
        out.update(bench="cluster", nodes=NODES, key_bytes=16, value_bytes=args.value_size,
                   keyspace=args.keyspace, best_of=args.repeat,
                   config=("N=3 R=2 W=2, log engine, durability group" if r["system"] == "ringfs"
                           else "3 members, default fsync, linearizable range; "
                           "wrk via the JSON gateway"),
                   generator="bench.loadgen" if r["system"] == "ringfs" else "wrk")
        print_json(out)
    return 0


def report(best: dict[tuple[str, str, int], dict[str, Any]],
           runs: dict[tuple[str, str, int], list[float]], conns_list: list[int],
           ops: list[str], systems: list[str]) -> list[dict[str, Any]]:
    rows = []
    for c in conns_list:
        for op in ops:
            base = best.get(("etcd", op, c))
            for s in systems:
                r = derive_row(best[(s, op, c)], c, base, "ratio_vs_etcd", runs[(s, op, c)])
                w = r["window_s"] or 1.0
                r["client_max_proc_core_pct"] = 100.0 * r["client_cpu_max_proc_s"] / w
                r["generator_bound"] = (r["client_cpu_max_proc_s"]
                                        > BOTTLENECK_CORE_FRACTION * w)
                rows.append(r)
    print()
    print_table(rows, [
        ("system", "system", ""), ("op", "op", ""), ("connections", "conns", "d"),
        ("ops_per_s", "ops/s", ",.0f"), ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"),
        ("server_cpu_s", "srv cpu s", ".2f"), ("server_core_pct", "srv %core", ".0f"),
        ("server_us_per_op", "srv us/op", ".0f"),
        ("client_cpu_s", "gen cpu s", ".2f"), ("client_core_pct", "gen %core", ".0f"),
        ("client_us_per_op", "gen us/op", ".1f"),
        ("other_core_pct", "other %core", ".0f"), ("ratio_vs_etcd", "vs etcd", ".2f"),
    ])
    print()
    for c in conns_list:
        for op in ops:
            mine, theirs = best.get(("ringfs", op, c)), best.get(("etcd", op, c))
            if not (mine and theirs):
                continue
            ratio = mine["ops_per_s"] / theirs["ops_per_s"]
            line = (f"# ringfs/etcd {op} at {c} connection(s): {ratio:.2f}x throughput, "
                    f"p99 {mine['p99_ms']:.2f} vs {theirs['p99_ms']:.2f} ms")
            if c == 50:
                met = ratio >= TARGET_RATIO and mine["p99_ms"] < theirs["p99_ms"]
                line += (f" (target >= {TARGET_RATIO}x with a lower p99: "
                         f"{'met' if met else 'NOT met'})")
            print(line)
    bound = [r for r in rows if r["generator_bound"]]
    for r in bound:
        print(f"# WARNING: the {r['system']} generator may be the bottleneck for {r['op']} at "
              f"{r['connections']} connection(s): one of its processes used "
              f"{r['client_max_proc_core_pct']:.0f}% of a core")
    if not bound and rows:
        print(f"# no generator process used more than {100 * BOTTLENECK_CORE_FRACTION:.0f}% "
              f"of a core")
    busy = [r for r in rows if r["other_core_pct"] > 20]
    if busy:
        print(f"# WARNING: other processes used >20% of a core during {len(busy)} of the "
              f"best measurements; the box was not quiet, compare ratios, not absolutes")
    sys.stdout.flush()
    return rows


# -- profiling the ringfs nodes under load ------------------------------------------

def profile(args: argparse.Namespace) -> int:
    pyspy = _find_pyspy()
    if pyspy is None:
        print("bench.cluster: py-spy not found; `.venv/bin/pip install py-spy` or set "
              "PYSPY=/path/to/py-spy", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        if args.nice:
            stack.enter_context(run_niced(args.nice))
        work = stack.enter_context(temp_dir("bench-cluster-prof-"))
        ports, pids = start_ringfs(stack, repo_root(), work)
        prefill(HOST, ports[0], args.keyspace, VALUE_BYTES)
        raw = [os.path.join(work, f"n{i + 1}.txt") for i in range(NODES)]
        spies = [subprocess.Popen([pyspy, "record", "--pid", str(pid), "--rate", "250", "--gil",
                                   "--duration", str(int(args.duration + args.warmup + 1)),
                                   "--format", "raw", "--output", out],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid, out in zip(pids, raw, strict=True)]
        time.sleep(0.5)
        print(f"# profiling 3 ringfs nodes with py-spy (--gil): {args.op} c={args.connections} "
              f"for {args.duration:g} s", flush=True)
        r = run_load(HOST, ports[0], op=args.op, connections=args.connections,
                     duration_s=args.duration, warmup_s=args.warmup, keyspace=args.keyspace,
                     addrs=[(HOST, p) for p in ports], server_pids=pids)
        print_json(r)
        for spy in spies:
            spy.wait()
        merged = os.path.join(work, "all.txt")
        with open(merged, "w") as out:
            for path in raw:
                with open(path) as f:
                    out.write(f.read())
        _pyspy_summary(merged, args.top)
        if args.save:
            shutil.copy(merged, args.save)
    return 0


# -- two versions of ringfs, loaded in turns --------------------------------------

def ab(args: argparse.Namespace) -> int:
    """Two ringfs clusters side by side, one running the code of `--base` (A), one
    this tree's (B); the load alternates between them in short rounds, so both see
    the same machine speed however much it drifts. Prints the totals and B/A: ops,
    the servers' CPU per op (their helper processes included) and the whole
    machine's (load generator and kernel threads too: work moved out of the
    servers shows there)."""
    trees = {"A": os.path.abspath(args.base), "B": repo_root()}
    if not os.path.isfile(os.path.join(trees["A"], "ringfs", "node.py")):
        print(f"bench.cluster ab: {trees['A']} is not a ringfs tree", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        if args.nice:
            stack.enter_context(run_niced(args.nice))
        work = stack.enter_context(temp_dir("bench-cluster-ab-"))
        clusters: dict[str, tuple[list[int], list[int]]] = {}
        for label, tree in trees.items():
            ports, pids = start_ringfs(stack, tree, os.path.join(work, label))
            prefill(HOST, ports[0], args.keyspace, VALUE_BYTES)
            clusters[label] = (ports, pids)
        print(f"# A: {trees['A']}\n# B: {trees['B']}\n# {args.op}, {args.connections} "
              f"connections, {args.rounds} rounds of {args.duration:g} s each, in turns",
              flush=True)
        ops = dict.fromkeys(trees, 0)
        cpu = dict.fromkeys(trees, 0.0)
        box = dict.fromkeys(trees, 0.0)
        for rnd in range(args.rounds):
            for label in (list(trees) if rnd % 2 == 0 else list(reversed(trees))):
                ports, pids = clusters[label]
                r = run_load(HOST, ports[0], op=args.op, connections=args.connections,
                             duration_s=args.duration, warmup_s=args.warmup,
                             keyspace=args.keyspace, addrs=[(HOST, p) for p in ports],
                             server_pids=pids)
                ops[label] += r["ops"]
                cpu[label] += r["server_cpu_s"]
                all_cpu = r["server_cpu_s"] + r["client_cpu_s"] + r["other_cpu_s"]
                box[label] += all_cpu
                n = max(1, r["ops"])
                print(f"# round {rnd + 1} {label}: {r['ops_per_s']:,.0f} ops/s, "
                      f"{1e6 * r['server_cpu_s'] / n:.0f} us of server CPU per op "
                      f"({1e6 * all_cpu / n:.0f} machine-wide), p99 {r['p99_ms']:.2f} ms",
                      flush=True)
        for label in trees:
            n = max(1, ops[label])
            print(f"{label}: {ops[label]:,} ops, {1e6 * cpu[label] / n:.0f} us of server CPU "
                  f"per op, {1e6 * box[label] / n:.0f} us machine-wide")
        if ops["A"] and ops["B"]:
            per_a, per_b = cpu["A"] / ops["A"], cpu["B"] / ops["B"]
            box_a, box_b = box["A"] / ops["A"], box["B"] / ops["B"]
            print(f"B/A: {ops['B'] / ops['A']:.3f}x ops, {per_b / per_a:.3f}x server CPU per "
                  f"op, {box_b / box_a:.3f}x machine-wide CPU per op")
    return 0


def _load_parser(mode: str, description: str, *, duration: float,
                 keyspace: int) -> argparse.ArgumentParser:
    """The options the ringfs-only modes share: one load, on one cluster or two."""
    p = argparse.ArgumentParser(prog=f"python -m bench.cluster {mode}", description=description)
    p.add_argument("--op", choices=("get", "put"), default="put")
    p.add_argument("-c", "--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=duration)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--keyspace", type=int, default=keyspace)
    p.add_argument("--nice", type=int, default=0, metavar="N")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ab"]:
        pa = _load_parser("ab", "Two ringfs clusters, the code of --base and of this tree, "
                          "loaded in turns (for comparing versions on a machine whose speed "
                          "drifts).", duration=3.0, keyspace=100_000)
        pa.add_argument("--base", required=True, metavar="DIR",
                        help="a checkout of the version to compare against")
        pa.add_argument("--rounds", type=int, default=10)
        return ab(pa.parse_args(argv[1:]))
    if argv[:1] == ["profile"]:
        pp = _load_parser("profile", "Profile the 3 ringfs nodes under load.",
                          duration=5.0, keyspace=20_000)
        pp.add_argument("--top", type=int, default=30)
        pp.add_argument("--save", help="copy the merged raw py-spy samples here")
        return profile(pp.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=None,
                   help="whole seconds per measurement (wrk's unit; default 5, 2 with --quick)")
    p.add_argument("--conns", default="1,50", help="comma-separated connection counts")
    p.add_argument("--quick", action="store_true",
                   help="2 s per measurement, one repeat, 20000 keys")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per measurement, systems in turn, best kept (default 3; 1 with "
                   "--quick)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="unmeasured seconds before each run (loadgen; wrk warms up for 1 s "
                   "when this is not 0)")
    p.add_argument("--ops", default="put,get",
                   help="comma-separated: put,put-lww,get (default put,get)")
    p.add_argument("--systems", default="ringfs,etcd", help="comma-separated subset of "
                   "ringfs,etcd")
    p.add_argument("--keyspace", type=int, default=None)
    p.add_argument("--value-size", type=int, default=VALUE_BYTES)
    p.add_argument("--procs", type=int, default=1, help="load generator processes (ringfs)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each round, wait up to this long for other processes to "
                   "use less than 15%% of a core (shared machines)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="add N to the niceness of every process of the run (negative, as "
                   "root, to win CPU from unrelated jobs on a shared machine)")
    p.add_argument("--keep-logs", action="store_true",
                   help="write server logs to bench-cluster-NAME.log in the temp directory")
    a = p.parse_args(argv)
    if a.duration is None:
        a.duration = 2 if a.quick else 5
    if a.duration < 1:
        p.error("--duration must be at least 1 (wrk counts whole seconds)")
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    if a.keyspace is None:
        a.keyspace = 20_000 if a.quick else KEYSPACE
    if a.quick:
        a.warmup = min(a.warmup, 0.3)
    return compare(a)


if __name__ == "__main__":
    sys.exit(main())
