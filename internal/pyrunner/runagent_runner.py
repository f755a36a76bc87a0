"""RunAgent Python runner: serves one agent's entrypoints to the Go host.

Standard library only, Python 3.9+. Embedded in the Go binary and started as
``python3 -u -X utf8 runagent_runner.py --fd 3`` (or ``--connect unix:/path``).
The protocol is described in docs/runner-protocol.md; values are encoded
exactly like the original RunAgent 0.1.49 server (testdata/serializer/vectors.json).

Threads (see Pool and Writer):
  * workers (up to INIT.threads + 1, started on demand) take turns holding
    the reading role (leader/followers): the leader reads frames, parses CALL
    bodies, answers PING, hands async work to the event loop, and runs a sync
    call it read on its own thread, after handing the role on (or, for a lone
    call, while a standby thread watches the stream to take the role over if
    the host sends more before the call ends);
  * standby: blocked on an epoll of the stream while a lone call runs;
  * the main thread runs the one asyncio event loop all agent async code uses,
    started only when needed (see _new_loop): an agent whose entrypoints are
    all sync, and which does not import asyncio itself, never loads asyncio;
  * writer: sends what producers queue (stream chunks, LOGs, and final frames
    while another thread is writing) in few, large sends; a final frame is
    otherwise written by the thread that produced it.
"""

import collections
import contextvars
import dataclasses
import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import io
import json
import math
import os
import platform
import select
import socket
import struct
import sys
import threading
import traceback
import types
from datetime import date, datetime, time

PROTOCOL = 1
MAX_FRAME = 256 << 20

# Frame kinds, host -> runner.
K_INIT, K_CALL, K_CANCEL, K_PING = 1, 2, 3, 4
# RESUME: the instance was restored from a snapshot taken after READY (the
# microvm sandbox); state every copy of the snapshot shares is made its own.
K_RESUME = 5
# CREDIT: the host took some of a stream's chunks; the stream may send that
# many more (flow control, see _flow and Call.take_credit).
K_CREDIT = 6
# Frame kinds, runner -> host.
K_READY, K_RESULT, K_CHUNK, K_END, K_ERROR, K_CHUNK_ERROR, K_LOG, K_PONG = (
    10, 11, 12, 13, 14, 15, 16, 17)

PACKAGE = "_runagent_agent"
_THIS_FILE = os.path.abspath(__file__)

_HEADER = struct.Struct(">IBI")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from

_json_loads = json.loads
_json_dumps = json.dumps  # ASCII output: always encodable


# ---------------------------------------------------------------------------
# Value encoding, byte-compatible with runagent.utils.serializer.CoreSerializer
# (serialize_object_to_structured) and AgentWebSocketHandler.
# _convert_chunk_to_serializable of RunAgent 0.1.49.
# ---------------------------------------------------------------------------

def _json_fallback(obj):
    """CoreSerializer._json_serializer_fallback."""
    try:
        if hasattr(obj, "__dataclass_fields__"):
            return dataclasses.asdict(obj)
        elif hasattr(obj, "model_dump"):
            return obj.model_dump()
        elif hasattr(obj, "dict"):
            return obj.dict()
        elif hasattr(obj, "__dict__"):
            return obj.__dict__
        else:
            return str(obj)
    except Exception:
        return "<Unserializable %s>" % type(obj).__name__


# json.dumps(x, ensure_ascii=False, allow_nan=False, default=fallback) builds
# exactly this encoder for every call; building it once gives the same bytes.
_encode_payload = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, default=_json_fallback).encode
# What json.dumps(str, ensure_ascii=False) does to a str.
_encode_str = json.encoder.encode_basestring
_isnan = math.isnan
_isinf = math.isinf


def determine_type(obj):
    """CoreSerializer._determine_type."""
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    if isinstance(obj, int):
        return "integer"
    if isinstance(obj, float):
        return "number"
    if isinstance(obj, str):
        return "string"
    if isinstance(obj, (list, tuple, set)):
        return "array"
    if isinstance(obj, dict):
        return "object"
    if (hasattr(obj, "to_dict") or hasattr(obj, "model_dump")
            or hasattr(obj, "dict") or hasattr(obj, "__dict__")):
        return "object"
    return "string"


