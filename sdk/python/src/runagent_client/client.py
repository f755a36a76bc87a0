"""Sync and async RunAgent clients (REST /run and the WebSocket /run-stream)."""
from __future__ import annotations

import asyncio
import inspect
import json
import socket
import ssl
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, TypeVar
from urllib.parse import quote

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from . import config as _config
from .errors import (
    CONNECTION_ERROR, INTERNAL_ERROR, TIMEOUT, VALIDATION_ERROR, ChunkError, RunAgentError, error_for,
)
from .retry import Clock, Retrier, RetryPolicy
from .wire import (
    close_error, decode_data, encode_request, frame_error, http_error, parse_envelope, parse_frame,
    retryable_status,
)

__version__ = "0.1.0"

ChunkErrorMode = str  # "yield" | "raise" | "skip"
_CHUNK_MODES = ("yield", "raise", "skip")
_WS_OPEN_TIMEOUT = 30.0


def is_stream_tag(tag: str) -> bool:
    """A tag names a streaming entrypoint exactly when it ends in ``_stream``."""
    return tag.endswith("_stream")


# --- transport error classification (as the Go SDK's transportError) -------

def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _not_retryable_cause(exc: BaseException) -> bool:
    for e in _chain(exc):
        if isinstance(e, socket.gaierror) and e.errno in (getattr(socket, "EAI_NONAME", -2), getattr(socket, "EAI_NODATA", -5)):
            return True  # unknown host
        if isinstance(e, (ssl.SSLCertVerificationError, ssl.SSLError)):
            return True  # TLS failures are not retried
    return False


def _transport_error(exc: BaseException, deadline_passed: bool = False) -> RunAgentError:
    if deadline_passed:
        return error_for(TIMEOUT, "deadline exceeded: %s" % (exc or "timed out"))
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        # The request may be running on the server: not retried.
        return error_for(TIMEOUT, "request timed out: %s" % (exc or type(exc).__name__))
    return error_for(CONNECTION_ERROR, "connection failed: %s" % (str(exc) or type(exc).__name__),
                     retryable=not _not_retryable_cause(exc))


def _ws_handshake_error(exc: BaseException) -> RunAgentError:
    if isinstance(exc, InvalidStatus):
        r = exc.response
        if 200 <= r.status_code <= 299:
            return error_for(CONNECTION_ERROR, "the server did not upgrade to a WebSocket", r.status_code)
        return http_error(r.status_code, r.headers, r.body or b"")
    if isinstance(exc, InvalidURI):
        return error_for(VALIDATION_ERROR, "invalid WebSocket URL: %s" % exc)
    return _transport_error(exc)


def _ws_closed_error(exc: BaseException) -> RunAgentError:
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is not None:
            return close_error(rcvd.code, rcvd.reason)
        return close_error(None, detail=str(exc))
    return close_error(None, detail=str(exc) or type(exc).__name__)


_ACCEPTS: Dict[Any, bool] = {}


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    key = (fn, name)
    if key not in _ACCEPTS:
        try:
            target = fn.__init__ if isinstance(fn, type) else fn
            _ACCEPTS[key] = name in inspect.signature(target).parameters
        except (TypeError, ValueError):
            _ACCEPTS[key] = False
    return _ACCEPTS[key]


def _check_chunk_mode(mode: str) -> str:
    if mode not in _CHUNK_MODES:
        raise error_for(VALIDATION_ERROR, "on_chunk_error must be one of %s, not %r" % (_CHUNK_MODES, mode))
    return mode


_C = TypeVar("_C", bound="_Base")

RUN_ENDED = ("completed", "failed", "cancelled", "timeout")


@dataclass
class RunOptions:
    """A background run's options beside its input (runagent server only).

    ``idempotency_key`` makes the create safe to repeat (the server answers
    the run it already has); without one the client makes one per call, so
    that its own retries never create a second run. ``webhook`` is a URL the
    run's outcome is POSTed to, signed."""

    idempotency_key: Optional[str] = None
    webhook: Optional[str] = None


