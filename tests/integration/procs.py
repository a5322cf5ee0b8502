"""Starting and stopping real `ringfs` processes for integration tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

STARTED: list[NodeProcess] = []
"""Every node process started by the running test (its logs are shown if it fails)."""


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes ports from for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _all_free(ports: range) -> bool:
    """True if every port is free on loopback for both TCP and UDP now."""
    socks: list[socket.socket] = []
    try:
        for p in ports:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


_ports = random.Random()


def free_base_port(count: int) -> int:
    """The first of `count` ports in a row free on loopback for both TCP and UDP now,
    as a node listens on both with one number. Taken below the kernel's range for
    outgoing connections where there is room, so that no connection made between
    now and the node's start can take it."""
    low, high = _ephemeral_ports()
    ranges = [(10_000, low - count)] if low - count > 11_000 else []
    ranges.append((max(1024, high + 1), 65_536 - count))
    for first, last in ranges:
        if first >= last:
            continue
        for _ in range(200):
            base = _ports.randrange(first, last)
            if _all_free(range(base, base + count)):
                return base
    raise RuntimeError(f"no {count} ports in a row free on loopback")


def free_port() -> int:
    """A port free on loopback for both TCP and UDP now (see free_base_port)."""
    return free_base_port(1)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout_s}s")


def ringfs(*args: str, input: bytes | None = None, timeout: float = 30
           ) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI to completion."""
    return subprocess.run([sys.executable, "-m", "ringfs", *args], input=input,
                          capture_output=True, timeout=timeout, check=False)


def _limit_open_files(n: int) -> None:
    """In the child before exec: soft and hard open-file limits of n."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


class NodeProcess:
    """One `ringfs node` child process on a free loopback port."""

    def __init__(self, data_dir: Path, name: str = "n1", extra: Sequence[str] = (),
                 port: int | None = None, nofile: int | None = None) -> None:
        self.name = name
        self.data_dir = data_dir
        self.extra = tuple(extra)
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = data_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ringfs", "node", "--name", name, "--listen", self.address,
             "--data-dir", str(data_dir / name), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=None if nofile is None else partial(_limit_open_files, nofile),
        )
        STARTED.append(self)
        wait_listening(self.port, self.proc)
        # Whatever accepted the connection may be another process that holds the
        # port (this one then exits "cannot listen"): wait until it names itself.
        wait_for(self._answers_as_itself, 15.0, f"{name} to answer STATUS on {self.address}")

    def _answers_as_itself(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}: "
                               f"{self.log_text()[-2000:]}")
        st = self.status()
        if st is not None and st.get("node") != self.name:
            raise RuntimeError(f"{self.address} is {st.get('node')}, not {self.name}")
        return st is not None

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def kill(self) -> None:
        """kill -9: no chance to sync or say goodbye."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def restart(self) -> NodeProcess:
        """A new process with the same name, port and data directory."""
        return NodeProcess(self.data_dir, self.name, self.extra, port=self.port)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """The node's STATUS, or None when it does not answer."""
        from ringfs import Client
        from ringfs.errors import RingfsError

        try:
            with Client(self.address, timeout_s=timeout_s, retries=0) as c:
                return c.status()
        except (RingfsError, OSError):
            return None


@contextmanager
def running_cluster(root: Path, n: int, extra: Sequence[str] = ()) -> Iterator[list[NodeProcess]]:
    """n nodes on free ports, each seeded with all the others; stopped on exit."""
    base = free_base_port(n)  # (n distinct ports)
    ports = list(range(base, base + n))
    addrs = [f"127.0.0.1:{p}" for p in ports]
    nodes: list[NodeProcess] = []
    try:
        for i, port in enumerate(ports):
            seeds = ",".join(a for j, a in enumerate(addrs) if j != i)
            nodes.append(NodeProcess(root, f"n{i + 1}", ("--seeds", seeds, *extra), port=port))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def wait_members(nodes: Sequence[NodeProcess], count: int | None = None, *,
                 alive: bool = False, timeout_s: float = 30.0) -> float:
    """Wait until every node lists `count` members (default: len(nodes)), all alive
    if `alive`; the seconds it took. The failure names what each node last showed."""
    want = len(nodes) if count is None else count
    last: dict[str, object] = {}

    def formed() -> bool:
        ok = True
        for n in nodes:
            if n.proc.poll() is not None:
                raise AssertionError(f"{n.name} exited with status {n.proc.returncode}")
            st = n.status()
            if st is None:
                last[n.name] = "no answer"
                ok = False
                continue
            seen = {m["name"]: m["state"] for m in st["members"]}
            last[n.name] = seen
            ok = ok and len(seen) == want and (
                not alive or all(v == "alive" for v in seen.values()))
        return ok

    return wait_for(formed, timeout_s,
                    lambda: f"{want} members on every node; last seen: {last}")


def wait_for(cond: Callable[[], object], timeout_s: float = 15.0,
             what: str | Callable[[], str] = "condition") -> float:
    """Poll `cond()` until true (real processes have no simulated clock to advance);
    the seconds it took. `what` may be a function, called on failure to describe what
    was last seen."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if cond():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for "
                         f"{what() if callable(what) else what}")
