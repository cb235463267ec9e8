"""The streaming part of feature extraction: the prefetching iterator keeps order, errors and early exits."""

from __future__ import annotations

import threading
import time

import pytest

from smartvlm_jax.features import prefetch


def test_prefetch_keeps_order_and_runs_ahead():
    produced: list[int] = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    it = prefetch(items(), size=2)
    assert next(it) == 0
    time.sleep(0.3)  # the producer fills the buffer while the consumer "computes"
    assert len(produced) >= 3
    assert [0, *it] == list(range(10))


def test_prefetch_reraises_producer_error_and_stops_on_early_exit():
    def failing():
        yield 1
        raise OSError("bad image")

    with pytest.raises(OSError, match="bad image"):
        list(prefetch(failing()))

    def endless():
        i = 0
        while True:
            yield i
            i += 1

    it = prefetch(endless(), size=1)
    assert next(it) == 0
    it.close()  # consumer leaves: the producer thread must end, not block on the full buffer
    deadline = time.time() + 5
    while time.time() < deadline and any(t.name == "feature-prefetch" for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.name == "feature-prefetch" for t in threading.enumerate())
