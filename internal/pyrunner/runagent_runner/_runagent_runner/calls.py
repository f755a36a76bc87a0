"""Calls: the Call of each CALL frame, dispatch (what the thread holding the
reading role does with the frames it read), the worker pool (leader/
followers) that runs sync calls, the event loop that runs async ones, and
how a call's answer (RESULT or ERROR) is made. Streams are in streams.py.

Module-level globals on the per-call paths are read as globals of this
module (never as another module's attributes): the loop, the flow limits,
ENTRYPOINTS and active. The data limits are set once at INIT (set_flow)."""

import collections
import functools
import json
import os
import select
import sys
import threading
import traceback

from .capture import CUR, flush_logs
from .encoding import structured_bytes
from .framing import (K_CALL, K_CANCEL, K_CREDIT, K_ERROR, K_INIT, K_PING, K_PONG, K_RESULT,
                      K_RESUME, flush, send_json_now, send_now)

# The kinds of callables (READY's entrypoints).
SYNC_FUNCTION = "sync_function"
ASYNC_FUNCTION = "async_function"
SYNC_GENERATOR = "sync_generator"
ASYNC_GENERATOR = "async_generator"

_json_loads = json.loads
_cur_set = CUR.set

# The folder of the runner (its __main__.py and this package): its frames are
# left out of the tracebacks the host gets.
_RUNNER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _describe(e):
    try:
        msg = str(e)
    except Exception:
        msg = "<unprintable %s>" % type(e).__name__
    return "%s: %s" % (type(e).__name__, msg) if msg else type(e).__name__


class Call:
    __slots__ = ("cid", "ep", "args", "kwargs", "cancelled", "task",
                 "cv", "credit_n", "credit_b", "fut")

    def __init__(self, cid, ep, args, kwargs):
        self.cid = cid
        self.ep = ep
        self.args = args
        self.kwargs = kwargs
        self.cancelled = False
        self.task = None
        self.cv = None  # a stream's flow control, once it starts (open_window)

    def open_window(self):
        """Start a stream's flow control: it may send the window's worth of
        chunks before the host credits it (no-op without flow control)."""
        if _window is not None and self.cv is None:
            self.credit_n, self.credit_b = _window
            self.fut = None
            self.cv = threading.Condition()

    def grant(self, n, b):
        """On the reading thread: the host credited n chunks of b bytes."""
        cv = self.cv
        if cv is None:
            return
        with cv:
            self.credit_n += n
            self.credit_b += b
            cv.notify()
            fut = self.fut
        if fut is not None:
            loop.call_soon_threadsafe(_wake, fut)

    def take_credit(self, size):
        """In a worker thread, before sending a chunk of size bytes: wait
        while the window is used up (the generator is not resumed meanwhile).
        False if the call was cancelled while it waited."""
        cv = self.cv
        if cv is None:
            return True
        with cv:
            while (self.credit_n <= 0 or self.credit_b <= 0) and not self.cancelled:
                cv.wait()
            self.credit_n -= 1
            self.credit_b -= size
        return not self.cancelled

    async def take_credit_async(self, size):
        """take_credit on the event loop (a cancelled task stops here)."""
        cv = self.cv
        if cv is None:
            return
        while True:
            with cv:
                if self.credit_n > 0 and self.credit_b > 0:
                    self.credit_n -= 1
                    self.credit_b -= size
                    self.fut = None
                    return
                fut = self.fut = loop.create_future()
            await fut


def _wake(fut):
    if not fut.done():
        fut.set_result(None)


# Data limits, from INIT's "flow" (None: unbounded, as without a host that
# asks): the largest RESULT and CHUNK bodies, and a stream's window.
_max_result = None
_max_chunk = None
_window = None  # (chunks, bytes) a stream may send before the host credits it


class DataLimitError(Exception):
    """A result or chunk larger than the host accepts (RESOURCE_LIMIT)."""


def _mib(n):
    return "%.1f MiB" % (n / 1048576.0) if n >= 1048576 else "%d bytes" % n


