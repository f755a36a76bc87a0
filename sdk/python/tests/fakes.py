"""Test doubles: a fake clock (no real waiting)."""
import asyncio


class FakeClock:
    """now() advances only by the sleeps; rand returns the cap (the
    worst case of full jitter) unless told otherwise."""

    def __init__(self, rand=None):
        self.t = 1000.0
        self.sleeps = []
        self._rand = rand

    def now(self):
        return self.t

    def sleep(self, d):
        self.sleeps.append(d)
        self.t += d

    async def async_sleep(self, d):
        self.sleeps.append(d)
        self.t += d
        await asyncio.sleep(0)

    def rand(self, lo, hi):
        return hi if self._rand is None else self._rand(lo, hi)

    def clock(self):
        from runagent_client import Clock
        return Clock(now=self.now, sleep=self.sleep, async_sleep=self.async_sleep, rand=self.rand)
