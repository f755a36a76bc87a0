"""Streams: the iteration of a stream call (a tag ending in _stream), a sync
one in its worker thread, an async one on the event loop, each chunk
encoded, bounded and sent within the stream's window (flow control:
Call.take_credit)."""

import json

from .calls import (ASYNC_GENERATOR, _check_chunk, _ensure_loop, _is_async_result, _start_task,
                    active, send_error)
from .capture import CUR, flush_logs
from .encoding import chunk_bytes
from .framing import K_CHUNK, K_CHUNK_ERROR, K_END, send, send_json_now, send_now

_json_dumps = json.dumps  # ASCII output: always encodable
_cur_set = CUR.set


def run_sync_stream(c):
    """A stream call of a sync generator or sync callable returning an
    iterable, iterated in a worker thread."""
    cid = c.cid
    ep = c.ep
    ext = ep.extract
    _cur_set(cid)
    handed_off = False
    it = None
    ok = False
    n = 0
    try:
        try:
            r = ep.fn(*c.args, **c.kwargs)
            if _is_async_result(r):
                handed_off = True
                _ensure_loop().call_soon_threadsafe(
                    _start_task, c, run_async_stream(c, r), r)
                return
            it = iter(r)
            c.open_window()
            for chunk in it:
                if c.cancelled:
                    break
                if ext is not None:
                    chunk = ext(chunk)
                n += 1
                try:
                    data = chunk_bytes(chunk, n)
                except Exception as e:
                    data = _json_dumps({"message": str(e)}).encode("ascii")
                    if not c.take_credit(len(data)):
                        break
                    send(K_CHUNK_ERROR, cid, data)
                else:
                    _check_chunk(data, n)
                    if not c.take_credit(len(data)):
                        break
                    if n == 1:
                        send_now(K_CHUNK, cid, data)  # the first chunk at once
                    else:
                        send(K_CHUNK, cid, data)
            else:
                ok = True
        finally:
            if not ok and it is not None:
                close = getattr(it, "close", None)
                if close is not None:
                    close()  # runs the generator's finally
    except BaseException as e:
        if not handed_off:
            flush_logs(cid)
            if not c.cancelled:
                send_error(cid, e)
    else:
        if not handed_off:
            flush_logs(cid)
            if ok and not c.cancelled:
                send_json_now(K_END, cid, {"chunks": n})
    finally:
        if not handed_off:
            active.pop(cid, None)
        _cur_set(0)



_sleep = None  # asyncio.sleep, once a stream ran on the loop


def _get_sleep():
    global _sleep
    import asyncio  # on the loop: loaded already
    _sleep = asyncio.sleep
    return _sleep


async def _send_chunk_async(c, chunk, n):
    """Encode and send a stream's n-th chunk from the loop, within its window."""
    cid = c.cid
    try:
        data = chunk_bytes(chunk, n)
    except Exception as e:
        data = _json_dumps({"message": str(e)}).encode("ascii")
        await c.take_credit_async(len(data))
        send(K_CHUNK_ERROR, cid, data)
        return
    _check_chunk(data, n)
    await c.take_credit_async(len(data))
    if n == 1:
        send_now(K_CHUNK, cid, data)  # the first chunk at once
    else:
        send(K_CHUNK, cid, data)


async def run_async_stream(c, source=None):
    cid = c.cid
    ep = c.ep
    ext = ep.extract
    _cur_set(cid)
    it = None
    ok = False
    n = 0
    sleep = _sleep
    if sleep is None:
        sleep = _get_sleep()
    try:
        try:
            if source is None:
                if ep.kind == ASYNC_GENERATOR:
                    source = ep.fn(*c.args, **c.kwargs)
                else:
                    source = await ep.fn(*c.args, **c.kwargs)
            elif hasattr(type(source), "__await__"):
                source = await source
            c.open_window()
            if hasattr(type(source), "__aiter__"):
                it = source.__aiter__()
                anext_ = type(it).__anext__
                while True:
                    try:
                        chunk = await anext_(it)
                    except StopAsyncIteration:
                        break
                    if ext is not None:
                        chunk = ext(chunk)
                    n += 1
                    await _send_chunk_async(c, chunk, n)
                    await sleep(0)
            else:
                # an async function returning a (sync) iterable: iterated on
                # the loop, as the original does
                it = iter(source)
                for chunk in it:
                    if ext is not None:
                        chunk = ext(chunk)
                    n += 1
                    await _send_chunk_async(c, chunk, n)
                    await sleep(0)
            ok = True
        finally:
            if not ok and it is not None:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    await aclose()  # runs the async generator's finally
                else:
                    close = getattr(it, "close", None)
                    if close is not None:
                        close()
    except BaseException as e:
        flush_logs(cid)
        if not c.cancelled:
            send_error(cid, e)
    else:
        flush_logs(cid)
        if not c.cancelled:
            send_json_now(K_END, cid, {"chunks": n})
    finally:
        active.pop(cid, None)