def _sse_events(lines: Iterator[str]) -> Iterator[Dict[str, str]]:
    """Server-Sent Events from lines (comments skipped)."""
    ev: Dict[str, str] = {}
    data: list = []
    for line in lines:
        if line == "":
            if ev or data:
                ev["data"] = "\n".join(data)
                yield ev
            ev, data = {}, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name in ("event", "id"):
                ev[name] = value


class _Base:
    def __init__(self, agent_id: str, entrypoint_tag: str, local: Optional[bool] = None, host: Optional[str] = None,
                 port: Optional[int] = None, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Optional[float] = None, retry: Optional[RetryPolicy] = None, *,
                 user_agent: Optional[str] = None, on_chunk_error: ChunkErrorMode = "yield",
                 clock: Optional[Clock] = None, user_id: Optional[str] = None,
                 persistent_memory: bool = False) -> None:
        self._cfg = _config.resolve(agent_id, entrypoint_tag, local, host, port, base_url, api_key, timeout)
        if persistent_memory and not user_id:
            raise error_for(VALIDATION_ERROR, "persistent_memory needs a user_id: the user whose persistent folders "
                                              "the agent's runs see")
        # Sent with every run, as the official SDK does: with persistent_memory
        # the server runs the call on an instance that sees the user's folders.
        self._user = {"user_id": user_id, "persistent_memory": bool(persistent_memory)} if user_id else None
        self._retry = (retry or RetryPolicy()).normalized()
        self._clock = clock or Clock()
        self._ua = user_agent or "runagent-python/" + __version__
        self._headers = self._cfg.headers(self._ua)
        self._on_chunk_error = _check_chunk_mode(on_chunk_error)

    agent_id = property(lambda self: self._cfg.agent_id)
    entrypoint_tag = property(lambda self: self._cfg.tag)
    base_url = property(lambda self: self._cfg.base_url)
    timeout = property(lambda self: self._cfg.timeout)

    def with_entrypoint(self: _C, tag: str) -> _C:
        """A client for another entrypoint of the same agent, sharing connections."""
        c = object.__new__(type(self))
        c.__dict__.update(self.__dict__)
        c._cfg = _config.ResolvedConfig(**{**self._cfg.__dict__, "tag": tag.strip()})
        c._own_http = False
        c._parent = self  # the owner of the shared connections outlives the copy
        return c

    def _run_body(self, args: tuple, kwargs: dict) -> bytes:
        if is_stream_tag(self._cfg.tag):
            raise error_for(VALIDATION_ERROR, "entrypoint %r is a streaming entrypoint: call run_stream" % self._cfg.tag)
        return encode_request(self._cfg.tag, args, kwargs, self._cfg.timeout_seconds, self._user)

    def _stream_request(self, args: tuple, kwargs: dict) -> str:
        if not is_stream_tag(self._cfg.tag):
            raise error_for(VALIDATION_ERROR, "entrypoint %r is not a streaming entrypoint (its tag does not end "
                                              "in _stream): call run" % self._cfg.tag)
        return encode_request(self._cfg.tag, args, kwargs, user=self._user).decode("utf-8")

    def _run_create(self, args: tuple, kwargs: dict, options: Optional[RunOptions]) -> Tuple[bytes, Dict[str, str]]:
        if is_stream_tag(self._cfg.tag):
            raise error_for(VALIDATION_ERROR, "entrypoint %r is a streaming entrypoint: a background run calls a "
                                              "plain one (use run_stream_resumable)" % self._cfg.tag)
        opts = options or RunOptions()
        req = json.loads(encode_request(self._cfg.tag, args, kwargs, self._cfg.timeout_seconds, self._user))
        if opts.webhook:
            req["webhook"] = opts.webhook
        key = opts.idempotency_key or str(uuid.uuid4())
        return json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), {"Idempotency-Key": key}

    def _run_url(self, run_id: str, tail: str = "") -> str:
        return self._cfg.base_url + _config.API_PREFIX + "/runs/" + quote(run_id, safe="") + tail

    @staticmethod
    def _handle_data(status: int, headers: Any, body: bytes) -> Any:
        return parse_envelope(status, headers, body)

    def _deadline(self) -> Optional[float]:
        return self._clock.now() + self._cfg.timeout if self._cfg.timeout else None

    def _httpx_timeout(self, deadline: Optional[float]) -> httpx.Timeout:
        if deadline is None:
            return httpx.Timeout(None, connect=30.0)
        remaining = deadline - self._clock.now()
        if remaining <= 0:
            raise error_for(TIMEOUT, "deadline exceeded")
        return httpx.Timeout(remaining, connect=min(remaining, 30.0))

    def _ws_kwargs(self, connect: Callable[..., Any]) -> Dict[str, Any]:
        h = {k: v for k, v in self._headers.items() if k == "Authorization"}
        kw = dict(additional_headers=h, user_agent_header=self._ua, open_timeout=_WS_OPEN_TIMEOUT,
                  max_size=None, close_timeout=2)
        if _accepts(connect, "ping_interval"):  # the sync client of websockets 13 has no keepalive
            kw["ping_interval"] = None  # as the Go SDK: no client pings; the server bounds the call
        return kw

    @staticmethod
    def _handle_run(status: int, headers: Any, body: bytes) -> Any:
        data = parse_envelope(status, headers, body)
        try:
            return decode_data(data)
        except RunAgentError as e:
            if e.status is None:
                e.status = status
            raise


