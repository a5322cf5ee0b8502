"""Run every benchmark present in bench/: `python -m bench [--only NAME] [--quick]`.

Each benchmark is a module bench/<name>.py with a `main(argv) -> int`. The list
below fixes the order; modules not (yet) in the tree are skipped with a note,
and one benchmark failing does not stop the others. Options after `--` are
passed to every benchmark that runs; `--quick` is passed to those that define it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

BENCHMARKS: tuple[str, ...] = (
    "kv",
    "cluster",
    "put_path",
    "storage",
    "ring_balance",
    "gossip_report",
    "files",
    "convergence",
)
"""Benchmark modules in the order they run; add new ones here."""


def _accepts_quick(name: str) -> bool:
    """Whether bench/<name>.py defines a --quick option (so `--quick` is passed on)."""
    spec = importlib.util.find_spec(f"bench.{name}")
    if spec is None or spec.origin is None:
        return False
    try:
        with open(spec.origin, encoding="utf-8") as f:
            return '"--quick"' in f.read()
    except OSError:
        return False


def _call_main(name: str, fn: Callable[..., Any], argv: list[str]) -> int:
    """Call a benchmark's main with `argv`, whether it takes argv or reads sys.argv."""
    try:
        takes_argv = bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        takes_argv = False
    if takes_argv:
        rc = fn(argv)
    else:
        saved = sys.argv
        sys.argv = [f"bench.{name}", *argv]
        try:
            rc = fn()
        finally:
            sys.argv = saved
    return rc if isinstance(rc, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this benchmark (repeatable): " + ", ".join(BENCHMARKS))
    p.add_argument("--quick", action="store_true", help="short runs where supported")
    p.add_argument("--list", action="store_true", help="list benchmarks and whether present")
    args = p.parse_args(argv)
    if args.list:
        for name in BENCHMARKS:
            present = importlib.util.find_spec(f"bench.{name}") is not None
            print(f"{name:<16} {'present' if present else 'missing'}")
        return 0
    names = BENCHMARKS
    if args.only:
        unknown = [n for n in args.only if n not in BENCHMARKS]
        if unknown:
            p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        names = tuple(n for n in BENCHMARKS if n in args.only)
    failed: list[str] = []
    for name in names:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"# bench: {name}: bench/{name}.py not present, skipped", flush=True)
            continue
        sub_argv = list(extra)
        if args.quick and "--quick" not in sub_argv and _accepts_quick(name):
            sub_argv.append("--quick")
        print(f"# bench: === {name} {' '.join(sub_argv)}".rstrip(), flush=True)
        t = time.monotonic()
        try:
            mod = importlib.import_module(f"bench.{name}")
            fn = getattr(mod, "main", None)
            if fn is None:
                print(f"# bench: {name}: no main(); skipped", flush=True)
                continue
            rc = _call_main(name, fn, sub_argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:
            traceback.print_exc()
            rc = 1
        print(f"# bench: {name} finished in {time.monotonic() - t:.1f} s, status {rc}",
              flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"# bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
