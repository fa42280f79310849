"""The rate limiter both limits share: the bucket's arithmetic on a fake clock, and its
waiters woken by a change of rate on the loop and in threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from lanspreadd.core.ratelimit import MAX_RATE, TokenBucket, check_rate
from lanspreadd.net.ratelimit import RateLimiter
from tests.support import FakeClock

CHUNK = 4 << 20


def test_one_request_goes_at_once_and_the_rest_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(CHUNK, clock)  # one chunk a second
    assert bucket.delay_for(CHUNK) == 0.0  # the burst: one request
    assert [bucket.delay_for(CHUNK) for _ in range(3)] == pytest.approx([1.0, 2.0, 3.0])
    clock.advance(10)
    # Idle time earns no credit beyond one request.
    assert bucket.delay_for(CHUNK) == 0.0
    assert bucket.delay_for(CHUNK) == pytest.approx(1.0)


def test_over_any_stretch_at_most_rate_times_seconds_plus_one_request() -> None:
    clock = FakeClock()
    rate = 1000
    bucket = TokenBucket(rate, clock)
    sizes = [300, 700, 50, 1000, 250, 900, 10, 600] * 5
    moved: list[tuple[float, int]] = []  # when each request may go, and its size
    for size in sizes:
        moved.append((clock() + bucket.delay_for(size), size))
        clock.advance(0.05)
    for i, (start, _) in enumerate(moved):
        for end, _ in moved[i:]:
            in_window = sum(s for t, s in moved if start <= t <= end)
            assert in_window <= rate * (end - start) + max(sizes) + 1e-6


def test_a_new_rate_applies_to_what_is_owed() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, clock)
    bucket.reserve(1000)
    ticket = bucket.reserve(1000)
    assert bucket.wait_time(ticket) == pytest.approx(10.0)
    clock.advance(5)  # half of the first 1000 bytes is paid for
    bucket.rate = 1000
    assert bucket.wait_time(ticket) == pytest.approx(0.5)
    bucket.rate = 0  # unlimited: nothing is owed
    assert bucket.wait_time(ticket) == 0.0
    assert bucket.wait_time(bucket.reserve(1 << 40)) == 0.0


def test_bytes_refunded_are_not_waited_for() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, clock)
    bucket.reserve(100)
    bucket.reserve(1000)  # a transfer that is cancelled before it moves
    ticket = bucket.reserve(100)
    assert bucket.wait_time(ticket) == pytest.approx(11.0)
    bucket.refund(1000)
    assert bucket.wait_time(ticket) == pytest.approx(1.0)


def test_rates_are_checked() -> None:
    assert check_rate(0) is None
    assert check_rate(MAX_RATE) is None
    assert "negative" in (check_rate(-1) or "")
    assert "largest" in (check_rate(MAX_RATE + 1) or "")


def test_raising_the_rate_wakes_waiting_transfers_at_once() -> None:
    async def body() -> None:
        limiter = RateLimiter(1, clock=FakeClock())  # a byte a second: no chunk would go
        await limiter.take(CHUNK)  # the burst
        waiting = [asyncio.create_task(limiter.take(CHUNK)) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)  # they run up to their wait
        assert not any(task.done() for task in waiting)
        limiter.rate = 0
        async with asyncio.timeout(10):
            await asyncio.gather(*waiting)

    asyncio.run(body())


def test_a_cancelled_transfer_gives_its_bytes_back() -> None:
    async def body() -> None:
        clock = FakeClock()
        limiter = RateLimiter(CHUNK, clock=clock)
        await limiter.take(CHUNK)
        first = asyncio.create_task(limiter.take(10 * CHUNK))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # Only the burst is owed, not the cancelled transfer's ten chunks, and only
        # the burst counts as moved (what the mesh reads a download's rate from).
        assert limiter.bucket.delay_for(CHUNK) == pytest.approx(1.0)
        assert limiter.moved == CHUNK

    asyncio.run(body())


def test_a_thread_that_received_waits_until_paid_or_cancelled() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock)
    cancel = threading.Event()
    done = threading.Event()

    def receive() -> None:
        limiter.took(CHUNK, cancel)  # paid for only after CHUNK seconds
        done.set()

    thread = threading.Thread(target=receive)
    thread.start()
    assert not done.wait(0.3)  # still waiting (a fake clock never pays)
    cancel.set()
    thread.join(10)
    assert done.is_set()
    assert limiter.moved == CHUNK  # received, whether paid for or cancelled

    cancel.clear()
    limiter.rate = 0
    limiter.took(CHUNK, cancel)  # unlimited: no wait at all