def _limits() -> httpx.Limits:
    return httpx.Limits(max_connections=1024, max_keepalive_connections=512, keepalive_expiry=90.0)


class RunAgentClient(_Base):
    """Calls one entrypoint of one agent. Thread-safe; create once, reuse.

    ``run(*args, **kwargs)`` calls ``fn(*args, **kwargs)`` on the server and
    returns the decoded result; ``run_stream(*args, **kwargs)`` returns an
    iterator of decoded chunks. See the package README for configuration."""

    def __init__(self, agent_id: str, entrypoint_tag: str, local: Optional[bool] = None, host: Optional[str] = None,
                 port: Optional[int] = None, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Optional[float] = None, retry: Optional[RetryPolicy] = None, *,
                 http_client: Optional[httpx.Client] = None, **kw: Any) -> None:
        super().__init__(agent_id, entrypoint_tag, local, host, port, base_url, api_key, timeout, retry, **kw)
        self._own_http = http_client is None
        self._http = http_client or httpx.Client(limits=_limits(), follow_redirects=False)

    def close(self) -> None:
        """Release the pooled connections (not those of a caller's http_client)."""
        if self._own_http:
            self._http.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self) -> "RunAgentClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, *args: Any, **kwargs: Any) -> Any:
        body = self._run_body(args, kwargs)
        return self._request("POST", self._cfg.run_url, body, self._handle_run)

    def run_stream(self, *args: Any, **kwargs: Any) -> "Stream":
        req = self._stream_request(args, kwargs)
        s = Stream(self, req)
        s._start()
        return s

    def start_run(self, *args: Any, run_options: Optional[RunOptions] = None, **kwargs: Any) -> Dict[str, Any]:
        """Create a background run of ``fn(*args, **kwargs)`` (runagent server):
        returns ``{"run_id", "status", ...}`` once the server has it on disk."""
        body, extra = self._run_create(args, kwargs, run_options)
        return self._request("POST", self._cfg.agent_url + "/runs", body, self._handle_data, extra)

    def get_run(self, run_id: str) -> Dict[str, Any]:
        """The run: ``status`` (pending, running, completed, failed, cancelled,
        timeout), ``output_data``, ``error_detail``, ``attempts``, ..."""
        return self._request("GET", self._run_url(run_id), None, self._handle_data)

    def wait_run(self, run_id: str, timeout: float = 30.0) -> Dict[str, Any]:
        """The run once it has ended, or as it is after ``timeout`` seconds."""
        end = self._clock.now() + timeout
        while True:
            left = max(0.0, end - self._clock.now())
            run = self._request("GET", self._run_url(run_id, "/wait?timeout_seconds=%.3f" % min(left, 300.0)),
                                None, self._handle_data)
            if run.get("status") in RUN_ENDED or self._clock.now() >= end:
                return run

    def cancel_run(self, run_id: str) -> Dict[str, Any]:
        """Cancel a run: it ends ``cancelled`` (or as it had ended before)."""
        return self._request("POST", self._run_url(run_id, "/cancel"), None, self._handle_data)

    def run_stream_resumable(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Stream ``fn(*args, **kwargs)`` over Server-Sent Events, re-joining
        the stream after a dropped connection from the last chunk received
        (runagent server: the stream runs on while the client is away)."""
        req = json.loads(self._stream_request(args, kwargs))
        req["on_disconnect"] = "continue"
        body = json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        run_id: Optional[str] = None
        last: Optional[str] = None
        retrier = Retrier(self._retry, self._clock, None)
        while True:
            got = False
            try:
                headers = {**self._headers, "Accept": "text/event-stream"}
                if run_id is None:
                    cm = self._http.stream("POST", self._cfg.agent_url + "/run-stream", content=body,
                                           headers={**headers, "Content-Type": "application/json"},
                                           timeout=httpx.Timeout(None, connect=30.0))
                else:
                    if last is not None:
                        headers["Last-Event-ID"] = last
                    cm = self._http.stream("GET", self._run_url(run_id, "/stream"), headers=headers,
                                           timeout=httpx.Timeout(None, connect=30.0))
                with cm as resp:
                    if resp.status_code != 200:
                        raise http_error(resp.status_code, resp.headers, resp.read())
                    loc = resp.headers.get("content-location", "")
                    if run_id is None and loc.startswith(_config.API_PREFIX + "/runs/"):
                        run_id = loc[len(_config.API_PREFIX + "/runs/"):]
                    for ev in _sse_events(resp.iter_lines()):
                        kind = ev.get("event")
                        if kind == "chunk":
                            got, last = True, ev.get("id", last)
                            yield json.loads(ev["data"])
                        elif kind == "chunk_error":
                            got, last = True, ev.get("id", last)
                            ce = ChunkError(INTERNAL_ERROR, json.loads(ev["data"]).get("message", "chunk error"))
                            if self._on_chunk_error == "raise":
                                raise error_for(INTERNAL_ERROR, str(ce))
                            if self._on_chunk_error == "yield":
                                yield ce
                        elif kind == "done":
                            return
                        elif kind == "error":
                            e = json.loads(ev["data"])
                            raise error_for(e.get("code") or INTERNAL_ERROR, e.get("message", "stream failed"))
                if run_id is None:
                    raise error_for(INTERNAL_ERROR, "the server named no run to re-join (is it runagent server?)")
                raise error_for(CONNECTION_ERROR, "the stream ended before its last event")
            except httpx.TransportError as exc:
                err = _transport_error(exc)
            except RunAgentError as e:
                if e.code != CONNECTION_ERROR and not retryable_status(e.status or 0):
                    raise
                err = e
            if got:
                retrier = Retrier(self._retry, self._clock, None)  # progress: a fresh budget
            retrier.wait(err)

    def health(self) -> Dict[str, Any]:
        """GET /api/v1/health."""
        def handle(status: int, h: Any, b: bytes) -> Any:
            if not 200 <= status <= 299:
                raise http_error(status, h, b)
            return json.loads(b)
        return self._request("GET", self._cfg.base_url + _config.API_PREFIX + "/health", None, handle)

    def architecture(self) -> Dict[str, Any]:
        """GET /api/v1/agents/{id}/architecture: ``{"agent_id", "entrypoints": [...]}``."""
        return self._request("GET", self._cfg.agent_url + "/architecture", None,
                             lambda s, h, b: parse_envelope(s, h, b))

    def _request(self, method: str, url: str, body: Optional[bytes], handle: Callable[[int, Any, bytes], Any],
                 extra: Optional[Dict[str, str]] = None) -> Any:
        deadline = self._deadline()
        r = Retrier(self._retry, self._clock, deadline)
        while True:
            try:
                return self._attempt(method, url, body, deadline, handle, extra)
            except RunAgentError as e:
                r.wait(e)

    def _attempt(self, method: str, url: str, body: Optional[bytes], deadline: Optional[float],
                 handle: Callable[[int, Any, bytes], Any], extra: Optional[Dict[str, str]] = None) -> Any:
        headers = self._headers if body is None else {**self._headers, "Content-Type": "application/json"}
        if extra:
            headers = {**headers, **extra}
        try:
            resp = self._http.request(method, url, content=body, headers=headers,
                                      timeout=self._httpx_timeout(deadline))
        except httpx.TransportError as exc:
            raise _transport_error(exc, deadline is not None and self._clock.now() >= deadline) from exc
        if retryable_status(resp.status_code):
            raise http_error(resp.status_code, resp.headers, resp.content)
        return handle(resp.status_code, resp.headers, resp.content)


class _StreamState:
    """Frame handling shared by the sync and async streams (as sdk/go/stream.go)."""

    def __init__(self, client: _Base, req: str) -> None:
        self._client = client
        self._req = req
        self._retrier = Retrier(client._retry, client._clock)
        self._mode = client._on_chunk_error
        self._ws: Any = None
        self._pending: Optional[dict] = None
        self._got_data = False
        self._done = False
        self.invocation_id: Optional[str] = None
        self.total_chunks: Optional[int] = None
        self.error: Optional[RunAgentError] = None

    def _set_id(self, fr: dict) -> None:
        if isinstance(fr.get("invocation_id"), str):
            self.invocation_id = fr["invocation_id"]

    def _open_frame(self, fr: dict) -> bool:
        """Handle a frame read while opening; True when the stream is open."""
        t = fr.get("type")
        if t == "status":
            if fr.get("status") == "stream_started":
                self._set_id(fr)
                return True
            if fr.get("status") == "stream_completed":
                self._pending = fr
                return True
        elif t == "data":
            self._pending = fr
            return True
        elif t == "error":
            fe = frame_error(fr)
            if isinstance(fe, ChunkError):
                self._pending = fr
                return True
            raise fe
        return False

    _SKIP = object()
    _END = object()

    def _item(self, fr: dict) -> Any:
        """The item for a frame: a value, a ChunkError, _SKIP or _END; raises a stream error."""
        t = fr.get("type")
        if t == "data":
            self._got_data = True
            try:
                return decode_data(fr.get("content"))
            except RunAgentError as de:
                return self._chunk_error(ChunkError(INTERNAL_ERROR, "undecodable stream chunk: " + de.message))
        if t == "status":
            st = fr.get("status")
            if st == "stream_started":
                self._set_id(fr)
            elif st == "stream_completed":
                self._set_id(fr)
                if isinstance(fr.get("total_chunks"), int):
                    self.total_chunks = fr["total_chunks"]
                return self._END
            return self._SKIP
        if t == "error":
            fe = frame_error(fr)
            if isinstance(fe, ChunkError):
                self._got_data = True
                return self._chunk_error(fe)
            raise fe
        return self._SKIP  # unknown frame types are ignored

    def _chunk_error(self, ce: ChunkError) -> Any:
        if self._mode == "raise":
            raise ce
        if self._mode == "skip":
            return self._SKIP
        return ce


class Stream(_StreamState):
    """An iterator over the decoded chunks of one streaming run.

    Each item is a decoded chunk, or -- with ``on_chunk_error="yield"`` (the
    default) -- a :class:`ChunkError` instance standing for one chunk the
    server could not serialize; the stream goes on after it. An error ending
    the stream is raised from ``next()``. Closing early (``close()``, ``with``,
    or dropping the iterator) closes the socket, which cancels the run."""

    def _start(self) -> None:
        while True:
            try:
                self._open()
                return
            except RunAgentError as e:
                self._drop()
                self._pending = None
                try:
                    self._retrier.wait(e)
                except RunAgentError:
                    self._done = True
                    raise

    def _open(self) -> None:
        from websockets.sync.client import connect
        try:
            # __enter__: the context-manager form, which websockets >= 17 expects
            # (returns the connection on every version); _drop closes it.
            self._ws = connect(self._client._cfg.ws_url, **self._client._ws_kwargs(connect)).__enter__()
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            raise _ws_handshake_error(exc) from exc
        try:
            self._ws.send(self._req)
        except (ConnectionClosed, OSError) as exc:
            raise _ws_closed_error(exc) from exc
        while not self._open_frame(self._read()):
            pass

    def _read(self) -> dict:
        if self._ws is None:
            raise error_for("CANCELLED", "stream closed by the client")
        try:
            raw = self._ws.recv()
        except (ConnectionClosed, OSError) as exc:
            raise _ws_closed_error(exc) from exc
        return parse_frame(raw)

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:
        while not self._done:
            try:
                if self._pending is not None:
                    fr, self._pending = self._pending, None
                else:
                    fr = self._read()
                item = self._item(fr)
            except RunAgentError as e:
                if not self._got_data and e.retryable and not isinstance(e, ChunkError):
                    try:
                        self._drop()
                        self._retrier.wait(e)
                        self._start()
                        continue
                    except RunAgentError as e2:
                        e = e2
                self._finish(e)
                raise e
            if item is self._END:
                self._finish(None)
                break
            if item is not self._SKIP:
                return item
        raise StopIteration

    def _finish(self, e: Optional[RunAgentError]) -> None:
        self._done = True
        self.error = e
        self._drop()

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass

    def close(self) -> None:
        """Close the stream; before its end this cancels the run on the server."""
        self._done = True
        self._drop()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop()
        except Exception:
            pass


class AsyncRunAgentClient(_Base):
    """The asyncio twin of RunAgentClient: ``await client.run(...)`` and
    ``async for chunk in client.run_stream(...)``."""

    def __init__(self, agent_id: str, entrypoint_tag: str, local: Optional[bool] = None, host: Optional[str] = None,
                 port: Optional[int] = None, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Optional[float] = None, retry: Optional[RetryPolicy] = None, *,
                 http_client: Optional[httpx.AsyncClient] = None, **kw: Any) -> None:
        super().__init__(agent_id, entrypoint_tag, local, host, port, base_url, api_key, timeout, retry, **kw)
        self._own_http = http_client is None
        self._http = http_client or httpx.AsyncClient(limits=_limits(), follow_redirects=False)

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncRunAgentClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        body = self._run_body(args, kwargs)
        return await self._request("POST", self._cfg.run_url, body, self._handle_run)

    def run_stream(self, *args: Any, **kwargs: Any) -> "AsyncStream":
        """An async iterator of decoded chunks; the socket opens at the first
        iteration, or at ``await client.run_stream(...)``."""
        return AsyncStream(self, self._stream_request(args, kwargs))

    async def health(self) -> Dict[str, Any]:
        def handle(status: int, h: Any, b: bytes) -> Any:
            if not 200 <= status <= 299:
                raise http_error(status, h, b)
            import json
            return json.loads(b)
        return await self._request("GET", self._cfg.base_url + _config.API_PREFIX + "/health", None, handle)

    async def architecture(self) -> Dict[str, Any]:
        return await self._request("GET", self._cfg.agent_url + "/architecture", None,
                                   lambda s, h, b: parse_envelope(s, h, b))

    async def start_run(self, *args: Any, run_options: Optional[RunOptions] = None, **kwargs: Any) -> Dict[str, Any]:
        """Create a background run (see RunAgentClient.start_run)."""
        body, extra = self._run_create(args, kwargs, run_options)
        return await self._request("POST", self._cfg.agent_url + "/runs", body, self._handle_data, extra)

    async def get_run(self, run_id: str) -> Dict[str, Any]:
        """The run (see RunAgentClient.get_run)."""
        return await self._request("GET", self._run_url(run_id), None, self._handle_data)

    async def wait_run(self, run_id: str, timeout: float = 30.0) -> Dict[str, Any]:
        """The run once it has ended, or as it is after ``timeout`` seconds."""
        end = self._clock.now() + timeout
        while True:
            left = max(0.0, end - self._clock.now())
            run = await self._request("GET", self._run_url(run_id, "/wait?timeout_seconds=%.3f" % min(left, 300.0)),
                                      None, self._handle_data)
            if run.get("status") in RUN_ENDED or self._clock.now() >= end:
                return run

    async def cancel_run(self, run_id: str) -> Dict[str, Any]:
        """Cancel a run (see RunAgentClient.cancel_run)."""
        return await self._request("POST", self._run_url(run_id, "/cancel"), None, self._handle_data)

    async def _request(self, method: str, url: str, body: Optional[bytes],
                       handle: Callable[[int, Any, bytes], Any], extra: Optional[Dict[str, str]] = None) -> Any:
        deadline = self._deadline()
        r = Retrier(self._retry, self._clock, deadline)
        while True:
            try:
                return await self._attempt(method, url, body, deadline, handle, extra)
            except RunAgentError as e:
                await r.async_wait(e)

    async def _attempt(self, method: str, url: str, body: Optional[bytes], deadline: Optional[float],
                       handle: Callable[[int, Any, bytes], Any], extra: Optional[Dict[str, str]] = None) -> Any:
        headers = self._headers if body is None else {**self._headers, "Content-Type": "application/json"}
        if extra:
            headers = {**headers, **extra}
        try:
            resp = await self._http.request(method, url, content=body, headers=headers,
                                            timeout=self._httpx_timeout(deadline))
        except httpx.TransportError as exc:
            raise _transport_error(exc, deadline is not None and self._clock.now() >= deadline) from exc
        if retryable_status(resp.status_code):
            raise http_error(resp.status_code, resp.headers, resp.content)
        return handle(resp.status_code, resp.headers, resp.content)


class AsyncStream(_StreamState):
    """Async iterator over the decoded chunks of one streaming run (see Stream)."""

    def __init__(self, client: _Base, req: str) -> None:
        super().__init__(client, req)
        self._started = False

    async def _start(self) -> None:
        self._started = True
        while True:
            try:
                await self._open()
                return
            except RunAgentError as e:
                await self._drop()
                self._pending = None
                try:
                    await self._retrier.async_wait(e)
                except RunAgentError:
                    self._done = True
                    raise

    async def _open(self) -> None:
        from websockets.asyncio.client import connect
        try:
            self._ws = await connect(self._client._cfg.ws_url, **self._client._ws_kwargs(connect))
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            raise _ws_handshake_error(exc) from exc
        try:
            await self._ws.send(self._req)
        except (ConnectionClosed, OSError) as exc:
            raise _ws_closed_error(exc) from exc
        while not self._open_frame(await self._read()):
            pass

    async def _read(self) -> dict:
        if self._ws is None:
            raise error_for("CANCELLED", "stream closed by the client")
        try:
            raw = await self._ws.recv()
        except (ConnectionClosed, OSError) as exc:
            raise _ws_closed_error(exc) from exc
        return parse_frame(raw)

    def __await__(self):
        async def opened() -> "AsyncStream":
            if not self._started:
                await self._start()
            return self
        return opened().__await__()

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._next()
        except asyncio.CancelledError:
            # The caller's task was cancelled: close the socket at once, which
            # makes the server stop the agent's generator.
            self._done = True
            self._abort()
            raise

    def _abort(self) -> None:
        ws, self._ws = self._ws, None
        transport = getattr(ws, "transport", None)
        if transport is not None:
            try:
                transport.abort()
            except Exception:
                pass

    def __del__(self) -> None:
        # Dropped without aclose() (e.g. a break out of `async for`).
        self._abort()

    async def _next(self) -> Any:
        if not self._started and not self._done:
            await self._start()
        while not self._done:
            try:
                if self._pending is not None:
                    fr, self._pending = self._pending, None
                else:
                    fr = await self._read()
                item = self._item(fr)
            except RunAgentError as e:
                if not self._got_data and e.retryable and not isinstance(e, ChunkError):
                    try:
                        await self._drop()
                        await self._retrier.async_wait(e)
                        await self._start()
                        continue
                    except RunAgentError as e2:
                        e = e2
                await self._finish(e)
                raise e
            if item is self._END:
                await self._finish(None)
                break
            if item is not self._SKIP:
                return item
        raise StopAsyncIteration

    async def _finish(self, e: Optional[RunAgentError]) -> None:
        self._done = True
        self.error = e
        await self._drop()

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                await ws.close()
            except Exception:
                pass

    async def aclose(self) -> None:
        self._done = True
        await self._drop()

    async def __aenter__(self) -> "AsyncStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