def _check_chunk(data, n):
    if _max_chunk is not None and len(data) > _max_chunk:
        raise DataLimitError(
            "chunk %d is %s, more than this server's limit of %s for one chunk "
            "(runagent server --max-chunk); yield smaller chunks" % (n, _mib(len(data)), _mib(_max_chunk)))


ENTRYPOINTS = {}   # tag -> Entrypoint
FAILED = {}        # tag -> error text
active = {}        # call id -> Call


# ---------------------------------------------------------------------------
# The event loop, started when needed
# ---------------------------------------------------------------------------

loop = None        # the event loop, once there is one (never replaced)
_aio = None        # the asyncio module, once the runner made the loop
_loop_lock = threading.Lock()
_loop_made = threading.Lock()  # released once the loop exists: main runs it
_loop_made.acquire()
_loop_set_in_main = False      # set_event_loop(loop) was done in the main thread


def _new_loop():
    """Make the loop once (any thread); the main thread then runs it.

    `import asyncio` costs several MiB (it loads ssl), so an idle runner only
    pays it when needed: at INIT if an entrypoint is async, or if the agent
    imports asyncio itself (then the loop is made right after asyncio is
    loaded, as if it had been set before the agent's import: see
    _AsyncioHook), or else when a sync call first returns an awaitable or an
    async iterable."""
    global loop, _aio, _loop_set_in_main
    with _loop_lock:
        if loop is not None:
            return loop
        import asyncio
        lp = asyncio.new_event_loop()
        if threading.current_thread() is threading.main_thread():
            asyncio.set_event_loop(lp)
            _loop_set_in_main = True
        _aio = asyncio
        loop = lp
        _loop_made.release()
        return lp


def _ensure_loop():
    lp = loop
    if lp is None:
        lp = _new_loop()
    return lp


class _LoopAfterExec:
    """The loader of asyncio while _AsyncioHook is active: loads it with the
    loader found for it, then makes the loop."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # get_source, is_package, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            _new_loop()
        except Exception:
            os.write(2, ("runagent runner: could not make the event loop:\n"
                         + traceback.format_exc()).encode())


class _AsyncioHook:
    """On sys.meta_path during INIT: when the agent imports asyncio, the
    runner's loop is made and set as the main thread's event loop right after
    asyncio is loaded, before the agent's code goes on, so an agent that calls
    asyncio.get_event_loop() at import time gets the loop the runner runs
    (as when the loop was made before the agent's import)."""

    def find_spec(self, name, path=None, target=None):
        if name != "asyncio":
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if getattr(loader, "exec_module", None) is None:
            return spec
        spec.loader = _LoopAfterExec(loader)
        return spec


def run_loop():
    """In the main thread: wait until there is a loop (made at INIT, or by
    the first call that needs one), then run it (never returns)."""
    _loop_made.acquire()
    if not _loop_set_in_main:
        _aio.set_event_loop(loop)
    loop.run_forever()


def _traceback(e):
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNNER_DIR):
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(e), e, tb))
    except Exception:
        return ""


MAX_ERROR_TEXT = 64 << 10  # characters of an error's message or traceback


def _bounded(text):
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return text[:MAX_ERROR_TEXT] + "... (%d characters cut)" % (len(text) - MAX_ERROR_TEXT)


def send_error(cid, e, code="INTERNAL_ERROR"):
    if isinstance(e, DataLimitError):
        code = "RESOURCE_LIMIT"
    try:
        msg = str(e)
    except Exception:
        msg = "<unprintable %s>" % type(e).__name__
    send_json_now(K_ERROR, cid, {"code": code, "type": type(e).__name__,
                             "message": _bounded(msg), "traceback": _bounded(_traceback(e))})


def send_fail(cid, code, type_name, message):
    send_json_now(K_ERROR, cid, {"code": code, "type": type_name,
                             "message": message, "traceback": ""})


def _is_async_result(r):
    t = type(r)
    return hasattr(t, "__await__") or hasattr(t, "__aiter__")


