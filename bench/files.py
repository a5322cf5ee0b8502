"""bench/files: one big file into a 3-node cluster and back, against plain cp and cat.

    python -m bench.files [--size-mib 1024] [--quick] [--json]

Three `ringfs node` processes (log engine, group commit, N=3, W=2) on loopback;
the client is a separate process (`python -m bench.files client ...`) so that its
peak RSS is its own. The reference is the least work three durable copies need,
done plainly in the same run on the same disk: `cp` of the file into three
directories then `sync` (upload), and `cat` of one copy to /dev/null (download).
Prints MiB/s, the ratios, the peak RSS (VmHWM) of the client and every node, and
the CPU seconds (user + system) each process spent on each transfer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.common import free_port, print_json, print_table, temp_dir, wait_listening

MiB = 1024 * 1024


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _make_file(path: str, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left:
            n = min(left, len(block))
            # Vary every MiB so that no two chunks are equal (no accidental deduplication).
            f.write(i.to_bytes(8, "little") + block[8:n] if n >= 8 else block[:n])
            left -= n
            i += 1


def _timed(cmd: Sequence[str]) -> float:
    t = time.perf_counter()
    subprocess.run(list(cmd), check=True)
    return time.perf_counter() - t


def _client_run(argv: Sequence[str]) -> int:
    """The client side, in its own process: prints {seconds, peak_rss_mib, ...}."""
    p = argparse.ArgumentParser()
    p.add_argument("op", choices=("put", "get"))
    p.add_argument("--node", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--name", required=True)
    a = p.parse_args(argv)
    from ringfs import Client

    with Client(a.node, timeout_s=30.0) as c:
        before = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = before.ru_utime + before.ru_stime
        t = time.perf_counter()
        if a.op == "put":
            res = c.put_file(a.name, a.path, w=2)
            extra: dict[str, Any] = {"sent": res.sent, "skipped": res.skipped,
                                     "sha256": res.sha256}
        else:
            info = c.get_file(a.name, a.path)
            extra = {"sha256": info.sha256}
        seconds = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = usage.ru_maxrss / 1024
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    print(json.dumps({"seconds": seconds, "peak_rss_mib": rss, "cpu_s": cpu, **extra}),
          flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["client"]:
        return _client_run(args_in[1:])
    p = argparse.ArgumentParser(prog="python -m bench.files", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    p.add_argument("--quick", action="store_true", help="a 64 MiB file")
    p.add_argument("--json", action="store_true", help="also print one JSON line")
    p.add_argument("--dir", default=None, help="where to put data (default: a temp dir)")
    a = p.parse_args(args_in)
    size = (64 if a.quick else a.size_mib) * MiB
    py = sys.executable
    with temp_dir("ringfs-bench-files-") as tmp:
        root = a.dir or tmp
        src = os.path.join(root, "src.bin")
        _make_file(src, size)
        subprocess.run(["sync"], check=True)
        # Reference: the least work for three durable copies, then reading one back.
        dirs = [os.path.join(root, f"plain{i}") for i in range(3)]
        for d in dirs:
            os.makedirs(d)
        t = time.perf_counter()
        for d in dirs:
            subprocess.run(["cp", src, d], check=True)
        subprocess.run(["sync"], check=True)
        plain_up = time.perf_counter() - t
        plain_down = _timed(["sh", "-c", f"cat {os.path.join(dirs[0], 'src.bin')} > /dev/null"])
        for d in dirs:
            os.unlink(os.path.join(d, "src.bin"))
        subprocess.run(["sync"], check=True)

        ports = [free_port() for _ in range(3)]
        addrs = [f"127.0.0.1:{port}" for port in ports]
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        try:
            for i, addr in enumerate(addrs):
                seeds = ",".join(x for x in addrs if x != addr)
                log = open(os.path.join(root, f"n{i + 1}.log"), "wb")  # noqa: SIM115
                logs.append(log)
                procs.append(subprocess.Popen(
                    [py, "-m", "ringfs", "node", "--name", f"n{i + 1}", "--listen", addr,
                     "--data-dir", os.path.join(root, f"n{i + 1}"), "--seeds", seeds,
                     "--gossip", "local", "--n-replicas", "3", "--w", "2",
                     "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT))
            for proc, port in zip(procs, ports, strict=True):
                wait_listening("127.0.0.1", port, proc)
            _wait_members(addrs)

            def client(op: str, path: str) -> dict[str, Any]:
                out = subprocess.run(
                    [py, "-m", "bench.files", "client", op, "--node", addrs[0], "--path", path,
                     "--name", "bench/big.bin"], check=True, capture_output=True)
                return json.loads(out.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]

            cpu0 = [_cpu_seconds(proc.pid) for proc in procs]
            up = client("put", src)
            cpu1 = [_cpu_seconds(proc.pid) for proc in procs]
            back = os.path.join(root, "back.bin")
            down = client("get", back)
            cpu2 = [_cpu_seconds(proc.pid) for proc in procs]
            ok = os.path.getsize(back) == size and up["sha256"] == down["sha256"]
            node_rss = [_peak_rss_mib(proc.pid) for proc in procs]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for log in logs:
                log.close()
    mib = size / MiB
    rows = [
        {"what": "upload", "plain": mib / plain_up, "ringfs": mib / up["seconds"],
         "ratio": plain_up / up["seconds"], "target": 0.6},
        {"what": "download", "plain": mib / plain_down, "ringfs": mib / down["seconds"],
         "ratio": plain_down / down["seconds"], "target": 0.5},
    ]
    print(f"file {mib:.0f} MiB, 3 nodes (N=3, W=2, log engine, group commit); "
          f"plain = cp to 3 dirs + sync / cat to /dev/null")
    print_table(rows, [("what", "what", "s"), ("plain", "plain MiB/s", ".1f"),
                       ("ringfs", "ringfs MiB/s", ".1f"), ("ratio", "ratio", ".2f"),
                       ("target", "target", ".1f")])
    rss = [{"process": "client (upload)", "peak_rss_mib": up["peak_rss_mib"]},
           {"process": "client (download)", "peak_rss_mib": down["peak_rss_mib"]}]
    rss += [{"process": f"node n{i + 1}", "peak_rss_mib": r} for i, r in enumerate(node_rss)]
    print_table(rss, [("process", "process", "s"), ("peak_rss_mib", "peak RSS MiB", ".1f")])
    # CPU seconds per transfer: steadier than the rates on a shared box. Node figures
    # span the client process's whole run (connecting included, a few milliseconds).
    cpu = [{"what": what, "client": res["cpu_s"],
            **{f"n{i + 1}": b - a for i, (a, b) in enumerate(zip(c0, c1, strict=True))},
            "total": res["cpu_s"] + sum(c1) - sum(c0)}
           for what, res, c0, c1 in (("upload", up, cpu0, cpu1), ("download", down, cpu1, cpu2))]
    print_table(cpu, [("what", "CPU seconds", "s"), ("client", "client", ".2f"),
                      ("n1", "n1", ".2f"), ("n2", "n2", ".2f"), ("n3", "n3", ".2f"),
                      ("total", "total", ".2f")])
    print(f"verified: {ok}; upload sent {up['sent']} chunks, skipped {up['skipped']}")
    if a.json:
        print_json({"bench": "files", "size_mib": mib, "rates": rows, "rss": rss, "cpu": cpu,
                    "ok": ok})
    return 0 if ok else 1


def _wait_members(addresses: Sequence[str], timeout_s: float = 30.0) -> None:
    """Wait until every node sees all of them alive and all share one ring: a ring
    change during the run would have every node rescan its store into new hash trees."""
    from ringfs import Client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        digests = set()
        settled = True
        for address in addresses:
            with Client(address) as c:
                st = c.status()
            alive = sum(1 for m in st["members"] if m["state"] == "alive")
            settled &= alive >= len(addresses)
            digests.add(st["ring"]["digest"])
        if settled and len(digests) == 1:
            return
        time.sleep(0.2)
    raise RuntimeError("the cluster did not form")


if __name__ == "__main__":
    sys.exit(main())
