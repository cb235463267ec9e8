"""The streaming part of feature extraction: the prefetching iterator keeps order, errors and early exits."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from smartvlm_jax import features
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


def test_row_writer_and_memmapped_cache(tmp_path):
    """Rows written out of order, shard by shard, land at their rows of one .npy per field; the finished
    cache is read-only memmaps; float16 storage holds float16(the float32 values); a missing row fails."""
    rng = np.random.default_rng(0)
    text = rng.normal(size=(10, 5, 1100)).astype(np.float32)  # rows of 22 KB: read_rows' madvise path
    labels = np.arange(10, dtype=np.int32) * 3
    order = np.asarray([3, 9, 0, 4, 1, 8, 2, 7, 6, 5])
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        out.mkdir()
        writer = features.RowWriter(out, 10, np.dtype(dtype))
        for shard, rows in enumerate((order[:4], order[4:8], order[8:])):
            writer.write(rows, {"text": text[rows], "labels": labels[rows]})
            writer.mark(shard, [rows])
        assert sorted(p.name for p in out.iterdir()) == [
            "labels.partial.npy",
            "shard_00000.npy",
            "shard_00001.npy",
            "shard_00002.npy",
            "text.partial.npy",
        ]
        writer.finalize()
        cache = features.load_split(out)
        assert sorted(p.name for p in out.iterdir()) == ["done.json", "labels.npy", "text.npy"]
        assert all(isinstance(v, np.memmap) and v.mode == "r" for v in cache.values())
        np.testing.assert_array_equal(cache["labels"], labels)
        np.testing.assert_array_equal(cache["text"], text.astype(dtype))
        assert cache["text"].dtype == dtype
        rows = np.asarray([7, 2, 2, 9])
        np.testing.assert_array_equal(features.read_rows(cache["text"], rows), text[rows].astype(dtype))
        features.release(cache)  # drops the mapped pages; the values read back the same
        np.testing.assert_array_equal(cache["labels"], labels)

    out = tmp_path / "missing"
    out.mkdir()
    writer = features.RowWriter(out, 10, np.dtype("float32"))
    writer.write(order[:9], {"labels": labels[order[:9]]})
    writer.mark(0, [order[:9]])
    with pytest.raises(RuntimeError, match="each of the 10 rows exactly once"):
        writer.finalize()