def _answer(c, r):
    """Extract and encode a call's result and send it (or why that failed),
    after the call's prints; a cancelled call sends nothing."""
    try:
        ext = c.ep.extract
        if ext is not None:
            r = ext(r)
        data = structured_bytes(r)
        if _max_result is not None and len(data) > _max_result:
            raise DataLimitError(
                "the result is %s, more than this server's limit of %s for one result "
                "(runagent server --max-result); return less, or stream it" % (_mib(len(data)), _mib(_max_result)))
    except BaseException as e:
        _answer_error(c, e)
        return
    flush_logs(c.cid)
    if not c.cancelled:
        send_now(K_RESULT, c.cid, data)


def _answer_error(c, e):
    flush_logs(c.cid)
    if not c.cancelled:
        send_error(c.cid, e)


def run_sync_call(c):
    """A non-stream call of a sync callable, in a worker thread."""
    cid = c.cid
    _cur_set(cid)
    handed_off = False
    try:
        r = c.ep.fn(*c.args, **c.kwargs)
        if hasattr(type(r), "__await__"):
            # a sync callable returning an awaitable: finish it on the loop
            handed_off = True
            _ensure_loop().call_soon_threadsafe(_start_task, c, run_async_call(c, r), r)
            return
    except BaseException as e:
        _answer_error(c, e)
    else:
        _answer(c, r)
    finally:
        if not handed_off:
            active.pop(cid, None)
        _cur_set(0)



def _start_task(c, coro, inner=None):
    """On the loop: start a call's task unless it was cancelled already."""
    if c.cancelled:
        coro.close()
        close = getattr(inner, "close", None)  # the agent's coroutine, if any
        if close is not None:
            try:
                close()
            except Exception:
                pass
        active.pop(c.cid, None)
        return
    c.task = loop.create_task(coro)


def _loop_ops(ops):
    """On the loop: start calls and cancel tasks, in the order they arrived."""
    for op, c in ops:
        if op:
            t = c.task
            if t is not None:
                t.cancel()
        else:
            _start_task(c, c.ep.run(c))


async def run_async_call(c, awaitable=None):
    cid = c.cid
    _cur_set(cid)
    try:
        if awaitable is None:
            r = await c.ep.fn(*c.args, **c.kwargs)
        else:
            r = await awaitable
    except BaseException as e:
        _answer_error(c, e)
    else:
        _answer(c, r)
    finally:
        active.pop(cid, None)


# ---------------------------------------------------------------------------
# Dispatch: what the thread holding the reading role does with frames
# ---------------------------------------------------------------------------

def _bad_call(cid, message):
    send_fail(cid, "VALIDATION_ERROR", "ValidationError", message)


def dispatch(batch):
    """On the thread holding the reading role: handle a batch of frames.
    Async calls and cancellations go to the loop, PING is answered; returns
    the sync calls to start (a list, or None)."""
    eps = ENTRYPOINTS
    loads = _json_loads
    ops = None
    sync = None
    for kind, cid, body in batch:
        if kind == K_CALL:
            try:
                msg = loads(body.decode("utf-8"))
                tag = msg["tag"]
                args = msg.get("args")
                kwargs = msg.get("kwargs")
                if args is None:
                    args = []
                if kwargs is None:
                    kwargs = {}
                if type(tag) is not str or type(args) is not list or type(kwargs) is not dict:
                    raise TypeError("tag must be a string, args a list and kwargs an object")
            except Exception as e:
                _bad_call(cid, "malformed CALL body: %s" % _describe(e))
                continue
            ep = eps.get(tag)
            if ep is None:
                if tag in FAILED:
                    send_fail(cid, "NOT_FOUND", "LookupError",
                              "Entrypoint %s failed to load: %s" % (tag, FAILED[tag]))
                else:
                    send_fail(cid, "NOT_FOUND", "LookupError",
                              "Entrypoint %s not found" % tag)
                continue
            c = Call(cid, ep, args, kwargs)
            active[cid] = c
            if ep.on_loop:
                if ops is None:
                    ops = []
                ops.append((0, c))
            elif sync is None:
                sync = [c]
            else:
                sync.append(c)
        elif kind == K_CANCEL:
            c = active.get(cid)
            if c is not None:
                c.cancelled = True
                cv = c.cv
                if cv is not None:
                    with cv:
                        cv.notify_all()  # a stream waiting for credit stops
                if ops is None:
                    ops = []
                ops.append((1, c))
        elif kind == K_CREDIT:
            c = active.get(cid)
            if c is not None:
                try:
                    g = loads(body.decode("ascii"))
                    c.grant(int(g["chunks"]), int(g["bytes"]))
                except Exception as e:
                    os.write(2, ("runagent runner: bad CREDIT frame: %s\n" % _describe(e)).encode())
        elif kind == K_PING:
            send_now(K_PONG, cid, b"")
        elif kind == K_RESUME:
            from .startup import resume  # loaded already: it started the runner
            resume()
        elif kind == K_INIT:
            os.write(2, b"runagent runner: ignoring a second INIT frame\n")
        else:
            os.write(2, ("runagent runner: ignoring a frame of kind %d\n" % kind).encode())
    if ops is not None:
        lp = loop
        # No loop yet: ops are only cancellations (calls of async entrypoints
        # exist only with a loop), and no task exists to cancel. A sync call
        # that hands an awaitable to a loop started after this sees
        # c.cancelled in _start_task.
        if lp is not None:
            lp.call_soon_threadsafe(_loop_ops, ops)
    return sync


