"""Output capture: the agent's sys.stdout and sys.stderr, line-buffered per
call and sent as LOG frames. The call a thread serves is a context variable
(CUR), also carried into the threads and thread-pool work the agent starts
during a call."""

import contextvars
import io
import os
import sys
import threading

from .framing import K_LOG, send_json

CUR = contextvars.ContextVar("runagent_call", default=0)
_cur_get = CUR.get
_cur_set = CUR.set
_current_thread = threading.current_thread


def current_call():
    c = _cur_get()
    if c:
        return c
    return getattr(_current_thread(), "_runagent_call", 0)


class _BinaryCapture(io.RawIOBase):
    def __init__(self, text):
        self._text = text

    def writable(self):
        return True

    def write(self, b):
        self._text.write(bytes(b).decode("utf-8", "replace"))
        return len(b)

    def flush(self):
        self._text.flush()


class Capture(io.TextIOBase):
    """Replaces sys.stdout / sys.stderr: line-buffered per call, sent as LOG."""

    MAX_LINE = 64 << 10

    def __init__(self, stream, fd):
        self._stream = stream
        self._fd = fd
        self._bufs = {}
        self._lock = threading.Lock()
        self._buffer = _BinaryCapture(self)

    @property
    def name(self):
        return "<runagent %s>" % self._stream

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "strict"

    @property
    def buffer(self):
        return self._buffer

    @property
    def line_buffering(self):
        return True

    def readable(self):
        return False

    def writable(self):
        return True

    def seekable(self):
        return False

    def isatty(self):
        return False

    def fileno(self):
        return self._fd  # the real descriptor: a pipe the host reads

    def close(self):
        pass  # never let the agent close it

    def reconfigure(self, *args, **kwargs):
        pass

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        if not s:
            return 0
        cid = current_call()
        with self._lock:
            bufs = self._bufs
            prev = bufs.get(cid)
            text = prev + s if prev else s
            i = text.rfind("\n")
            if i < 0:
                if len(text) < self.MAX_LINE:
                    bufs[cid] = text
                    return len(s)
                out, rest = text, ""
            else:
                out, rest = text[:i + 1], text[i + 1:]
            if rest:
                bufs[cid] = rest
            elif prev is not None:
                del bufs[cid]
        _emit_log(cid, self._stream, out)
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        self.flush_call(current_call())

    def flush_call(self, cid):
        if not self._bufs:
            return
        with self._lock:
            out = self._bufs.pop(cid, None)
        if out:
            _emit_log(cid, self._stream, out)


def _emit_log(cid, stream, text):
    if not _live:
        os.write(2, text.encode("utf-8", "replace"))
        return
    # One huge print becomes several LOG frames of bounded size.
    step = Capture.MAX_LINE
    for i in range(0, len(text), step):
        send_json(K_LOG, cid, {"stream": stream, "text": text[i:i + step]})


_live = False  # install() was called: LOG frames can be sent
_stdout = None
_stderr = None


def flush_logs(cid):
    """Send what call cid printed and did not end with a newline yet."""
    if _stdout._bufs:
        _stdout.flush_call(cid)
    if _stderr._bufs:
        _stderr.flush_call(cid)


def install():
    """Capture sys.stdout and sys.stderr (once the writer exists)."""
    global _stdout, _stderr, _live
    _stdout = Capture("stdout", 1)
    _stderr = Capture("stderr", 2)
    sys.stdout = _stdout
    sys.stderr = _stderr
    _live = True

    # Threads the agent starts inside a call print on behalf of that call.
    orig_start = threading.Thread.start

    def start(self):
        c = current_call()
        if c:
            self._runagent_call = c
        return orig_start(self)
    start.__doc__ = orig_start.__doc__
    threading.Thread.start = start

    # So does work the agent submits to a thread pool (run_in_executor too).
    from concurrent.futures import thread as cf_thread
    orig_submit = cf_thread.ThreadPoolExecutor.submit

    def submit(self, fn, *args, **kwargs):
        c = current_call()
        if c:
            inner = fn

            def fn(*a, **k):
                token = _cur_set(c)
                try:
                    return inner(*a, **k)
                finally:
                    CUR.reset(token)
        return orig_submit(self, fn, *args, **kwargs)
    submit.__doc__ = orig_submit.__doc__
    cf_thread.ThreadPoolExecutor.submit = submit