def prepare(obj):
    """CoreSerializer._prepare_for_serialization."""
    if obj is None:
        return None
    if isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        if _isnan(obj):
            return None
        elif _isinf(obj):
            return str(obj)
        return obj
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, time):
        return obj.isoformat()
    if isinstance(obj, set):
        return list(obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    if hasattr(obj, "to_dict") and callable(getattr(obj, "to_dict")):
        try:
            return obj.to_dict()
        except Exception:
            pass
    if hasattr(obj, "model_dump"):
        try:
            return obj.model_dump()
        except Exception:
            pass
    if hasattr(obj, "dict"):
        try:
            return obj.dict()
        except Exception:
            pass
    if isinstance(obj, (list, tuple)):
        return [prepare(item) for item in obj]
    if isinstance(obj, dict):
        return {k: prepare(v) for k, v in obj.items()}
    return obj


def _prepare_list(obj):
    # prepare() for an exact list: same result, without the attribute probes
    # a list never passes.
    out = []
    append = out.append
    for v in obj:
        t = type(v)
        if t is str or t is int or v is None or t is bool:
            append(v)
        elif t is float:
            append(None if v != v else (str(v) if v in _INFS else v))
        elif t is dict:
            append(_prepare_dict(v))
        elif t is list:
            append(_prepare_list(v))
        else:
            append(prepare(v))
    return out


def _prepare_dict(obj):
    out = {}
    for k, v in obj.items():
        t = type(v)
        if t is str or t is int or v is None or t is bool:
            out[k] = v
        elif t is float:
            out[k] = None if v != v else (str(v) if v in _INFS else v)
        elif t is dict:
            out[k] = _prepare_dict(v)
        elif t is list:
            out[k] = _prepare_list(v)
        else:
            out[k] = prepare(v)
    return out


_INFS = (float("inf"), float("-inf"))


def _error_structured(exc, obj):
    payload = _json_dumps({
        "error": "Serialization Error: %s" % (exc,),
        "original_type": str(type(obj)),
    })
    return '{"type": "object", "payload": ' + _encode_str(payload) + "}"


def structured(obj):
    """serialize_object_to_structured(obj) as a str."""
    return structured_bytes(obj).decode("utf-8")


def structured_bytes(obj):
    """serialize_object_to_structured(obj), UTF-8 encoded.

    The original checks the payload's size with payload.encode('utf-8'), which
    raises for lone surrogates and so turns them into the error fallback; the
    encode we need anyway for the frame reproduces that.
    """
    try:
        t = type(obj)
        # Fast paths for exact builtin types: same result as the general path.
        if t is str:
            kind = "string"
            payload = _encode_str(obj)
        elif t is dict:
            kind = "object"
            payload = _encode_payload(_prepare_dict(obj))
        elif t is int:
            kind = "integer"
            payload = _encode_payload(obj)
        elif t is list:
            kind = "array"
            payload = _encode_payload(_prepare_list(obj))
        elif obj is None:
            return b'{"type": "null", "payload": "null"}'
        elif t is bool:
            return (b'{"type": "boolean", "payload": "true"}' if obj
                    else b'{"type": "boolean", "payload": "false"}')
        else:
            kind = determine_type(obj)
            payload = _encode_payload(prepare(obj))
        s = '{"type": "' + kind + '", "payload": ' + _encode_str(payload) + "}"
        try:
            return s.encode("utf-8")
        except UnicodeEncodeError:
            payload.encode("utf-8")  # raises the error the original reports
            raise
    except Exception as exc:
        return _error_structured(exc, obj).encode("utf-8")


def convert_chunk(chunk):
    """AgentWebSocketHandler._convert_chunk_to_serializable."""
    if isinstance(chunk, (str, int, float, bool, type(None))):
        return chunk
    if isinstance(chunk, (list, tuple)):
        return [convert_chunk(item) for item in chunk]
    if isinstance(chunk, dict):
        return {k: convert_chunk(v) for k, v in chunk.items()}
    if hasattr(chunk, "dict") and callable(chunk.dict):
        try:
            return chunk.dict()
        except Exception:
            pass
    if hasattr(chunk, "model_dump") and callable(chunk.model_dump):
        try:
            return chunk.model_dump()
        except Exception:
            pass
    if hasattr(chunk, "__dict__"):
        try:
            return {k: convert_chunk(v) for k, v in chunk.__dict__.items()
                    if not k.startswith("_")}
        except Exception:
            pass
    try:
        chunk_str = str(chunk)
        if chunk_str and chunk_str != "<%s object at 0x" % type(chunk).__name__:
            return chunk_str
    except Exception:
        pass
    return {"type": type(chunk).__name__, "repr": repr(chunk)[:200]}


def chunk_bytes(chunk, number):
    """What the original's stream loop sends for the number-th chunk."""
    try:
        conv = convert_chunk(chunk)
    except Exception as conv_error:
        conv = {
            "chunk_number": number,
            "conversion_error": str(conv_error),
            "chunk_type": str(type(chunk)),
            "chunk_str": str(chunk)[:200],
        }
    return structured_bytes(conv)


def structured_chunk(chunk):
    """The structured string of a stream chunk (chunk conversion first)."""
    return chunk_bytes(chunk, 1).decode("utf-8")


# ---------------------------------------------------------------------------
# Extractor: runagent.utils.response (to_dict + jsonpath_ng 1.7.0 first match),
# with a small JSONPath subset compiled at INIT.
# ---------------------------------------------------------------------------

def to_dict(obj):
    """runagent.utils.response.to_dict."""
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        try:
            return obj.model_dump()
        except Exception:
            return obj
    if hasattr(obj, "dict"):
        try:
            return obj.dict()
        except Exception:
            return obj
    if hasattr(obj, "__dataclass_fields__"):
        try:
            return dataclasses.asdict(obj)
        except Exception:
            return obj
    if hasattr(obj, "_asdict"):
        try:
            return obj._asdict()
        except Exception:
            return obj
    if hasattr(obj, "__dict__"):
        try:
            return obj.__dict__
        except Exception:
            return obj
    try:
        return json.loads(json.dumps(obj, default=str))
    except Exception:
        return obj


class JSONPathError(ValueError):
    pass


_NOT_SET = object()
_ID_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_@")
_ID_CHARS = _ID_START | frozenset("0123456789-")
_DIGITS = frozenset("0123456789")


def _tokenize(expr):
    """Tokens of jsonpath_ng's lexer: ('id', str), ('num', int), ('..',), or a
    one-character literal."""
    toks = []
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch in " \t\n":
            i += 1
        elif expr.startswith("..", i):
            toks.append(("..", None))
            i += 2
        elif ch in _ID_START:
            j = i + 1
            while j < n and expr[j] in _ID_CHARS:
                j += 1
            word = expr[i:j]
            if word in ("where", "wherenot"):
                raise JSONPathError("the `%s` operator is not supported" % word)
            toks.append(("id", word))
            i = j
        elif ch in _DIGITS or (ch == "-" and i + 1 < n and expr[i + 1] in _DIGITS):
            j = i + 1
            while j < n and expr[j] in _DIGITS:
                j += 1
            toks.append(("num", int(expr[i:j])))
            i = j
        elif ch in "'\"":
            j = i + 1
            out = []
            while True:
                if j >= n:
                    raise JSONPathError("unterminated quoted name at position %d" % i)
                c = expr[j]
                if c == "\\":
                    if j + 1 >= n:
                        raise JSONPathError("unterminated quoted name at position %d" % i)
                    out.append(expr[j + 1])
                    j += 2
                elif c == ch:
                    j += 1
                    break
                else:
                    out.append(c)
                    j += 1
            toks.append(("id", "".join(out)))
            i = j
        elif ch in "$.[]*,:":
            toks.append((ch, None))
            i += 1
        elif ch in "()|&~`":
            raise JSONPathError("%r is not supported (only $, .name, ['name'], [n], "
                                "[*], [a:b], .*, ..name, [a,b])" % ch)
        else:
            raise JSONPathError("unexpected character %r at position %d" % (ch, i))
    return toks


def compile_jsonpath(expr):
    """Compile the supported subset of jsonpath_ng syntax into a list of steps.

    Steps: ("fields", names), ("all",), ("index", n), ("slice", a, b, c),
    ("desc", step). A path without a leading ``$`` starts at the root, as in
    jsonpath_ng.
    """
    if not isinstance(expr, str):
        raise JSONPathError("a JSONPath must be a string, not %s" % type(expr).__name__)
    toks = _tokenize(expr)
    if not toks:
        raise JSONPathError("empty JSONPath")
    steps = []
    pos = 0

    def peek(k=0):
        return toks[pos + k][0] if pos + k < len(toks) else None

    def bracket():
        # after '[': idx | '*' | fields | slice, then ']'
        nonlocal pos
        kind = peek()
        if kind == "*" and peek(1) == "]":
            pos += 2
            return ("slice", None, None, None)
        if kind == "id":
            names = [toks[pos][1]]
            pos += 1
            while peek() == ",":
                if peek(1) != "id":
                    raise JSONPathError("expected a name after ',' in %r" % expr)
                names.append(toks[pos + 1][1])
                pos += 2
            if peek() != "]":
                raise JSONPathError("expected ']' in %r" % expr)
            pos += 1
            return ("fields", tuple(names))
        if kind == "num" and peek(1) == "]":
            n = toks[pos][1]
            pos += 2
            return ("index", n)
        # slice: maybe_int ':' maybe_int [':' maybe_int]
        parts = [None]
        while True:
            k = peek()
            if k == "num":
                if parts[-1] is not None:
                    raise JSONPathError("bad slice in %r" % expr)
                parts[-1] = toks[pos][1]
                pos += 1
            elif k == ":":
                if len(parts) == 3:
                    raise JSONPathError("bad slice in %r" % expr)
                parts.append(None)
                pos += 1
            elif k == "]":
                pos += 1
                break
            else:
                raise JSONPathError("unsupported bracket expression in %r" % expr)
        if len(parts) == 1:
            raise JSONPathError("empty brackets in %r" % expr)
        return ("slice",) + tuple(parts) + (None,) * (3 - len(parts))

    def simple():
        # a name, a number used as a name, '*', or a bracket expression
        nonlocal pos
        kind = peek()
        if kind == "id":
            pos += 1
            return ("fields", (toks[pos - 1][1],))
        if kind == "num":
            pos += 1
            return ("fields", (str(toks[pos - 1][1]),))
        if kind == "*":
            pos += 1
            return ("all",)
        if kind == "[":
            pos += 1
            return bracket()
        raise JSONPathError("expected a name, '*' or '[' in %r" % expr)

    if peek() == "$":
        pos = 1
    else:
        steps.append(simple())
    while pos < len(toks):
        kind = peek()
        if kind == ".":
            pos += 1
            steps.append(simple())
        elif kind == "..":
            pos += 1
            steps.append(("desc", simple()))
        elif kind == "[":
            pos += 1
            steps.append(bracket())
        else:
            raise JSONPathError("unexpected %r in %r" % (toks[pos][1] if toks[pos][1] is not None
                                                         else kind, expr))
    return steps


def _find_step(step, value, out):
    """Append what jsonpath_ng's node for step finds in value to out."""
    op = step[0]
    if op == "fields":
        for name in step[1]:
            try:
                v = value.get(name, _NOT_SET)
            except (TypeError, AttributeError):
                continue
            if v is not _NOT_SET:
                out.append(v)
    elif op == "all":
        try:
            names = tuple(value.keys())
        except AttributeError:
            names = ()
        for name in names:
            try:
                v = value.get(name, _NOT_SET)
            except (TypeError, AttributeError):
                continue
            if v is not _NOT_SET:
                out.append(v)
    elif op == "index":
        i = step[1]
        if value and len(value) > i:
            out.append(value[i])
    elif op == "slice":
        if not value:
            return
        if isinstance(value, (dict, int, str)):
            value = [value]
        _, a, b, c = step
        if a is None and b is None and c is None:
            idx = range(0, len(value))
        else:
            idx = range(0, len(value))[a:b:c]
        for i in idx:
            out.append(value[i])
    else:  # desc
        right = step[1]

        def rec(v):
            _find_step(right, v, out)
            if isinstance(v, list):
                for item in v:
                    rec(item)
            elif isinstance(v, dict):
                for k in v.keys():
                    rec(v[k])
        rec(value)


def jsonpath_find(steps, data):
    """All matches of a compiled path, in jsonpath_ng's order."""
    cur = [data]
    for step in steps:
        nxt = []
        for v in cur:
            _find_step(step, v, nxt)
        cur = nxt
    return cur


def compile_extractor(extractor):
    """A function applying an extractor ({key: jsonpath} or [[key, jsonpath]]),
    or None when there is none."""
    if not extractor:
        return None
    if isinstance(extractor, dict):
        items = list(extractor.items())
    elif isinstance(extractor, list):
        items = []
        for pair in extractor:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise JSONPathError("extractor pairs must be [key, jsonpath]")
            items.append((pair[0], pair[1]))
    else:
        raise JSONPathError("extractor must be an object of key -> JSONPath")
    compiled = []
    for key, expr in items:
        if not isinstance(key, str):
            raise JSONPathError("extractor keys must be strings")
        try:
            compiled.append((key, compile_jsonpath(expr)))
        except JSONPathError as e:
            raise JSONPathError("extractor %r: invalid JSONPath %r: %s" % (key, expr, e))

    def extract(data):
        d = to_dict(data)
        res = {}
        for key, steps in compiled:
            m = jsonpath_find(steps, d)
            res[key] = m[0] if m else None
        return res
    return extract


# ---------------------------------------------------------------------------
# Frame output: any thread queues frames; the writer thread sends them.
# ---------------------------------------------------------------------------

class Writer:
    """Frames from any thread reach the socket in one of two ways:

    * send_now (final frames, PONG, a stream's first chunk): when no other
      thread is writing, the producing thread writes itself, together with
      anything queued, in one non-blocking send; no other thread is woken.
      What the socket does not take at once goes to the front of the queue
      for the writer thread, so a producer never blocks on a slow host.
    * send (chunks after the first, LOGs) and send_now when another thread is
      writing: the frame goes to a list and a writer thread sends whatever
      has accumulated in one sendall, so a busy runner makes few, large
      writes. (The module-level send_now also queues while sync calls wait
      in the pool.)

    Frames of one call keep their order: send_now writes only while holding
    the write lock, and everything queued before it goes first."""

    HIGH_WATER = 4096  # queued frames past which producers send themselves

    def __init__(self, sock):
        self.sock = sock
        self.pending = []
        self.qlock = threading.Lock()   # guards pending
        self.wlock = threading.Lock()   # held while sending
        self.wake = threading.Lock()    # released to wake the writer thread
        self.wake.acquire()
        t = threading.Thread(target=self._run, name="runagent-writer", daemon=True)
        t.start()

    def send(self, kind, call, body):
        self.send_frame(_pack_header(len(body) + 5, kind, call) + body)

    def send_now(self, kind, call, body):
        frame = _pack_header(len(body) + 5, kind, call) + body
        wlock = self.wlock
        if not wlock.acquire(False):
            # another thread is writing: it (or the writer thread) sends ours
            self.send_frame(frame)
            return
        try:
            with self.qlock:
                batch = self.pending
                if batch:
                    self.pending = []
                    batch.append(frame)
                    data = b"".join(batch)
                else:
                    data = frame
            try:
                sent = _send_nowait(self.sock, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                os._exit(0)  # the host is gone
            if sent < len(data):
                # the socket is full: the writer thread sends the rest first
                with self.qlock:
                    self.pending.insert(0, data[sent:])
                try:
                    self.wake.release()
                except RuntimeError:
                    pass
        finally:
            wlock.release()

    def send_frame(self, frame):
        with self.qlock:
            pending = self.pending
            pending.append(frame)
            n = len(pending)
        if n == 1:
            # pending was empty: the writer may be asleep
            try:
                self.wake.release()
            except RuntimeError:
                pass  # already awake
        elif n > self.HIGH_WATER:
            self.flush()  # back-pressure: wait for the socket ourselves

    def flush(self):
        with self.wlock:
            self._drain()

    def _drain(self):
        qlock = self.qlock
        sendall = self.sock.sendall
        try:
            while True:
                with qlock:
                    batch = self.pending
                    if not batch:
                        return
                    self.pending = []
                sendall(batch[0] if len(batch) == 1 else b"".join(batch))
        except OSError:
            os._exit(0)  # the host is gone

    def _run(self):
        wake = self.wake
        wlock = self.wlock
        while True:
            wake.acquire()
            with wlock:
                self._drain()


_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _send_nowait(sock, data):
    if _MSG_DONTWAIT:
        return sock.send(data, _MSG_DONTWAIT)
    sock.sendall(data)  # no non-blocking flag on this platform
    return len(data)


_writer = None


def send(kind, call, body):
    _writer.send(kind, call, body)


def send_now(kind, call, body):
    """A frame someone waits for (final frame, PONG, first chunk): written at
    once by this thread unless sync calls wait in the pool. Under such a
    backlog the writer thread's batching is cheaper (per-call sends made the
    runner alone about half as fast at 256 calls in flight: the GIL bounced between
    the thread sending and the one reading)."""
    if _backlog:
        _writer.send(kind, call, body)
    else:
        _writer.send_now(kind, call, body)


def send_json(kind, call, obj):
    _writer.send(kind, call, _json_dumps(obj).encode("ascii"))


def send_json_now(kind, call, obj):
    send_now(kind, call, _json_dumps(obj).encode("ascii"))


_backlog = ()  # the pool's pending calls: while there are some, frames are queued


# ---------------------------------------------------------------------------
# stdout / stderr capture
# ---------------------------------------------------------------------------

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
    if _writer is None:
        os.write(2, text.encode("utf-8", "replace"))
        return
    # One huge print becomes several LOG frames of bounded size.
    step = Capture.MAX_LINE
    for i in range(0, len(text), step):
        send_json(K_LOG, cid, {"stream": stream, "text": text[i:i + step]})


_stdout = None
_stderr = None


def flush_logs(cid):
    if _stdout._bufs:
        _stdout.flush_call(cid)
    if _stderr._bufs:
        _stderr.flush_call(cid)


def _install_capture():
    global _stdout, _stderr
    _stdout = Capture("stdout", 1)
    _stderr = Capture("stderr", 2)
    sys.stdout = _stdout
    sys.stderr = _stderr

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


# ---------------------------------------------------------------------------
# Entrypoints
# ---------------------------------------------------------------------------

SYNC_FUNCTION = "sync_function"
ASYNC_FUNCTION = "async_function"
SYNC_GENERATOR = "sync_generator"
ASYNC_GENERATOR = "async_generator"


def _describe(e):
    try:
        msg = str(e)
    except Exception:
        msg = "<unprintable %s>" % type(e).__name__
    return "%s: %s" % (type(e).__name__, msg) if msg else type(e).__name__


def classify(obj):
    if not callable(obj):
        raise TypeError("%s object is not callable" % type(obj).__name__)
    for f in _candidates(obj):
        if inspect.isasyncgenfunction(f):
            return ASYNC_GENERATOR
        if inspect.iscoroutinefunction(f):
            return ASYNC_FUNCTION
        if inspect.isgeneratorfunction(f):
            return SYNC_GENERATOR
    return SYNC_FUNCTION


def _candidates(obj):
    seen = 0
    while obj is not None and seen < 8:
        seen += 1
        yield obj
        if isinstance(obj, functools.partial):
            obj = obj.func
            continue
        if inspect.ismethod(obj):
            obj = obj.__func__
            continue
        if inspect.isfunction(obj) or inspect.isbuiltin(obj) or isinstance(obj, type):
            return
        # a callable instance: look at its __call__
        call = getattr(type(obj), "__call__", None)
        if call is None or isinstance(call, (types.WrapperDescriptorType,
                                             types.MethodWrapperType)):
            return
        obj = call


class Entrypoint:
    __slots__ = ("tag", "fn", "kind", "stream", "extract", "on_loop", "run")

    def __init__(self, tag, fn, kind, extract):
        self.tag = tag
        self.fn = fn
        self.kind = kind
        self.stream = tag.endswith("_stream")
        self.extract = extract
        self.on_loop = kind in (ASYNC_FUNCTION, ASYNC_GENERATOR) and (
            self.stream or kind == ASYNC_FUNCTION)
        if self.on_loop:
            self.run = run_async_stream if self.stream else run_async_call
        else:
            self.run = run_sync_stream if self.stream else run_sync_call


class Importer:
    """Loads entrypoint files as modules of a synthetic package rooted at the
    agent folder, so relative and absolute sibling imports both work."""

    def __init__(self, agent_dir):
        self.agent_dir = agent_dir
        self.modules = {}   # path -> module or exception
        self.outside = 0
        pkg = types.ModuleType(PACKAGE)
        pkg.__path__ = [agent_dir]
        pkg.__package__ = PACKAGE
        pkg.__file__ = None
        pkg.__spec__ = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        pkg.__spec__.submodule_search_locations = [agent_dir]
        sys.modules[PACKAGE] = pkg

    def load(self, file):
        path = os.path.normpath(os.path.join(self.agent_dir, file))
        got = self.modules.get(path)
        if got is None:
            try:
                got = self._load(path)
            except BaseException as e:  # noqa: a SystemExit at import is an error too
                got = e
            self.modules[path] = got
        if isinstance(got, BaseException):
            raise got
        return got

    def _load(self, path):
        if not os.path.isfile(path):
            raise FileNotFoundError("Entry point file not found: %s" % path)
        if not path.endswith(".py"):
            raise ValueError("Entry point must be a Python file: %s" % path)
        rel = os.path.relpath(path, self.agent_dir)
        parts = rel[:-3].split(os.sep)
        if parts[0] == os.pardir or any(not p or "." in p for p in parts):
            # outside the agent folder, or not importable by name
            self.outside += 1
            return self._exec_file("_runagent_entry_%d" % self.outside, path, None)
        if parts[-1] == "__init__":
            parts.pop()
        if not parts:
            # the agent folder's own __init__.py
            return self._exec_file(PACKAGE, path, [self.agent_dir])
        name = PACKAGE + "." + ".".join(parts)
        if len(parts) > 1:
            importlib.import_module(PACKAGE + "." + ".".join(parts[:-1]))
        if name in sys.modules:
            return sys.modules[name]
        if os.path.basename(path) == "__init__.py":
            return importlib.import_module(name)
        return self._exec_file(name, path, None)

    def _exec_file(self, name, path, search):
        spec = importlib.util.spec_from_file_location(
            name, path, submodule_search_locations=search)
        if spec is None or spec.loader is None:
            raise ImportError("Could not create a module spec for %s" % path)
        module = importlib.util.module_from_spec(spec)
        old = sys.modules.get(name)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            if old is not None:
                sys.modules[name] = old
            else:
                sys.modules.pop(name, None)
            raise
        parent, _, child = name.rpartition(".")
        if parent and parent in sys.modules:
            setattr(sys.modules[parent], child, module)
        return module


def resolve(module, attr_path, file):
    """generic.py _entrypoint_resolver: split at the first dot, then getattr."""
    if not isinstance(attr_path, str) or not attr_path:
        raise ValueError("entrypoint module must be a non-empty attribute path")
    primary, _, secondary = attr_path.partition(".")
    if not hasattr(module, primary):
        available = [n for n in dir(module) if not n.startswith("_")]
        raise AttributeError("Object '%s' not found in %s. Available objects: %s"
                             % (primary, file, available))
    obj = getattr(module, primary)
    if secondary:
        for attr in secondary.split("."):
            obj = getattr(obj, attr)
    return obj


# ---------------------------------------------------------------------------
# Calls
# ---------------------------------------------------------------------------

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


def _traceback(e):
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == _THIS_FILE:
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
    sleep = _aio.sleep  # on the loop: asyncio is loaded
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


# ---------------------------------------------------------------------------
# Reading frames
# ---------------------------------------------------------------------------

def _parse_frames(src, out):
    """Append the complete frames at the start of src to out; return how many
    bytes they took."""
    pos = 0
    size = len(src)
    unpack = _unpack_header
    while size - pos >= 9:
        n, kind, cid = unpack(src, pos)
        if n < 5 or n > MAX_FRAME:
            os.write(2, ("runagent runner: bad frame length %d, exiting\n" % n).encode())
            os._exit(2)
        end = pos + 4 + n
        if end > size:
            break
        out.append((kind, cid, src[pos + 9:end]))
        pos = end
    return pos


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()  # bytes not yet handed out
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            self._readable = poller.poll
        else:
            self._readable = lambda ms: select.select([sock], [], [], ms / 1000.0)[0]

    def read(self, timeout=None):
        """The next frames as a list of (kind, call, body), waiting for at
        least one; None at the end of the stream; [] when timeout (ms) passed
        with nothing to read. Only the thread holding the reading role calls
        it."""
        buf = self.buf
        if buf:
            out = []
            del buf[:_parse_frames(buf, out)]
            if out:
                return out
        recv = self.sock.recv
        while True:
            if timeout is not None:
                try:
                    if not self._readable(timeout):
                        return []
                except InterruptedError:
                    continue
            try:
                data = recv(1 << 18)
            except InterruptedError:
                continue
            except OSError:
                return None
            if not data:
                return None
            out = []
            if buf:
                buf += data
                del buf[:_parse_frames(buf, out)]
            else:
                pos = _parse_frames(data, out)
                if pos < len(data):
                    buf += data[pos:]
            if out:
                return out


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
            _resume()
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
        _stdout.flush_call(0)
        _stderr.flush_call(0)
        _writer.flush()
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


_pool = None


# ---------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------

def _apply_limits(limits):
    """Kernel-enforced per-process limits, set before the agent is imported
    so that it cannot raise them again (raising a hard limit needs a
    capability the runner does not have in a sandbox)."""
    import resource
    cpu = limits.get("cpu_seconds")
    if isinstance(cpu, (int, float)) and cpu > 0:
        # SIGXCPU at the limit, SIGKILL one second later if it is ignored.
        # The limit is the agent's: on top of what starting the runner took
        # (over a second in an emulated microVM).
        ru = resource.getrusage(resource.RUSAGE_SELF)
        soft = max(1, int(-(-(cpu + ru.ru_utime + ru.ru_stime) // 1)))
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    nofile = limits.get("open_files")
    if isinstance(nofile, int) and nofile > 0:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY:
            nofile = min(nofile, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _set_flow(flow):
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


def do_init(body):
    init = _json_loads(body.decode("utf-8"))
    if not isinstance(init, dict):
        raise ValueError("INIT body must be a JSON object")
    agent_dir = os.path.abspath(init.get("agent_dir") or os.getcwd())
    env = init.get("env") or {}
    for k, v in env.items():
        os.environ[str(k)] = str(v)
    os.chdir(agent_dir)
    _apply_limits(init.get("limits") or {})
    _set_flow(init.get("flow"))
    threads = init.get("threads") or 0
    if not isinstance(threads, int) or threads <= 0:
        threads = min(32, (os.cpu_count() or 1) + 4)

    entries = init.get("entrypoints") or []
    # Entry files' folders first, then the agent folder (the original's order).
    dirs = []
    for e in entries:
        f = e.get("file") if isinstance(e, dict) else None
        if isinstance(f, str) and f:
            d = os.path.dirname(os.path.normpath(os.path.join(agent_dir, f)))
            if d not in dirs:
                dirs.append(d)
    if agent_dir not in dirs:
        dirs.append(agent_dir)
    for d in reversed(dirs):
        if d in sys.path:
            sys.path.remove(d)
        sys.path.insert(0, d)

    importer = Importer(agent_dir)
    hook = None
    if "asyncio" in sys.modules:
        _new_loop()  # loaded already (sitecustomize?): the loop is set now
    else:
        hook = _AsyncioHook()
        sys.meta_path.insert(0, hook)
    try:
        kinds = _load_entrypoints(entries, importer, agent_dir)
    finally:
        if hook is not None:
            try:
                sys.meta_path.remove(hook)
            except ValueError:
                pass
    if loop is None and any(k in (ASYNC_FUNCTION, ASYNC_GENERATOR)
                            for k in kinds.values()):
        _new_loop()
    _stdout.flush_call(0)
    _stderr.flush_call(0)
    return threads, {
        "protocol": PROTOCOL,
        "python": platform.python_version(),
        "pid": os.getpid(),
        "entrypoints": kinds,
        "errors": dict(FAILED),
    }


def _load_entrypoints(entries, importer, agent_dir):
    kinds = {}
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("tag"), str):
            continue
        tag = e["tag"]
        try:
            extract = compile_extractor(e.get("extractor"))
            if e.get("webhook_url"):
                if tag.endswith("_stream"):
                    raise ValueError("webhook entrypoints answer once; a _stream tag cannot be a webhook")
                fn, kind = webhook(e), SYNC_FUNCTION
            else:
                file = e.get("file")
                if not isinstance(file, str) or not file:
                    raise ValueError("entrypoint %r has no file" % tag)
                module = importer.load(file)
                fn = resolve(module, e.get("module"), os.path.join(agent_dir, file))
                kind = classify(fn)
        except BaseException as exc:  # noqa: report, keep serving the others
            FAILED[tag] = _describe(exc)[:8192]
            continue
        ENTRYPOINTS[tag] = Entrypoint(tag, fn, kind, extract)
        kinds[tag] = kind
    return kinds


def webhook(e):
    """A webhook entrypoint (framework n8n) as a sync function, like the
    original's N8NExecutor: the single positional argument, or the keyword
    argument payload, is sent as the JSON body; the JSON answer is the result.
    urllib is imported here, so agents without webhooks never load it."""
    import urllib.error
    import urllib.request

    url = e["webhook_url"]
    method = str(e.get("method") or "post").lower()
    timeout = e.get("timeout") or 30

    def call_webhook(*input_args, **input_kwargs):
        if len(input_args) > 1:
            raise ValueError("Too many positional arguments. Expected at most 1.")
        if input_args and input_kwargs:
            raise ValueError("Cannot specify both positional and keyword arguments.")
        if len(input_kwargs) > 1 or (input_kwargs and "payload" not in input_kwargs):
            raise ValueError("Only 'payload' keyword argument is allowed.")
        payload = input_args[0] if input_args else input_kwargs.get("payload")
        if method == "post":
            req = urllib.request.Request(url, method="POST", data=json.dumps(payload).encode("utf-8"),
                                         headers={"Content-Type": "application/json"})
        else:
            req = urllib.request.Request(url, method="GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            kind = "Client" if err.code < 500 else "Server"
            raise RuntimeError("%s error '%d %s' for url '%s'" % (kind, err.code, err.reason, url)) from None
        return json.loads(body)

    call_webhook.__name__ = "webhook"
    return call_webhook


def _resume():
    """Every instance restored from one snapshot starts with the same
    memory: reseed the random module's generator (the guest kernel's was
    reseeded by the host before this frame), so that instances do not draw
    the same numbers."""
    import random
    random.seed()


class _DeviceStream:
    """The channel as a character device (a virtio serial port in a
    microVM) behind the few socket methods the runner uses."""

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def recv(self, n):
        return os.read(self.fd, n)

    def send(self, data, flags=0):
        return os.write(self.fd, data)

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def set_inheritable(self, v):
        os.set_inheritable(self.fd, v)

    def setblocking(self, v):
        os.set_blocking(self.fd, v)


def _open_stream(argv):
    fd = None
    target = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--fd" and i + 1 < len(argv):
            fd = int(argv[i + 1])
            i += 2
        elif a.startswith("--fd="):
            fd = int(a[5:])
            i += 1
        elif a == "--connect" and i + 1 < len(argv):
            target = argv[i + 1]
            i += 2
        elif a.startswith("--connect="):
            target = a[10:]
            i += 1
        else:
            raise SystemExit("runagent runner: unknown argument %r\n"
                             "usage: runagent_runner.py --fd N | --connect unix:/path" % a)
    if fd == 0:
        # The channel came in as standard input (runsc passes only stdio):
        # move it off fd 0, so that an agent reading stdin reads nothing
        # rather than protocol frames.
        fd = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    if fd is not None:
        import stat
        if stat.S_ISCHR(os.fstat(fd).st_mode):
            sock = _DeviceStream(fd)
        else:
            sock = socket.socket(fileno=fd)
    elif target is not None and target.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(target[5:])
    elif target is not None and target.startswith("tcp:"):
        host, _, port = target[4:].rpartition(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        raise SystemExit("usage: runagent_runner.py --fd N | --connect unix:/path")
    sock.set_inheritable(False)  # agent subprocesses must not hold the stream
    sock.setblocking(True)
    return sock


def main(argv=None):
    global _writer, _pool, _backlog
    sock = _open_stream(sys.argv[1:] if argv is None else argv)
    del sys.argv[1:]  # the agent sees no runner options

    # The runner's own folder is not the agent's.
    here = os.path.dirname(_THIS_FILE)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]

    _install_capture()
    _writer = Writer(sock)
    reader = Reader(sock)

    first = reader.read()
    if first is None:
        os._exit(0)
    # frames after INIT stay for the reading worker
    reader.buf[:0] = b"".join(_pack_header(len(b) + 5, k, c) + bytes(b)
                              for k, c, b in first[1:])
    kind, _, body = first[0]
    if kind != K_INIT:
        os.write(2, b"runagent runner: the first frame must be INIT\n")
        os._exit(2)

    try:
        threads, ready = do_init(body)
    except Exception as e:
        os.write(2, ("runagent runner: bad INIT frame: %s\n" % _describe(e)).encode())
        _writer.flush()
        os._exit(2)
    send_json(K_READY, 0, ready)
    _pool = Pool(threads, reader)
    _backlog = _pool.pending
    _pool.start()
    try:
        # Wait until there is a loop (made at INIT, or by the first call that
        # needs one), then run it here.
        _loop_made.acquire()
        if not _loop_set_in_main:
            _aio.set_event_loop(loop)
        loop.run_forever()
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
