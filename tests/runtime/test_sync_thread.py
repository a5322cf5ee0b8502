"""The runtime's own thread for fsyncs (NodeServer._syncer hands every sync to it)."""

from __future__ import annotations

import threading

import pytest
import trio

from ringfs.runtime.server import _SyncThread


async def test_results_and_errors_come_back_in_order() -> None:
    t = _SyncThread()
    try:
        names: list[str] = []

        def job(i: int) -> int:
            names.append(threading.current_thread().name)
            return i * 2

        for i in range(50):
            assert await t.run(lambda i=i: job(i)) == 2 * i
        assert set(names) == {"ringfs-sync"}

        def failing() -> None:
            raise OSError(5, "Input/output error")

        with pytest.raises(OSError, match="Input/output error"):
            await t.run(failing)
        assert await t.run(lambda: "still working") == "still working"
    finally:
        t.close()


async def test_a_cancelled_caller_still_waits_for_the_sync() -> None:
    t = _SyncThread()
    started = threading.Event()
    release = threading.Event()
    finished: list[bool] = []

    def slow_sync() -> None:
        started.set()
        release.wait(10)
        finished.append(True)

    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(t.run, slow_sync)
                await trio.to_thread.run_sync(started.wait, 10)
                threading.Timer(0.2, release.set).start()
                scope.cancel()
        # The cancelled caller did not return while the sync ran: the engine would
        # have been closed under it.
        assert finished == [True]
    finally:
        t.close()


async def test_close_ends_the_thread() -> None:
    t = _SyncThread()
    assert await t.run(lambda: 1) == 1
    t.close()
    t._thread.join(5)
    assert not t._thread.is_alive()
