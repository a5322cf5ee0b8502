"""Convergence: anti-entropy repair time, anti-entropy traffic, and handoff throughput.

    python -m bench.convergence [--quick] [--only converge,bytes,handoff]

Three measurements, each printed next to its reference from the same run:

  converge  Real processes: a 3-node cluster (N=3, R=2, W=2, log engine, durability
            group, gossip local, hinted handoff off, anti-entropy at its defaults: an
            exchange every 5 s, 2,000 keys per exchange, 32 MiB/s). One replica is
            killed (SIGKILL), k keys are written at W=2 (pipelined, 100-byte values),
            the replica is restarted, and the clock runs from its restart until its
            STATUS counts all k keys. k = 1,000 and 100,000 (--quick: 1,000 and
            10,000). Reference: the time the cluster took to accept the same k writes.
  bytes     The simulated world (the real Node code and its real peer frames over a
            simulated network; the bytes counted are exactly the frames the runtime
            would send): three nodes with default rings (1,024 virtual nodes each,
            so 3,072 arcs, every one shared by all three), each on a log store
            pre-filled with the same K keys (100,000; --quick 10,000). AAE request
            and reply frames are counted (a) in sync, over 60 simulated seconds, per
            exchange and per arc; (b) with 1% of the keys missing on one replica,
            from the start until it holds them all. References: the bytes of the
            replica states themselves (all of them: a full copy of every range; and
            only the differing 1%: what a perfect diff would move).
  handoff   Real processes: a 4-node cluster loaded with D MiB of 16 KiB values
            (64 MiB; --quick 8 MiB); one node leaves (`ringfs leave`) and hands its
            keys to their new owners. Throughput = bytes it handed over / the time
            from the LEAVE request until its handoff reported every key moved.
            Reference: `cp -r` of a directory holding as many bytes (in 64 MiB files,
            like log segments) into a fresh directory plus `sync`, in the same run,
            on the same disk.

Results print as a table per measurement, ratios as `#` lines, then one JSON object
per line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack

from bench.common import (
    bench_key,
    free_port,
    print_json,
    print_table,
    repo_root,
    temp_dir,
    wait_listening,
)
from bench.loadgen import prefill

HOST = "127.0.0.1"
MiB = 1 << 20


# -- real clusters -------------------------------------------------------------------------


class Node:
    """One `ringfs node` process that can be killed and restarted on its data."""

    def __init__(self, name: str, port: int, seeds: Sequence[int], work: str,
                 config: str) -> None:
        self.name, self.port, self.work = name, port, work
        self.address = f"{HOST}:{port}"
        self.data_dir = os.path.join(work, name)
        self.cmd = [sys.executable, "-m", "ringfs", "node", "--name", name,
                    "--listen", self.address, "--data-dir", self.data_dir,
                    "--seeds", ",".join(f"{HOST}:{p}" for p in seeds), "--config", config]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = repo_root() + (os.pathsep + env["PYTHONPATH"]
                                           if env.get("PYTHONPATH") else "")
        with open(os.path.join(self.work, f"{self.name}.log"), "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=repo_root())
        wait_listening(HOST, self.port, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def cluster(work: str, n: int, settings: dict[str, Any]) -> Iterator[list[Node]]:
    config = os.path.join(work, "node.toml")
    with open(config, "w") as f:
        f.write('gossip = "local"\nlog_level = "warning"\nengine = "log"\n'
                'durability = "group"\n')
        for k, v in settings.items():
            f.write(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}\n")
    ports = [free_port() for _ in range(n)]
    nodes: list[Node] = []
    try:
        for i, p in enumerate(ports):
            nodes.append(Node(f"n{i + 1}", p, [q for q in ports if q != p], work, config))
        wait(lambda: all(alive(x) == n for x in nodes), 30, f"{n} nodes to see each other")
        yield nodes
    finally:
        for x in nodes:
            x.stop()


def status(node: Node) -> dict[str, Any] | None:
    from ringfs import Client
    from ringfs.errors import RingfsError

    try:
        with Client(node.address, timeout_s=2.0, retries=0) as c:
            return c.status()
    except (RingfsError, OSError):
        return None


def alive(node: Node) -> int:
    st = status(node)
    return 0 if st is None else sum(1 for m in st["members"] if m["state"] == "alive")


def keys_of(node: Node) -> int:
    st = status(node)
    return -1 if st is None else int(st["storage"]["keys"])


def wait(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - start


# -- converge: time for a restarted replica to get k missed writes -------------------------


def bench_converge(k: int) -> dict[str, Any]:
    with temp_dir("bench-conv-") as work, cluster(work, 3, {"hinted_handoff": False}) as nodes:
        down = nodes[2]
        down.kill()
        write_s = prefill(HOST, nodes[0].port, k, 100, batch=1000)
        down.start()
        converge_s = wait(lambda: keys_of(down) >= k, 600, f"{k} keys on the restarted node")
        sts = [status(x) or {} for x in nodes]
        ae = [st.get("anti_entropy", {}) for st in sts]
        return {
            "bench": "converge", "k": k, "write_s": write_s, "converge_s": converge_s,
            "keys_per_s": k / converge_s, "vs_write": converge_s / write_s,
            "exchanges": sum(a.get("exchanges", 0) for a in ae),
            "keys_repaired": sum(a.get("keys_repaired", 0) for a in ae),
            "aae_record_bytes": sum(a.get("bytes", 0) for a in ae),
        }


# -- bytes: anti-entropy traffic per range, in the simulated world ------------------------


def bench_bytes(keys: int, differ: float) -> dict[str, Any]:
    from ringfs.dvv import DVVSet
    from ringfs.peer import PeerMsg
    from ringfs.storage.logstore import LogStore
    from ringfs.wire import FrameDecoder
    from simulations.world import SimWorld

    stores: list[LogStore] = []
    with temp_dir("bench-conv-bytes-") as work:
        value = b"x" * 100
        records: list[tuple[bytes, bytes]] = []
        for i in range(keys):
            key = bench_key(i)
            st = DVVSet().update({}, value, "n1@1")
            records.append((key, msgpack.packb(st.to_wire(), use_bin_type=True)))
        every = round(1 / differ) if differ else 0
        missing = {records[i][0] for i in range(0, keys, every)} if every else set()

        def engine(name: str) -> Any:
            s = LogStore(os.path.join(work, name))
            stores.append(s)
            for key, meta in records:
                if not (name == "n3" and key in missing):
                    s.put(key, b"", meta)
            s.sync()
            return s

        w = SimWorld(1, engine_factory=engine)
        counted = {"bytes": 0, "frames": 0}
        send = w.net.send_stream

        def counting_send(src: str, dest: str, data: bytes) -> None:
            for body in FrameDecoder(1 << 30).feed(data):
                if (type(body) is list and len(body) == 4
                        and body[2] in (PeerMsg.AAE_REQUEST, PeerMsg.AAE_REPLY)):
                    counted["bytes"] += len(data)
                    counted["frames"] += 1
            send(src, dest, data)

        w.net.send_stream = counting_send  # type: ignore[method-assign]
        try:
            for n in ("n1", "n2", "n3"):
                w.add_node(n)
            w.run_for(2.0)
            nodes = [sn.node for sn in w.nodes.values()]
            while any(x.repair.trees.unbuilt for x in nodes):
                w.run_for(0.5)
            arcs = len(nodes[0].repair.trees.shared("n2"))
            counted["bytes"] = counted["frames"] = 0
            ex0 = sum(x.counters["aae_exchanges"] for x in nodes)
            t0 = w.now
            if missing:
                n3 = w.nodes["n3"].engine
                while not all(n3.get(k) is not None for k in missing):
                    if w.now - t0 > 600:
                        raise RuntimeError("the replica did not converge in 600 simulated s")
                    w.run_for(0.5)
            else:
                w.run_for(60.0)
            exchanges = sum(x.counters["aae_exchanges"] for x in nodes) - ex0
            full = sum(len(k) + len(m) for k, m in records)
            diff = sum(len(k) + len(m) for k, m in records if k in missing)
            return {
                "bench": "bytes", "keys": keys, "differing": len(missing),
                "arcs_per_pair": arcs, "exchanges": exchanges,
                "sim_s": w.now - t0, "aae_bytes": counted["bytes"],
                "aae_frames": counted["frames"],
                "bytes_per_exchange": counted["bytes"] / max(1, exchanges),
                "bytes_per_arc_per_exchange": counted["bytes"] / max(1, exchanges) / arcs,
                "bytes_per_arc": counted["bytes"] / arcs,
                "full_copy_bytes": full, "differing_bytes": diff,
                "vs_full_copy": counted["bytes"] / full,
                "vs_differing": counted["bytes"] / diff if diff else None,
            }
        finally:
            for s in stores:
                s.close()


# -- handoff throughput against cp -r + sync ------------------------------------------------


def bench_handoff(total_bytes: int, value_bytes: int) -> dict[str, Any]:
    keys = total_bytes // value_bytes
    with temp_dir("bench-conv-handoff-") as work:
        with cluster(work, 4, {"ownership_settle_s": 1.0}) as nodes:
            prefill(HOST, nodes[0].port, keys, value_bytes, batch=64)
            leaver = nodes[3]
            wait(lambda: all(keys_of(x) >= 0 for x in nodes), 10, "status")
            before = status(leaver) or {}
            held = int(before["storage"]["keys"])
            data_bytes = int(before["storage"]["live_bytes"])
            from ringfs import Client

            t0 = time.monotonic()
            with Client(leaver.address) as c:
                c.leave()
            last: dict[str, Any] = {}

            def done() -> bool:
                st = status(leaver)
                if st is None:
                    return True  # stopped: it departed
                last.update(st["handoff"])
                return bool(st["handoff"]["departed"])

            wait(done, 1200, "the leaving node to hand everything over", 0.2)
            handoff_s = time.monotonic() - t0
            moved_keys, moved_bytes = last.get("moved_keys", held), last.get("moved_bytes", 0)
            assert leaver.proc is not None
            leaver.proc.wait(timeout=30)
            others = [keys_of(x) for x in nodes[:3]]
        # The reference: as many bytes as the node handed over, in segment-sized files,
        # copied to a fresh directory on the same disk and synced.
        src = _fill_dir(os.path.join(work, "copy-src"), moved_bytes)
        subprocess.run(["sync"], check=True)
        dst = os.path.join(work, "copy-dst")
        t1 = time.monotonic()
        subprocess.run(["cp", "-r", src, dst], check=True)
        subprocess.run(["sync"], check=True)
        copy_s = time.monotonic() - t1
    return {
        "bench": "handoff", "keys": keys, "value_bytes": value_bytes,
        "leaver_keys": held, "leaver_live_bytes": data_bytes,
        "moved_keys": moved_keys, "moved_bytes": moved_bytes, "handoff_s": handoff_s,
        "handoff_mib_s": moved_bytes / MiB / handoff_s,
        "handoff_keys_s": moved_keys / handoff_s,
        "copy_s": copy_s, "copy_mib_s": moved_bytes / MiB / copy_s,
        "vs_copy": copy_s / handoff_s,
        "others_keys_after": others,
    }


def _fill_dir(path: str, size: int) -> str:
    """A directory holding `size` bytes in 64 MiB files (like log segments)."""
    os.makedirs(path)
    chunk = os.urandom(MiB)
    left, i = size, 0
    while left > 0:
        with open(os.path.join(path, f"{i:016x}.seg"), "wb") as f:
            part = min(left, 64 * MiB)
            for _ in range(part // MiB):
                f.write(chunk)
            f.write(chunk[:part % MiB])
        left -= part
        i += 1
    return path


# -- main -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.convergence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="k = 1,000 and 10,000; 10,000 keys for bytes; 8 MiB of handoff")
    p.add_argument("--only", default="converge,bytes,handoff",
                   help="comma-separated subset of converge,bytes,handoff")
    p.add_argument("--handoff-mib", type=int, default=None)
    p.add_argument("--value-bytes", type=int, default=16 * 1024,
                   help="value size for the handoff measurement")
    a = p.parse_args(argv)
    only = set(a.only.split(","))
    results: list[dict[str, Any]] = []
    if "converge" in only:
        rows = [bench_converge(k) for k in ((1_000, 10_000) if a.quick else (1_000, 100_000))]
        print_table(rows, [("k", "k missed", ",d"), ("write_s", "write s", ".2f"),
                           ("converge_s", "converge s", ".2f"), ("keys_per_s", "keys/s", ",.0f"),
                           ("vs_write", "vs write", ".2f"), ("exchanges", "exchanges", "d"),
                           ("keys_repaired", "repaired", ",d")])
        for r in rows:
            print(f"# a replica that missed {r['k']:,} writes held them all {r['converge_s']:.1f}"
                  f" s after its restart ({r['vs_write']:.2f}x the {r['write_s']:.1f} s the "
                  f"cluster took to accept them)")
        results += rows
    if "bytes" in only:
        keys = 10_000 if a.quick else 100_000
        rows = [bench_bytes(keys, 0.0), bench_bytes(keys, 0.01)]
        print_table(rows, [("keys", "keys", ",d"), ("differing", "differing", ",d"),
                           ("arcs_per_pair", "arcs", ",d"), ("exchanges", "exchanges", "d"),
                           ("aae_bytes", "AAE bytes", ",d"),
                           ("bytes_per_exchange", "B/exchange", ",.0f"),
                           ("bytes_per_arc_per_exchange", "B/arc/exch", ".3f"),
                           ("full_copy_bytes", "full copy B", ",d"),
                           ("differing_bytes", "differing B", ",d"),
                           ("vs_full_copy", "vs full", ".4f"), ("vs_differing", "vs diff", ".2f")])
        same, diff = rows
        print(f"# in sync: {same['bytes_per_exchange']:.0f} bytes per exchange, "
              f"{same['bytes_per_arc_per_exchange']:.3f} bytes per arc; "
              f"{same['vs_full_copy']:.2e} of a full copy per exchange")
        print(f"# 1% differing: {diff['aae_bytes']:,} bytes in all ({diff['bytes_per_arc']:.0f} "
              f"per arc), {diff['vs_differing']:.2f}x the differing states, "
              f"{diff['vs_full_copy']:.3f} of a full copy")
        results += rows
    if "handoff" in only:
        mib = a.handoff_mib or (8 if a.quick else 64)
        r = bench_handoff(mib * MiB, a.value_bytes)
        print_table([r], [("leaver_keys", "keys", ",d"), ("moved_bytes", "moved B", ",d"),
                          ("handoff_s", "handoff s", ".2f"), ("handoff_mib_s", "MiB/s", ".2f"),
                          ("handoff_keys_s", "keys/s", ",.0f"), ("copy_s", "cp s", ".2f"),
                          ("copy_mib_s", "cp MiB/s", ".1f"), ("vs_copy", "vs cp", ".3f")])
        print(f"# handoff {r['handoff_mib_s']:.2f} MiB/s ({r['handoff_keys_s']:.0f} keys/s) "
              f"against cp -r + sync {r['copy_mib_s']:.1f} MiB/s: {r['vs_copy']:.3f}x")
        results.append(r)
    for r in results:
        print_json(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
