"""Starting and stopping real `ringfs` processes for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path


def free_port() -> int:
    """A TCP port that is free on loopback now (and very likely a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        wait_listening(self.port, self.proc)

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

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10) -> int:
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


@contextmanager
def running_cluster(root: Path, n: int, extra: Sequence[str] = ()) -> Iterator[list[NodeProcess]]:
    """n nodes on free ports, each seeded with all the others; stopped on exit."""
    ports = [free_port() for _ in range(n)]
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


def wait_for(cond: object, timeout_s: float = 15.0, what: str = "condition") -> None:
    """Poll `cond()` until true (real processes have no simulated clock to advance)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
