"""bench/common.py: CPU accounting of a server and its helper processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from bench.common import _children, _own_cpu_s, proc_cpu_s

SPIN_THEN_WAIT = (
    "import time\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.3:\n"
    "    pass\n"
    "time.sleep(60)\n"
)
PARENT = (
    "import subprocess, sys\n"
    f"subprocess.Popen([sys.executable, '-c', {SPIN_THEN_WAIT!r}]).wait()\n"
)


def test_a_process_cpu_includes_its_running_children() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        deadline = time.monotonic() + 30
        kids: list[int] = []
        while time.monotonic() < deadline:
            kids = _children(parent.pid)
            if kids and _own_cpu_s(kids[0]) >= 0.25:
                break
            time.sleep(0.05)
        assert kids, "the child never started"
        child = _own_cpu_s(kids[0])
        assert child >= 0.25
        assert proc_cpu_s(parent.pid) >= _own_cpu_s(parent.pid) + child - 0.02
    finally:
        for pid in _children(parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()
