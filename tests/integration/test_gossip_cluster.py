"""Gossip across real processes: a 5-node `ringfs cluster up`, a stalled node that
must not be declared dead, a killed one that must, and its return."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfs import Client
from ringfs.errors import RingfsError
from ringfs.gossip import GossipConfig
from tests.integration.procs import free_base_port, wait_listening

pytestmark = pytest.mark.integration

NODES = 5


def node_pid(address: str) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if b"node" in args and address.encode() in args:
                return int(entry)
    raise LookupError(address)


def states(address: str) -> dict[str, str]:
    with Client(address, timeout_s=5.0, retries=0) as c:
        st = c.status()
    return {m["name"]: m["state"] for m in st["members"]}


def state_of(address: str, name: str) -> str:
    """What the node at `address` thinks of member `name` ("no answer" if it is slow
    to say: the node asked may be the stalled one)."""
    try:
        return states(address)[name]
    except RingfsError:
        return "no answer"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[str], subprocess.Popen[bytes]]]:
    base = free_base_port(NODES)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringfs", "cluster", "up", "--nodes", str(NODES),
         "--base-port", str(base), "--data-root", str(tmp_path), "--engine", "memory",
         "--gossip", "local"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    addrs = [f"127.0.0.1:{base + i}" for i in range(NODES)]
    try:
        for i in range(NODES):
            wait_listening(base + i, proc)
        yield addrs, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def wait_until(cond: object, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if cond():  # type: ignore[operator]
                return time.monotonic() - start
        except Exception:  # a node busy or restarting: poll again
            pass
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s}s")


def test_stall_kill_and_return(cluster: tuple[list[str], subprocess.Popen[bytes]],
                               tmp_path: Path) -> None:
    addrs, _ = cluster
    names = [f"n{i + 1}" for i in range(NODES)]
    wait_until(lambda: all(set(states(a).values()) == {"alive"} and len(states(a)) == NODES
                           for a in addrs), 20)

    # SIGSTOP one node for 2 s: nobody may ever declare it dead. The stall ends on a
    # timer, not after a round of observations, which may take long on a busy box.
    stalled = node_pid(addrs[2])
    os.kill(stalled, signal.SIGSTOP)
    resume = threading.Timer(2.0, os.kill, (stalled, signal.SIGCONT))
    resume.start()
    seen: set[str] = set()
    t0 = time.monotonic()
    try:
        while resume.is_alive():
            for a in (addrs[0], addrs[1], addrs[3], addrs[4]):
                seen.add(state_of(a, "n3"))
            time.sleep(0.05)
    finally:
        resume.join()
        os.kill(stalled, signal.SIGCONT)  # (again, should the timer have failed)
    t1 = time.monotonic()
    while time.monotonic() - t1 < 5.0:
        for a in addrs:
            seen.add(state_of(a, "n3"))
        time.sleep(0.1)
    assert "dead" not in seen, seen
    assert time.monotonic() - t0 > 2.0

    # kill -9 one node: every other node marks it dead within the suspicion timeout + 3 s.
    cfg = GossipConfig.local()
    bound = cfg.suspicion_min_s(NODES) * cfg.suspicion_max_timeout_mult + 3.0
    victim = node_pid(addrs[4])
    os.kill(victim, signal.SIGKILL)
    took = wait_until(lambda: all(states(a)["n5"] == "dead" for a in addrs[:4]), bound)
    print(f"killed node marked dead everywhere after {took:.2f}s (bound {bound:.1f}s)")

    # Restart it under the same name: alive everywhere within 5 s.
    seeds = ",".join(addrs[:4])
    restarted = subprocess.Popen(
        [sys.executable, "-m", "ringfs", "node", "--name", names[4], "--listen", addrs[4],
         "--data-dir", str(tmp_path / "n5"), "--seeds", seeds, "--engine", "memory",
         "--gossip", "local"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(int(addrs[4].rsplit(":", 1)[1]), restarted)
        took = wait_until(lambda: all(states(a)["n5"] == "alive" for a in addrs), 5.0)
        print(f"restarted node alive everywhere after {took:.2f}s")
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=10)
