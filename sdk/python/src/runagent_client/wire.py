"""Pure wire-protocol logic shared by the sync and async clients: structured
value decoding, envelope and HTTP status mapping, WebSocket frame errors.
It mirrors sdk/go (structured.go, envelope.go, errors.go, stream.go)."""
from __future__ import annotations

import email.utils
import http
import json
import math
import time
from typing import Any, Mapping, Optional, Tuple

from .errors import (
    AGENT_CRASHED, AUTHENTICATION_ERROR, INTERNAL_ERROR, NOT_FOUND, OVERLOADED,
    PERMISSION_ERROR, RATE_LIMIT_EXCEEDED, TIMEOUT, VALIDATION_ERROR,
    ChunkError, InternalError, RunAgentError, error_for,
)

_CONSTANTS = {"NaN": None, "Infinity": math.inf, "-Infinity": -math.inf}


def _loads_value(text: str) -> Any:
    # Python's json.dumps may print bare NaN/Infinity: NaN decodes as None (as
    # the server's serializer would have encoded it), Infinity as ±inf.
    return json.loads(text, parse_constant=_CONSTANTS.__getitem__)


def _malformed(msg: str, status: Optional[int] = None) -> RunAgentError:
    return InternalError(INTERNAL_ERROR, msg, status)


def decode_structured(s: Any) -> Any:
    """Decode a structured string ``{"type": T, "payload": "<json>"}`` (JSON
    inside JSON): the outer object, then the payload. ``s`` may also be the
    already parsed outer dict. Raises InternalError on malformed input."""
    if isinstance(s, (str, bytes, bytearray)):
        try:
            outer = json.loads(s)
        except ValueError as exc:
            raise _malformed("malformed structured value: %s" % exc) from None
    else:
        outer = s
    if not isinstance(outer, dict):
        raise _malformed("malformed structured value: not an object")
    typ = outer.get("type")
    if typ is not None and not isinstance(typ, str):
        raise _malformed('malformed structured value: "type" is not a string')
    if not typ and "payload" not in outer:
        raise _malformed('malformed structured value: no "type" or "payload"')
    payload = outer.get("payload")
    if payload is None:
        return None
    if isinstance(payload, str):
        try:
            return _loads_value(payload)
        except ValueError:
            if typ == "string":
                return payload  # a string payload that was not JSON-encoded
            raise _malformed("malformed structured value: payload is not JSON") from None
    return payload  # already decoded


def decode_data(data: Any) -> Any:
    """Decode the ``data`` of a /run envelope or the ``content`` of a stream
    data frame (already JSON-parsed): normally a structured string; leniently
    also a structured object, null, or a plain value."""
    if data is None:
        return None
    if isinstance(data, str):
        return decode_structured(data)
    if isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"] and data.get("payload") is not None:
        return decode_structured(data)
    return data


# --- HTTP -------------------------------------------------------------------

def code_for_status(status: int) -> str:
    return {
        401: AUTHENTICATION_ERROR,
        403: PERMISSION_ERROR,
        404: NOT_FOUND,
        400: VALIDATION_ERROR,
        413: VALIDATION_ERROR,
        422: VALIDATION_ERROR,
        429: RATE_LIMIT_EXCEEDED,
        503: OVERLOADED,
        504: TIMEOUT,
    }.get(status, INTERNAL_ERROR)


def retryable_status(status: int) -> bool:
    return status in (429, 503)


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After as seconds (delay-seconds or an HTTP date); None when absent or past."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    try:
        secs = float(v)
    except ValueError:
        secs = None
    if secs is not None:
        if not secs > 0:  # also NaN
            return None
        return min(secs, 365 * 24 * 3600.0)
    try:
        dt = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    d = dt.timestamp() - (time.time() if now is None else now)
    return d if d > 0 else None


def status_message(status: int, body: Optional[bytes] = None) -> str:
    try:
        msg = http.HTTPStatus(status).phrase
    except ValueError:
        msg = "unexpected HTTP status"
    if body:
        b = body.strip()
        if b and len(b) <= 512 and b"<" not in b and b"\x00" not in b:
            try:
                msg += ": " + b.decode("utf-8")
            except UnicodeDecodeError:
                pass
    return msg


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def envelope_error(env: Mapping[str, Any]) -> RunAgentError:
    """Build an error (code possibly "") from an envelope or FastAPI body."""
    code = message = field = ""
    details: Any = None
    request_id = _str(env.get("request_id")) or None
    err = env.get("error")
    if isinstance(err, str):
        message = err
    elif isinstance(err, dict):
        code = _str(err.get("code"))
        message = _str(err.get("message"))
        field = _str(err.get("field"))
        details = err.get("details")
    detail = env.get("detail")
    if detail is not None:
        if isinstance(detail, str):
            message = message or detail
        else:
            if not message and isinstance(detail, list):
                msgs = []
                for it in detail:
                    if isinstance(it, dict) and isinstance(it.get("msg"), str):
                        m = it["msg"]
                        loc = it.get("loc")
                        if isinstance(loc, list) and loc:
                            m = json.dumps(loc, separators=(",", ":"), ensure_ascii=False) + ": " + m
                        msgs.append(m)
                message = "; ".join(msgs)
            if details is None:
                details = detail
    if not message:
        message = _str(env.get("message"))
    e = error_for(code or INTERNAL_ERROR, message, details=details, field=field or None, request_id=request_id)
    e.code = code  # "" when the envelope had none: the caller fills it in
    return e


