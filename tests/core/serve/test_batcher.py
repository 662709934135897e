"""DynamicBatcher's window: a lone item waits the whole window unless ``quiet_gap_ms`` is set,
and a steady stream of arrivals keeps one batch open however short the gap."""

from __future__ import annotations

import asyncio
import time

import pytest

from core.errors import ConfigError
from core.serve import ServeConfig
from core.serve.batcher import DynamicBatcher


def _run(coro):
    return asyncio.run(coro)


async def _lone_item_latency(**kw) -> float:
    sizes: list[int] = []
    b = DynamicBatcher(lambda items: sizes.append(len(items)) or items, 32, **kw)
    await b.start()
    try:
        t = time.perf_counter()
        assert await b.submit(["x"]) == ["x"]
        return time.perf_counter() - t
    finally:
        await b.stop()


def test_without_a_quiet_gap_a_lone_item_waits_the_whole_window():
    assert _run(_lone_item_latency(max_queue_delay_ms=300.0)) >= 0.28


def test_a_quiet_gap_sends_a_lone_item_early():
    assert _run(_lone_item_latency(max_queue_delay_ms=300.0, quiet_gap_ms=10.0)) < 0.2


async def _stream(every_s: float, n: int, **kw) -> list[int]:
    """``n`` single-item requests, one every ``every_s``; the batch sizes the model saw."""
    sizes: list[int] = []
    b = DynamicBatcher(lambda items: sizes.append(len(items)) or items, 64, **kw)
    await b.start()
    try:
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(b.submit([i])))
            await asyncio.sleep(every_s)
        assert [r[0] for r in await asyncio.gather(*tasks)] == list(range(n))
    finally:
        await b.stop()
    return sizes


def test_arrivals_closer_than_the_gap_share_one_batch():
    # 10 items 5 ms apart (45 ms in all) inside a 1 s window and a 100 ms gap: one batch
    assert _run(_stream(0.005, 10, max_queue_delay_ms=1000.0, quiet_gap_ms=100.0)) == [10]


def test_arrivals_farther_apart_than_the_gap_go_alone():
    # 200 ms apart against a 20 ms gap: each item is sent before the next arrives
    sizes = _run(_stream(0.2, 3, max_queue_delay_ms=1000.0, quiet_gap_ms=20.0))
    assert sizes == [1, 1, 1]


def test_a_negative_quiet_gap_is_refused():
    with pytest.raises(ConfigError, match="quiet_gap_ms must be >= 0"):
        ServeConfig(quiet_gap_ms=-1.0)