def _end_of_stream():
    try:
        flush_logs(0)
        flush()
    finally:
        os._exit(0)


# ---------------------------------------------------------------------------
# Workers: leader/followers
# ---------------------------------------------------------------------------

_LEAD = object()  # a worker's message: take the reading role


class Pool:
    """Worker threads that take turns reading the stream (leader/followers).

    Exactly one thread, the leader, holds the reading role: it waits in
    recv() and dispatches what arrives. Sync calls it reads go to `pending`;
    if one may start, the leader runs it on its own thread, in one of two
    ways:

    * lending (the call is the only one pending, and select.epoll exists):
      the leader arms a one-shot epoll watch of the stream and runs the call
      while keeping the role. If the host sends anything before the call
      ends, the standby thread (blocked on that epoll) wakes, takes the role
      away and hands it to an idle worker, which reads on; the lender then
      finishes its call as an ordinary worker. Otherwise the lender disarms
      the watch and goes back to recv(). A lone call is so read, run and
      answered by one thread with no other thread woken.
    * hand-off (several calls pending): the leader first gives the role to
      an idle worker (waking it, or starting a thread), then runs the call.

    A worker that finishes a call takes the next pending one before going
    idle (LIFO, so warm threads are reused). Pending calls must not wait
    behind a slow call: while calls are pending and fewer than `size` run,
    the leader waits for input at most HELP_MS; if in that time no pending
    call was started (the running ones are slow or blocked), it hands each
    pending call to a worker of its own. Fast calls thus run back to back on
    few threads (few wake-ups), slow ones still get up to `size` threads.

    At most `size` sync calls run at once. Besides the standby thread, the
    pool holds up to size + 1 workers, so one is always left to read: a slow
    or blocking function never stops PING, CANCEL or other calls from being
    read."""

    HELP_MS = 1

    def __init__(self, size, reader):
        self.size = max(1, size)    # sync calls running at most at once
        self.threads = 0            # workers started, at most size + 1
        self.running = 0            # sync calls started and not finished
        self.started = 0            # calls started so far (progress)
        self.idle = []              # [wake lock, message] of idle workers
        self.pending = collections.deque()  # calls waiting for a worker
        self.lock = threading.Lock()
        self.reader = reader
        self.lent = False           # the leader runs a call, keeping the role
        self.ep = None
        epoll = getattr(select, "epoll", None)
        if epoll is not None:
            try:
                self.ep = epoll()
                self.fd = reader.sock.fileno()
                # Disarmed is EPOLLONESHOT alone: epoll reports a hang-up
                # even then, but only once, never in a loop.
                oneshot = select.EPOLLONESHOT
                self.ep.register(self.fd, oneshot)
                self._arm = functools.partial(
                    self.ep.modify, self.fd, select.EPOLLIN | oneshot)
                self._disarm = functools.partial(self.ep.modify, self.fd, oneshot)
            except OSError:
                self.ep = None

    def start(self):
        with self.lock:
            self.threads = 1
        self._spawn(_LEAD, 1)
        if self.ep is not None:
            threading.Thread(target=self._standby, name="runagent-standby",
                             daemon=True).start()

    def _spawn(self, msg, n):
        t = threading.Thread(target=self._main, args=(msg,),
                             name="runagent-worker-%d" % n, daemon=True)
        t.start()

    def _assign(self, msg):
        """Under self.lock: pick a thread for msg; returns what _deliver
        needs outside the lock."""
        if self.idle:
            slot = self.idle.pop()
            slot[1] = msg
            return slot, msg, 0
        self.threads += 1
        return None, msg, self.threads

    def _deliver(self, to):
        for slot, msg, n in to:
            if slot is not None:
                slot[0].release()
            else:
                self._spawn(msg, n)

    def _main(self, msg):
        wake = threading.Lock()
        wake.acquire()
        slot = [wake, None]
        lock = self.lock
        pending = self.pending
        idle = self.idle
        while True:
            if msg is _LEAD:
                msg = self._lead()
            if msg is not None:
                _run(msg)
            # msg is None: the call was run by _lead, which lost the role
            with lock:
                if pending:
                    msg = pending.popleft()
                    self.started += 1
                    continue
                self.running -= 1
                idle.append(slot)
            wake.acquire()
            msg = slot[1]
            slot[1] = None

    def _standby(self):
        """Takes the reading role from a lender when the host sends while
        the lender's call runs; gives it to an idle worker."""
        poll = self.ep.poll
        lock = self.lock
        while True:
            try:
                if not poll():
                    continue
            except InterruptedError:
                continue
            with lock:
                if not self.lent:
                    continue  # the lender took the role back already
                self.lent = False
                to = self._assign(_LEAD)
            self._deliver((to,))

    def _lead(self):
        """Hold the reading role until this thread is to run a sync call
        without it: returns the call to run (the role handed on already), or
        None when this thread lent the role, ran a call and lost the role."""
        read = self.reader.read
        pending = self.pending
        lock = self.lock
        lending = self.ep is not None
        help_ms = self.HELP_MS
        try:
            while True:
                if pending and self.running < self.size:
                    seen = self.started
                    batch = read(help_ms)
                    if not batch:
                        if batch is None:
                            break
                        if self.started == seen:
                            self._help()
                        continue
                else:
                    batch = read()
                    if batch is None:
                        break
                sync = dispatch(batch)
                if sync is None:
                    continue
                with lock:
                    for c in sync:
                        if c.cancelled:
                            active.pop(c.cid, None)
                        else:
                            pending.append(c)
                    if not pending or self.running >= self.size:
                        continue
                    c = pending.popleft()
                    self.running += 1
                    self.started += 1
                    if pending or not lending:
                        to = self._assign(_LEAD)
                    else:
                        to = None
                        self.lent = True
                if to is not None:
                    self._deliver((to,))
                    return c
                self._arm()
                _run(c)
                with lock:
                    if not self.lent:
                        return None  # the standby took the role meanwhile
                    self.lent = False
                    self.running -= 1
                self._disarm()
        except BaseException:
            os.write(2, ("runagent runner: reader failed:\n" + traceback.format_exc()).encode())
            os._exit(1)
        _end_of_stream()

    def _help(self):
        """Pending calls made no progress: give each a worker of its own."""
        to = []
        with self.lock:
            pending = self.pending
            while pending and self.running < self.size:
                self.running += 1
                self.started += 1
                to.append(self._assign(pending.popleft()))
        if to:
            self._deliver(to)


def _run(c):
    if c.cancelled:  # cancelled while it waited: never started
        active.pop(c.cid, None)
        return
    try:
        c.ep.run(c)
    except BaseException:
        pass




def set_flow(flow):
    """INIT's "flow": {"max_result", "max_chunk", "window_chunks",
    "window_bytes"} (bytes; 0 or missing: no bound)."""
    global _max_result, _max_chunk, _window
    if not isinstance(flow, dict):
        return

    def bound(k):
        v = flow.get(k)
        return v if isinstance(v, int) and v > 0 else None
    _max_result, _max_chunk = bound("max_result"), bound("max_chunk")
    wn, wb = bound("window_chunks"), bound("window_bytes")
    if wn and wb:
        _window = (wn, wb)