def _recode(e: RunAgentError, code: str, status: Optional[int], **kw: Any) -> RunAgentError:
    return error_for(code, e.message, status, details=e.details, field=e.field, request_id=e.request_id, **kw)


def http_error(status: int, headers: Optional[Mapping[str, str]], body: bytes) -> RunAgentError:
    """The error of a non-2xx response (as the Go SDK's httpError)."""
    env = None
    try:
        env = json.loads(body) if body else None
    except ValueError:
        env = None
    if isinstance(env, dict) and (isinstance(env.get("success"), bool) or "error" in env or "detail" in env):
        e = envelope_error(env)
    else:
        e = error_for(INTERNAL_ERROR, status_message(status, body))
        e.code = ""
    code = e.code or code_for_status(status)
    retry_after = parse_retry_after(headers.get("Retry-After")) if headers is not None else None
    out = _recode(e, code, status, retry_after=retry_after, retryable=retryable_status(status))
    if not out.message:
        out.message = status_message(status)
        out.args = (str(out),)
    return out


def parse_envelope(status: int, headers: Optional[Mapping[str, str]], body: bytes) -> Any:
    """Return the envelope's ``data`` (parsed JSON, not yet decoded) or raise."""
    if status < 200 or status > 299:
        raise http_error(status, headers, body)
    try:
        env = json.loads(body)
    except ValueError as exc:
        raise _malformed("malformed response: not a RunAgent envelope: %s" % exc, status) from None
    if not isinstance(env, dict) or not isinstance(env.get("success"), bool):
        raise _malformed("malformed response: not a RunAgent envelope", status)
    if env["success"]:
        return env.get("data")
    e = envelope_error(env)
    raise error_for(e.code or INTERNAL_ERROR, e.message or "agent execution failed", status,
                    details=e.details, field=e.field, request_id=e.request_id)


# --- WebSocket frames -------------------------------------------------------

def parse_frame(raw: Any) -> dict:
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("malformed stream frame: not UTF-8") from None
    try:
        fr = json.loads(raw)
    except ValueError as exc:
        raise _malformed("malformed stream frame: %s" % exc) from None
    if not isinstance(fr, dict):
        raise _malformed("malformed stream frame: not an object")
    return fr


def classify_message(msg: str) -> str:
    """Derive a code from an error frame without one (as the Go SDK)."""
    l = msg.lower()

    def has(*words: str) -> bool:
        return any(w in l for w in words)

    if l.startswith("streaming error") or l.startswith("agent execution failed"):
        return INTERNAL_ERROR
    if has("not found"):
        return NOT_FOUND
    if has("unauthorized", "authentication", "invalid token", "invalid api key", "api key required"):
        return AUTHENTICATION_ERROR
    if has("permission", "forbidden"):
        return PERMISSION_ERROR
    if has("rate limit"):
        return RATE_LIMIT_EXCEEDED
    if has("overloaded"):
        return OVERLOADED
    if has("timed out", "timeout"):
        return TIMEOUT
    if has("crashed"):
        return AGENT_CRASHED
    if has("invalid", "missing", "required", "must ", "not a stream", "non-stream", "json"):
        return VALIDATION_ERROR
    return INTERNAL_ERROR


def frame_error(fr: Mapping[str, Any]) -> RunAgentError:
    """The error of an error frame: its ``code`` when present, else classified
    from the message. "Chunk serialization failed" gives a ChunkError."""
    err, detail = fr.get("error"), fr.get("detail")
    if isinstance(err, str):
        msg = err
    elif isinstance(detail, str):
        msg = detail
    elif detail is not None:
        msg = json.dumps(detail, ensure_ascii=False)
    elif err is not None:
        msg = json.dumps(err, ensure_ascii=False)
    else:
        msg = "stream failed"
    if not msg.strip():
        msg = "stream failed"
    code = _str(fr.get("code"))
    if msg.strip().startswith("Chunk serialization failed"):
        return ChunkError(code or INTERNAL_ERROR, msg)
    code = code or classify_message(msg)
    return error_for(code, msg, retryable=code in (RATE_LIMIT_EXCEEDED, OVERLOADED))


def close_error(code: Optional[int], reason: str = "", detail: str = "") -> RunAgentError:
    """A socket closed (or failed) before ``stream_completed``."""
    from .errors import CONNECTION_ERROR
    if code is not None:
        msg = "stream closed before completion (close %d%s)" % (code, (": " + reason) if reason else "")
    else:
        msg = "stream closed before completion" + ((": " + detail) if detail else "")
    return error_for(OVERLOADED if code == 1013 else CONNECTION_ERROR, msg, retryable=True)


def encode_request(tag: str, args: Tuple[Any, ...], kwargs: Mapping[str, Any], timeout_seconds: int = 0,
                   user: Optional[Mapping[str, Any]] = None) -> bytes:
    req: dict = {"entrypoint_tag": tag, "input_args": list(args), "input_kwargs": dict(kwargs)}
    if timeout_seconds > 0:
        req["timeout_seconds"] = timeout_seconds
    if user:
        req.update(user)
    try:
        return json.dumps(req, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise error_for(VALIDATION_ERROR, "cannot encode input as JSON: %s" % exc) from None
