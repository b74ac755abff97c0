"""Waiting in tests for what a cluster does on its own (an agent's repair, a
failover): poll a check until it holds or a time limit passes. The limit is
how long a test gives up after, never a figure the test asserts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """The first truthy result of check(); pytest.fail("<what> within <timeout>s") after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f}s")
        time.sleep(interval)
