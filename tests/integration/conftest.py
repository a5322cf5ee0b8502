"""A failed integration test shows the end of the log of every node it started."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tests.integration import procs

LOG_TAIL_LINES = 40
_first = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_first] = len(procs.STARTED)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for node in procs.STARTED[item.stash.get(_first, 0):]:
        try:
            lines = node.log_text().splitlines()[-LOG_TAIL_LINES:]
        except OSError as exc:
            lines = [f"(no log: {exc})"]
        report.sections.append((f"log of node {node.name} ({node.log_path})",
                                "\n".join(lines)))
