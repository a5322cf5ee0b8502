"""The three-node put path without sockets: what the node logic costs per put.

Three `Node`s (N=3 R=2 W=2, log engine in a temporary directory, durability group,
static membership) are driven in this one process the way the runtime drives them:
every step, each connection's pending bytes are handed over at once (split by
the same FrameDecoder), each node's effects are carried out after it handled them,
syncs requested during a step complete at its end, timers fire when due. Closed-loop
clients (one put in flight each, no context, so every put is a checked write)
are spread round-robin over the nodes; keys are random over `--keyspace`.

No scheduler, sockets or other processes take part, so the figure is the node
logic's alone (ringfs/node.py and what it calls, the log store included) and it
moves little with the load on the machine. For a load-independent count, run it
under callgrind with `--callgrind`: instrumentation is switched on for the
measured puts only, and the dump's total Ir divided by `--puts` is the count of
machine instructions per put (all three nodes and this driver together):

    python -m bench.put_path [--puts 20000] [--connections 50] [--quick] [--profile FILE]
    valgrind --tool=callgrind --instr-atstart=no python -m bench.put_path \\
        --puts 2000 --warmup 1000 --callgrind
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from ringfs.config import Durability, NodeConfig
from ringfs.node import ClientReply, Node, PeerSend, RequestSync
from ringfs.storage.logstore import LogStore
from ringfs.wire import PROTOCOL_VERSION, RESPONSE, FrameDecoder, Op, encode_request

STEP_S = 0.0003
"""Virtual time a step takes."""


class PutPath:
    """Three nodes and their clients, stepped by hand."""

    def __init__(self, data_dir: str, connections: int, keyspace: int, value_bytes: int,
                 seed: int) -> None:
        self.now = 1000.0
        names = ["n1", "n2", "n3"]
        self.addrs = {n: f"127.0.0.1:{7001 + i}" for i, n in enumerate(names)}
        self.peer_of = {a: n for n, a in self.addrs.items()}
        self.nodes: dict[str, Node] = {}
        self.engines: dict[str, LogStore] = {}
        for i, name in enumerate(names):
            cfg = NodeConfig(name=name, listen=self.addrs[name], engine="log",
                             data_dir=os.path.join(data_dir, name),
                             durability=Durability("group"), gossip="off",
                             seeds=tuple(self.addrs[m] for m in names[:i]),
                             log_level="warning")
            engine = LogStore(cfg.data_dir)
            self.engines[cfg.listen] = engine
            self.nodes[cfg.listen] = Node(cfg, engine, random.Random(i), self.now, epoch=1)
        self.pending: dict[tuple[str, str], list[bytes]] = {}
        self.conns: dict[str, dict[str, tuple[int, FrameDecoder]]] = {a: {} for a in self.nodes}
        self.conn_src: dict[str, dict[int, str]] = {a: {} for a in self.nodes}
        self.sync_wanted: set[str] = set()
        self.client_in: dict[str, bytearray] = {}
        self.rng = random.Random(seed)
        self.keyspace = keyspace
        self.value = b"x" * value_bytes
        self.clients = [f"client{i}" for i in range(connections)]
        targets = list(self.nodes)
        self.target = {c: targets[i % len(targets)] for i, c in enumerate(self.clients)}
        self.decoders = {c: FrameDecoder(1 << 24) for c in self.clients}
        self.rid = 0
        self.done = 0
        for addr in self.nodes:
            self._effects(addr)
        for c in self.clients:
            self._queue(c, self.target[c], encode_request(0, Op.HELLO,
                                                          {"versions": [PROTOCOL_VERSION]}))
        for _ in range(50):
            self.step()
        for c in self.clients:
            self._put(c)

    def _queue(self, src: str, dst: str, frame: bytes) -> None:
        self.pending.setdefault((src, dst), []).append(frame)

    def _effects(self, addr: str) -> None:
        for eff in self.nodes[addr].drain_outbox():
            if type(eff) is ClientReply:
                self._queue(addr, self.conn_src[addr][eff.conn], eff.frame)
            elif type(eff) is PeerSend:
                self._queue(addr, eff.address, eff.frame)
            elif type(eff) is RequestSync:
                self.sync_wanted.add(addr)

    def _deliver(self, src: str, dst: str, data: bytes) -> None:
        node = self.nodes.get(dst)
        if node is None:
            self.client_in.setdefault(dst, bytearray()).extend(data)
            return
        conn = self.conns[dst].get(src)
        if conn is None:
            cid = len(self.conns[dst]) + 1
            conn = self.conns[dst][src] = (cid, FrameDecoder(1 << 24))
            self.conn_src[dst][cid] = src
            node.client_connected(cid, self.now)
            peer = self.peer_of.get(src)
            if peer is not None:
                node.client_request(cid, [0, 1, int(Op.HELLO),
                                          {"versions": [PROTOCOL_VERSION], "peer": peer}],
                                    self.now)
        cid, decoder = conn
        for body in decoder.feed(data):
            frame = node.client_request(cid, body, self.now)
            if frame is not None:
                self._queue(dst, src, frame)
        self._effects(dst)

    def _put(self, client: str) -> None:
        self.rid += 1
        key = b"key:%012d" % self.rng.randrange(self.keyspace)
        self._queue(client, self.target[client],
                    encode_request(self.rid, Op.PUT, {"key": key, "value": self.value}))

    def step(self) -> None:
        self.now += STEP_S
        batch = self.pending
        self.pending = {}
        for (src, dst), frames in batch.items():
            self._deliver(src, dst, b"".join(frames))
        for client, buf in list(self.client_in.items()):
            del self.client_in[client]
            for body in self.decoders[client].feed(bytes(buf)):
                if body[0] != RESPONSE:
                    raise RuntimeError(f"request failed: {body!r}")
                if body[1] > 0:
                    self.done += 1
                    self._put(client)
        for addr in sorted(self.sync_wanted):
            self.sync_wanted.discard(addr)
            self.nodes[addr].on_sync_complete(self.engines[addr].sync(), self.now)
            self._effects(addr)
        for addr, node in self.nodes.items():
            deadline = node.next_deadline()
            if deadline is not None and deadline <= self.now:
                node.handle_timer(self.now)
                self._effects(addr)

    def run(self, puts: int) -> None:
        start = self.done
        while self.done - start < puts:
            self.step()

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=False,
                   capture_output=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.put_path", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--puts", type=int, default=20_000, help="puts to measure")
    p.add_argument("--warmup", type=int, default=5_000, help="puts before measuring")
    p.add_argument("-c", "--connections", type=int, default=50)
    p.add_argument("--keyspace", type=int, default=20_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2,000 puts after 500")
    p.add_argument("--profile", metavar="FILE", help="write cProfile stats of the measured puts")
    p.add_argument("--callgrind", action="store_true",
                   help="under valgrind --tool=callgrind --instr-atstart=no: instrument only "
                   "the measured puts and dump their counts when done")
    a = p.parse_args(argv)
    if a.quick:
        a.puts, a.warmup = 2_000, 500
    data_dir = tempfile.mkdtemp(prefix="bench-put-path-")
    try:
        world = PutPath(data_dir, a.connections, a.keyspace, a.value_size, a.seed)
        world.run(a.warmup)
        profiler = None
        if a.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        if a.callgrind:
            _callgrind("--instr=on")
        t0 = time.process_time()
        world.run(a.puts)
        cpu = time.process_time() - t0
        if a.callgrind:
            _callgrind("--dump=measured puts")
            _callgrind("--instr=off")
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(a.profile)
        world.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{a.puts} puts, {a.connections} connections: {cpu / a.puts * 1e6:.1f} us of CPU "
          "per put (three nodes and the driver)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
