"""The showcase agent: one entrypoint per shape of function RunAgent serves.

Every tag is described in README.md. Nothing here needs a network or a key.
"""

import asyncio
import datetime
import math
import os
import time

from showcase_data import Agent, Point

# --- one result ------------------------------------------------------------


def echo(*args, **kwargs):
    """Sync: return the positional and keyword arguments as received."""
    return {"args": list(args), "kwargs": kwargs}


async def add(a, b):
    """Async: return a + b, after yielding to the event loop once."""
    await asyncio.sleep(0)
    return a + b


def greet(name="world", lang="en"):
    """Sync, with an extractor in the config: the answer is reduced to
    {"text": ..., "lang": ...} by JSONPath."""
    words = {"en": "Hello", "fr": "Bonjour", "de": "Hallo", "es": "Hola"}
    return {
        "greeting": {"text": f"{words.get(lang, 'Hello')}, {name}!", "length": len(name)},
        "meta": {"lang": lang, "generated_by": "showcase"},
    }


def rich():
    """Return values that need conversion on the wire: datetime, date, time,
    set, tuple, dataclass, NaN, infinities, bytes, None and non-ASCII text."""
    return {
        "datetime": datetime.datetime(2025, 6, 25, 13, 42, 3),
        "date": datetime.date(2025, 6, 25),
        "time": datetime.time(13, 42, 3),
        "set": {3, 1, 2},
        "tuple": (1, "two", 3.0),
        "point": Point(1, 2, tags=["a", "b"]),
        "nan": math.nan,
        "inf": math.inf,
        "neg_inf": -math.inf,
        "bytes": b"\x00\x01\xfe\xff",
        "none": None,
        "text": "héllo wörld ✓ 日本",
    }


def fail(message="something went wrong"):
    """Raise ValueError(message)."""
    raise ValueError(message)


def slow(seconds=5):
    """Sync: sleep, then return how long it slept. For timeout tests."""
    seconds = float(seconds)
    time.sleep(seconds)
    return {"slept": seconds}


async def slow_async(seconds=5):
    """Async: sleep without blocking the event loop, then return."""
    seconds = float(seconds)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def getenv(name):
    """Return the environment variable name, or None."""
    return os.environ.get(name)


def crash(code=1):
    """Kill the whole agent process at once (no cleanup, no exception)."""
    print("crash: exiting the process", flush=True)
    os._exit(int(code))


app = Agent("showcase")  # module "app.invoke": a method of an object


# --- streams ---------------------------------------------------------------


def count_stream(n=5, delay=0.0):
    """Sync generator: yield {"i": 0} .. {"i": n-1}."""
    for i in range(int(n)):
        if delay:
            time.sleep(float(delay))
        yield {"i": i}


async def count_async_stream(n=5, delay=0.0):
    """Async generator: yield 0 .. n-1."""
    for i in range(int(n)):
        await asyncio.sleep(float(delay))
        yield i


def list_stream(*items):
    """Sync function returning an iterable (a list, not a generator)."""
    return list(items) or ["a", "b", "c"]


async def list_async_stream(*items):
    """Async function returning an iterable (a tuple)."""
    await asyncio.sleep(0)
    return tuple(items) or ("a", "b", "c")


def fail_stream(after=2):
    """Sync generator: yield `after` chunks, then raise RuntimeError."""
    for i in range(int(after)):
        yield f"chunk {i}"
    raise RuntimeError(f"failed after {after} chunks")


def _record(path, line):
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def tick_stream(path="", n=1000, interval=0.1):
    """Sync generator of n ticks, interval seconds apart. Appends to the file
    at path: "started" first, then in its finally "completed N" when all were
    sent or "cancelled N" when the stream was closed early (N chunks were
    yielded by then)."""
    sent, status = 0, "cancelled"
    _record(path, "started")
    try:
        for i in range(int(n)):
            sent = i + 1  # counted when handed out: a close at this yield is after N chunks
            yield {"tick": i}
            time.sleep(float(interval))
        status = "completed"
    finally:
        _record(path, f"{status} {sent}")


async def tick_async_stream(path="", n=1000, interval=0.1):
    """Async generator twin of tick_stream, with the same file protocol."""
    sent, status = 0, "cancelled"
    _record(path, "started")
    try:
        for i in range(int(n)):
            sent = i + 1
            yield {"tick": i}
            await asyncio.sleep(float(interval))
        status = "completed"
    finally:
        _record(path, f"{status} {sent}")
