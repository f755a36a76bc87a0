"""Sync and async RunAgent clients (REST /run and the WebSocket /run-stream)."""
from __future__ import annotations

import asyncio
import inspect
import json
import re
import socket
import ssl
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, TypeVar, Union
from urllib.parse import quote, unquote

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from . import config as _config
from .errors import (
    CONNECTION_ERROR, INTERNAL_ERROR, TIMEOUT, VALIDATION_ERROR, ChunkError, RunAgentError, error_for,
)
from .retry import Clock, Retrier, RetryPolicy
from .wire import (
    _loads_value, classify_message, close_error, decode_data, encode_request, frame_error, http_error,
    parse_envelope, parse_frame, retryable_status,
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


# What a stream's frame or event stands for, beside a value or a ChunkError.
_SKIP = object()  # nothing to yield
_END = object()   # the stream completed


def _chunk_item(mode: str, ce: ChunkError) -> Any:
    """The item of a lost chunk under on_chunk_error ``mode``: ``ce``, _SKIP, or raised."""
    if mode == "raise":
        raise ce
    if mode == "skip":
        return _SKIP
    return ce


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

    def _resumable_body(self, args: tuple, kwargs: dict) -> bytes:
        req = json.loads(self._stream_request(args, kwargs))
        req["on_disconnect"] = "continue"
        return json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

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

    def run_stream_resumable(self, *args: Any, **kwargs: Any) -> "ResumableStream":
        """Stream ``fn(*args, **kwargs)`` over Server-Sent Events, re-joining
        the stream after a dropped connection from the last chunk received
        (runagent server: the stream runs on while the client is away). The
        request is made at the first ``next()`` (or ``open()``); the stream's
        ``run_id`` and ``last_event_id`` let :meth:`join_stream` re-join it
        later, also from another process. Closing it does not stop the run
        (``cancel_run(stream.run_id)`` does)."""
        return ResumableStream(self, self._resumable_body(args, kwargs), None, None)

    def join_stream(self, run_id: str, last_event_id: Optional[Union[str, int]] = None) -> "ResumableStream":
        """Re-join the stream of run ``run_id`` (begun by ``run_stream_resumable``,
        here or elsewhere): the chunks after event ``last_event_id`` (all of
        them without it), then the live ones, as ``run_stream_resumable``
        yields them. A run without an event log is NOT_FOUND."""
        return ResumableStream(self, None, *_join_args(run_id, last_event_id))

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

    _SKIP = _SKIP
    _END = _END

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
        return _chunk_item(self._mode, ce)


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

    def run_stream_resumable(self, *args: Any, **kwargs: Any) -> "AsyncResumableStream":
        """The async twin of RunAgentClient.run_stream_resumable: ``async for
        chunk in client.run_stream_resumable(...)``; the request is made at the
        first iteration, or at ``await client.run_stream_resumable(...)``."""
        return AsyncResumableStream(self, self._resumable_body(args, kwargs), None, None)

    def join_stream(self, run_id: str, last_event_id: Optional[Union[str, int]] = None) -> "AsyncResumableStream":
        """Re-join the stream of run ``run_id`` after ``last_event_id`` (see
        RunAgentClient.join_stream)."""
        return AsyncResumableStream(self, None, *_join_args(run_id, last_event_id))

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


# --- re-joinable streams over Server-Sent Events (runagent server) ---------
#
# As sdk/go/resumable.go: POST /agents/{id}/run-stream with "on_disconnect":
# "continue" starts the stream; after a lost connection the client re-joins
# with GET /runs/{id}/stream and Last-Event-ID. The SSE parsing, the event
# handling and the retry decisions live in _ResumableState, shared by the
# sync and async streams; those only do the I/O.

_RUNS_PATH = _config.API_PREFIX + "/runs/"
_SSE_TIMEOUT = httpx.Timeout(None, connect=30.0)  # a stream is bounded by the server, not by the client's timeout
_EVENT_ID = re.compile(r"-?[0-9]+\Z")
_HEARTBEAT = object()  # _SSEParser.feed: a comment line (the server's heartbeat)


class _SSEEvent(NamedTuple):
    kind: str           # the event field ("" when it had none)
    id: Optional[str]   # the id field, None when it had none
    data: str           # the data lines joined with "\n"


class _SSEParser:
    """Server-Sent Events from lines (without their line ends), one line at
    a time. An event is dispatched at the blank line after it: one cut off
    by the end of a connection is never delivered (reset() between
    connections)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._kind: str = ""
        self._id: Optional[str] = None
        self._data: list = []
        self._seen = False

    def feed(self, line: str) -> Any:
        """An _SSEEvent when ``line`` ends one, _HEARTBEAT for a comment, else None."""
        if line == "":
            if not self._seen:
                return None
            ev = _SSEEvent(self._kind, self._id, "\n".join(self._data))
            self.reset()
            return ev
        if line.startswith(":"):
            return _HEARTBEAT
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._kind = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        else:
            return None  # retry and unknown fields are ignored
        self._seen = True
        return None


def _join_args(run_id: Any, last_event_id: Any) -> Tuple[str, Optional[str]]:
    if not isinstance(run_id, str) or not run_id.strip():
        raise error_for(VALIDATION_ERROR, "a run id is required to join a stream")
    if last_event_id is None:
        return run_id, None
    if isinstance(last_event_id, int) and not isinstance(last_event_id, bool):
        last_event_id = str(last_event_id)
    if not isinstance(last_event_id, str) or not _EVENT_ID.match(last_event_id):
        raise error_for(VALIDATION_ERROR, "last_event_id must be an event id (a whole number), got %r" % (last_event_id,))
    return run_id, last_event_id


def _at_or_before(a: str, b: Optional[str]) -> bool:
    """Whether event id a is at or before b (both chunk numbers)."""
    return b is not None and bool(_EVENT_ID.match(a)) and bool(_EVENT_ID.match(b)) and int(a) <= int(b)


def _run_id_from_location(loc: str) -> Optional[str]:
    """RUN_ID of a Content-Location .../api/v1/runs/RUN_ID."""
    i = loc.find(_RUNS_PATH)
    if i < 0:
        return None
    rid = re.split(r"[/?#]", loc[i + len(_RUNS_PATH):], maxsplit=1)[0]
    return unquote(rid) or None


def _event_json(data: str) -> Dict[str, Any]:
    try:
        d = json.loads(data)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def _event_fields(data: str) -> Tuple[str, str]:
    """The {"code", "message"} of an error or chunk_error event."""
    d = _event_json(data)
    if not d:
        return "", data.strip()
    code, msg = d.get("code"), d.get("message")
    return (code if isinstance(code, str) else ""), (msg if isinstance(msg, str) else "")


def _event_error(ev: _SSEEvent) -> RunAgentError:
    """The error an ``error`` event ends the stream with: the server's code
    (else one classified from the message, as for WebSocket frames). Only
    one that is not in the run's event log (no id) and says the connection
    failed (the server could not read the log) is retried, by re-joining:
    one in the log is the run's end."""
    code, msg = _event_fields(ev.data)
    if not msg.strip():
        msg = "stream failed"
    code = code or classify_message(msg)
    return error_for(code, msg, retryable=ev.id is None and code == CONNECTION_ERROR)


class _ResumableState:
    """What the sync and async re-joinable streams share: the request of
    each attempt, the answer's checks, the events' handling and when to
    re-join (as sdk/go/resumable.go)."""

    def __init__(self, client: _Base, body: Optional[bytes], run_id: Optional[str],
                 last_event_id: Optional[str]) -> None:
        self._client = client
        self._body = body                 # the POST that starts the stream; None: join_stream
        self._started = body is None      # a 200 answered: the run exists, never POST again
        self._mode = client._on_chunk_error
        self._parser = _SSEParser()
        self._retrier: Optional[Retrier] = None
        self._fresh = True                # the next failure starts a fresh retry budget
        self._resp: Any = None
        self._lines: Any = None
        self._done = False
        #: The run's id (for get_run, cancel_run and join_stream), once the server named it.
        self.run_id: Optional[str] = run_id
        #: The id of the last chunk (or chunk error) received: a re-join goes on after it.
        self.last_event_id: Optional[str] = last_event_id
        self.invocation_id: Optional[str] = None
        #: The number of chunks the server said it sent, once the stream is done.
        self.total_chunks: Optional[int] = None
        #: The error that ended the stream, if one did.
        self.error: Optional[RunAgentError] = None
        #: How many times the stream was re-joined after a lost connection.
        self.reconnects = 0

    def _request(self) -> httpx.Request:
        c = self._client
        headers = {**c._headers, "Accept": "text/event-stream"}
        if not self._started:
            headers["Content-Type"] = "application/json"
            return c._http.build_request("POST", c._cfg.agent_url + "/run-stream", content=self._body,
                                         headers=headers, timeout=_SSE_TIMEOUT)
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return c._http.build_request("GET", c._run_url(self.run_id or "", "/stream"), headers=headers,
                                     timeout=_SSE_TIMEOUT)

    def _check_answer(self, resp: httpx.Response) -> None:
        """After a 200: the answer must be an event stream; it may name the run."""
        ctype = resp.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "text/event-stream":
            raise error_for(INTERNAL_ERROR, "the server did not answer an event stream (Content-Type %r)" % ctype,
                            resp.status_code)
        self._started = True
        if self.run_id is None:
            self.run_id = _run_id_from_location(resp.headers.get("content-location", ""))
        self._parser.reset()

    def _set_ids(self, data: str, done: bool) -> None:
        d = _event_json(data)
        rid, inv = d.get("run_id"), d.get("invocation_id")
        if isinstance(rid, str) and rid and self.run_id is None:
            self.run_id = rid
        if isinstance(inv, str) and inv:
            self.invocation_id = inv
        n = d.get("total_chunks")
        if done and isinstance(n, int) and not isinstance(n, bool):
            self.total_chunks = n

    def _line(self, line: str) -> Any:
        """The item of one line: a chunk, a ChunkError, _SKIP or _END; raises
        the error an error event (or a chunk error in "raise" mode) ends the stream with."""
        ev = self._parser.feed(line)
        if ev is None:
            return _SKIP
        if ev is _HEARTBEAT:
            self._fresh = True  # the connection is alive
            return _SKIP
        if ev.kind in ("chunk", "chunk_error"):
            if ev.id is not None:
                if _at_or_before(ev.id, self.last_event_id):
                    return _SKIP  # sent again by a server that replayed too much
                self.last_event_id = ev.id
            self._fresh = True
            if ev.kind == "chunk":
                try:
                    return _loads_value(ev.data)
                except ValueError as exc:
                    return _chunk_item(self._mode, ChunkError(INTERNAL_ERROR, "undecodable stream chunk: %s" % exc))
            code, msg = _event_fields(ev.data)
            return _chunk_item(self._mode, ChunkError(code or INTERNAL_ERROR, msg or "chunk error"))
        if ev.kind == "start":
            self._set_ids(ev.data, False)
            return _SKIP
        if ev.kind == "done":
            self._set_ids(ev.data, True)
            return _END
        if ev.kind == "error":
            raise _event_error(ev)
        return _SKIP  # unknown events are ignored

    def _ended_early(self) -> RunAgentError:
        return error_for(CONNECTION_ERROR, "the stream ended before its last event", retryable=True)

    def _retrier_for(self, e: RunAgentError) -> Retrier:
        """After the failure ``e`` of an attempt: the retrier to wait on
        before the next one; raises when the stream must end."""
        if not e.retryable:
            raise e
        if self._started and self.run_id is None:
            # Posting again would start the stream a second time.
            raise error_for(INTERNAL_ERROR, "the server named no run to re-join (is it runagent server?) after: "
                            + e.message, e.status) from e
        if self._fresh or self._retrier is None:
            self._retrier, self._fresh = Retrier(self._client._retry, self._client._clock), False
        return self._retrier


class ResumableStream(_ResumableState):
    """An iterator over the decoded chunks of a re-joinable stream
    (``run_stream_resumable``, ``join_stream``): each chunk once, in order,
    however often the connection drops. Per-chunk errors follow
    ``on_chunk_error`` as in :class:`Stream`; an error ending the stream is
    raised from ``next()``. ``close()``, ``with`` or dropping it closes the
    connection, not the run: re-join it with
    ``join_stream(stream.run_id, stream.last_event_id)`` or stop it with
    ``cancel_run(stream.run_id)``."""

    def open(self) -> "ResumableStream":
        """Make the request now rather than at the first ``next()``: after
        it ``run_id`` is known, and errors before the stream (an unknown run,
        entrypoint or agent) are raised here."""
        self._advance(True)
        return self

    def __iter__(self) -> "ResumableStream":
        return self

    def __next__(self) -> Any:
        item = self._advance(False)
        if item is _END:
            raise StopIteration
        return item

    def _advance(self, open_only: bool) -> Any:
        while not self._done:
            try:
                if self._resp is None:
                    self._connect()
                if open_only:
                    return None
                for line in self._lines:
                    item = self._line(line)
                    if item is _END:
                        self._finish(None)
                        return _END
                    if item is not _SKIP:
                        return item
                raise self._ended_early()
            except httpx.TransportError as exc:
                err = _transport_error(exc)
            except RunAgentError as e:
                err = e
            self._drop()
            if self._done:
                break  # closed meanwhile
            try:
                self._retrier_for(err).wait(err)
            except RunAgentError as final:
                self._finish(final)
                raise
            if self._started:
                self.reconnects += 1
        return _END

    def _connect(self) -> None:
        http = self._client._http
        resp = http.send(self._request(), stream=True)
        self._resp = resp  # closed by _drop when the checks below fail
        if resp.status_code != 200:
            raise http_error(resp.status_code, resp.headers, resp.read())
        self._check_answer(resp)
        self._lines = resp.iter_lines()

    def _finish(self, e: Optional[RunAgentError]) -> None:
        self._done = True
        self.error = e
        self._drop()

    def _drop(self) -> None:
        resp, self._resp, self._lines = self._resp, None, None
        if resp is not None:
            try:
                resp.close()
            except Exception:
                pass

    def close(self) -> None:
        """Close the connection; the run goes on on the server (see cancel_run)."""
        self._done = True
        self._drop()

    def __enter__(self) -> "ResumableStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop()
        except Exception:
            pass


_CLOSING: set = set()  # the tasks closing dropped async streams' responses


def _close_later(resp: Any) -> None:
    t = asyncio.ensure_future(resp.aclose())
    _CLOSING.add(t)
    t.add_done_callback(_CLOSING.discard)


class AsyncResumableStream(_ResumableState):
    """The async iterator of a re-joinable stream (see ResumableStream):
    ``async for chunk in client.run_stream_resumable(...)``. ``aclose()``,
    ``async with`` or cancelling the task reading it closes the connection;
    the run goes on on the server."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def open(self) -> "AsyncResumableStream":
        """Make the request now rather than at the first iteration (see ResumableStream.open)."""
        await self._guard(True)
        return self

    def __await__(self):
        return self.open().__await__()

    def __aiter__(self) -> "AsyncResumableStream":
        return self

    async def __anext__(self) -> Any:
        item = await self._guard(False)
        if item is _END:
            raise StopAsyncIteration
        return item

    async def _guard(self, open_only: bool) -> Any:
        try:
            return await self._advance(open_only)
        except asyncio.CancelledError:
            # The caller's task was cancelled: drop the connection without
            # waiting (the run goes on on the server).
            self._done = True
            self._drop_later()
            raise

    async def _advance(self, open_only: bool) -> Any:
        while not self._done:
            try:
                if self._resp is None:
                    await self._connect()
                if open_only:
                    return None
                async for line in self._lines:
                    item = self._line(line)
                    if item is _END:
                        await self._finish(None)
                        return _END
                    if item is not _SKIP:
                        return item
                raise self._ended_early()
            except httpx.TransportError as exc:
                err = _transport_error(exc)
            except RunAgentError as e:
                err = e
            await self._drop()
            if self._done:
                break  # closed meanwhile
            try:
                await self._retrier_for(err).async_wait(err)
            except RunAgentError as final:
                await self._finish(final)
                raise
            if self._started:
                self.reconnects += 1
        return _END

    async def _connect(self) -> None:
        http = self._client._http
        self._loop = asyncio.get_running_loop()
        resp = await http.send(self._request(), stream=True)
        self._resp = resp  # closed by _drop when the checks below fail
        if resp.status_code != 200:
            raise http_error(resp.status_code, resp.headers, await resp.aread())
        self._check_answer(resp)
        self._lines = resp.aiter_lines()

    async def _finish(self, e: Optional[RunAgentError]) -> None:
        self._done = True
        self.error = e
        await self._drop()

    async def _drop(self) -> None:
        resp, self._resp, self._lines = self._resp, None, None
        if resp is not None:
            try:
                await resp.aclose()
            except Exception:
                pass

    def _drop_later(self) -> None:
        """Close the response from its event loop, without waiting (from a
        cancelled task, or __del__ in any thread)."""
        resp, self._resp, self._lines = self._resp, None, None
        loop = self._loop
        if resp is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(_close_later, resp)
            except RuntimeError:
                pass  # the loop is closed: so is the connection

    async def aclose(self) -> None:
        """Close the connection; the run goes on on the server (see cancel_run)."""
        self._done = True
        await self._drop()

    async def __aenter__(self) -> "AsyncResumableStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without aclose() (e.g. a break out of `async for`).
        try:
            self._drop_later()
        except Exception:
            pass
