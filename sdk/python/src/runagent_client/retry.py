"""Retry policy, identical to the Go SDK's (sdk/go/retry.go).

Only these failures are retried: a connection failure before any response
arrived, HTTP 429 (RATE_LIMIT_EXCEEDED) and 503 (OVERLOADED) -- also on the
WebSocket handshake and as a stream error frame with that code. A stream is
retried only while no data frame has arrived; never after.

The wait before retry n (n = 1, 2, ...) is drawn uniformly from
[0, min(max_backoff, initial_backoff * 2**(n-1))] ("full jitter"), and is at
least the server's Retry-After. No retry is made when that wait would end
after max_elapsed from the call's start or after the call's deadline; the
last error is raised instead (with its retry_after).
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from .errors import RunAgentError

DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_INITIAL_BACKOFF = 0.2
DEFAULT_MAX_BACKOFF = 5.0
DEFAULT_MAX_ELAPSED = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds the retries of a call. Zero fields mean the defaults (4
    attempts, 0.2 s, 5 s, 30 s). ``max_attempts`` 1 or < 0: no retry;
    ``max_elapsed`` < 0: no time bound. Times are seconds."""

    max_attempts: int = 0
    initial_backoff: float = 0.0
    max_backoff: float = 0.0
    max_elapsed: float = 0.0

    def normalized(self) -> "RetryPolicy":
        ma = self.max_attempts
        if ma == 0:
            ma = DEFAULT_MAX_ATTEMPTS
        elif ma < 0:
            ma = 1
        ib = self.initial_backoff if self.initial_backoff > 0 else DEFAULT_INITIAL_BACKOFF
        mb = self.max_backoff if self.max_backoff > 0 else DEFAULT_MAX_BACKOFF
        mb = max(mb, ib)
        me = self.max_elapsed if self.max_elapsed != 0 else DEFAULT_MAX_ELAPSED
        return RetryPolicy(ma, ib, mb, me)


NO_RETRY = RetryPolicy(max_attempts=1)


class Clock:
    """Time source of the retry loop; tests replace it (no real waiting)."""

    def __init__(self, now: Optional[Callable[[], float]] = None,
                 sleep: Optional[Callable[[float], None]] = None,
                 async_sleep: Optional[Callable[[float], Awaitable[None]]] = None,
                 rand: Optional[Callable[[float, float], float]] = None) -> None:
        self.now = now or time.monotonic
        self.sleep = sleep or time.sleep
        self.async_sleep = async_sleep or asyncio.sleep
        self.rand = rand or random.uniform


class Retrier:
    """Tracks the attempts of one call."""

    def __init__(self, policy: RetryPolicy, clock: Clock, deadline: Optional[float] = None) -> None:
        self.p = policy.normalized()
        self.clock = clock
        self.start = clock.now()
        self.deadline = deadline
        self.attempts = 0

    def backoff(self) -> float:
        """The jittered wait after ``self.attempts`` attempts."""
        cap = min(self.p.max_backoff, self.p.initial_backoff * (2 ** min(self.attempts - 1, 62)))
        if cap <= 0:
            return 0.0
        return self.clock.rand(0.0, cap)

    def next_wait(self, e: RunAgentError) -> Optional[float]:
        """Called after a failed attempt: the time to wait before retrying,
        or None when ``e`` must be raised."""
        self.attempts += 1
        if not getattr(e, "retryable", False) or self.attempts >= self.p.max_attempts:
            return None
        d = self.backoff()
        if e.retry_after is not None and e.retry_after > d:
            d = e.retry_after
        end = self.clock.now() + d
        if self.p.max_elapsed > 0 and end - self.start > self.p.max_elapsed:
            return None
        if self.deadline is not None and end > self.deadline:
            return None
        return d

    def wait(self, e: RunAgentError) -> None:
        d = self.next_wait(e)
        if d is None:
            raise e
        self.clock.sleep(d)

    async def async_wait(self, e: RunAgentError) -> None:
        d = self.next_wait(e)
        if d is None:
            raise e
        await self.clock.async_sleep(d)
