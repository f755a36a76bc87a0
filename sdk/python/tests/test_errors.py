import email.utils
import json
import time

import pytest

import runagent_client as ra
from runagent_client.wire import (
    close_error, code_for_status, frame_error, http_error, parse_envelope, parse_retry_after,
)


def env_err(code, message, **extra):
    return json.dumps({"success": False, "data": None, "message": None,
                       "error": {"code": code, "message": message, "details": None, "field": extra.get("field")},
                       "timestamp": "2025-01-01T00:00:00Z", "request_id": "rid-1"}).encode()


@pytest.mark.parametrize("status,code,cls", [
    (400, "VALIDATION_ERROR", ra.ValidationError), (401, "AUTHENTICATION_ERROR", ra.AuthenticationError),
    (403, "PERMISSION_ERROR", ra.PermissionDeniedError), (404, "NOT_FOUND", ra.NotFoundError),
    (413, "VALIDATION_ERROR", ra.ValidationError), (422, "VALIDATION_ERROR", ra.ValidationError),
    (429, "RATE_LIMIT_EXCEEDED", ra.RateLimitError), (500, "INTERNAL_ERROR", ra.InternalError),
    (502, "INTERNAL_ERROR", ra.InternalError), (503, "OVERLOADED", ra.OverloadedError),
    (504, "TIMEOUT", ra.RunAgentTimeoutError), (418, "INTERNAL_ERROR", ra.InternalError),
])
def test_status_without_envelope(status, code, cls):
    e = http_error(status, {}, b"plain text")
    assert type(e) is cls and e.code == code and e.status == status
    assert e.message.endswith(": plain text")
    assert e.retryable == (status in (429, 503))


@pytest.mark.parametrize("code,cls", [(c, k) for c, k in ra.errors.ERROR_CLASSES.items()])
def test_envelope_code_wins(code, cls):
    e = http_error(500, {}, env_err(code, "boom", field="input_args"))
    assert type(e) is cls and e.code == code and e.message == "boom"
    assert e.field == "input_args" and e.request_id == "rid-1" and e.status == 500


def test_crash_and_timeout_envelopes():
    assert isinstance(http_error(502, {}, env_err("AGENT_CRASHED", "died")), ra.AgentCrashedError)
    assert isinstance(http_error(504, {}, env_err("TIMEOUT", "slow")), ra.RunAgentTimeoutError)
    assert isinstance(http_error(502, {}, env_err(None, "")), ra.InternalError)


def test_unknown_code_is_base_class():
    e = http_error(500, {}, env_err("WEIRD", "x"))
    assert type(e) is ra.RunAgentError and e.code == "WEIRD"


def test_fastapi_detail():
    body = json.dumps({"detail": [{"loc": ["body", "entrypoint_tag"], "msg": "field required", "type": "x"}]}).encode()
    e = http_error(422, {}, body)
    assert isinstance(e, ra.ValidationError)
    assert e.message == '["body","entrypoint_tag"]: field required'
    assert e.details[0]["msg"] == "field required"
    e = http_error(404, {}, b'{"detail": "Not Found"}')
    assert isinstance(e, ra.NotFoundError) and e.message == "Not Found"


def test_html_body_not_in_message():
    e = http_error(502, {}, b"<html>bad gateway</html>")
    assert e.message == "Bad Gateway"


def test_retry_after():
    e = http_error(429, {"Retry-After": "3"}, b"")
    assert e.retry_after == 3.0 and e.retryable and e.message == "Too Many Requests"
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("0") is None and parse_retry_after("-1") is None and parse_retry_after("x") is None
    assert parse_retry_after(None) is None and parse_retry_after("nan") is None
    future = email.utils.formatdate(time.time() + 100, usegmt=True)
    assert 95 < parse_retry_after(future) <= 100
    assert parse_retry_after(email.utils.formatdate(time.time() - 100, usegmt=True)) is None


def test_parse_envelope():
    ok = json.dumps({"success": True, "data": '{"type": "integer", "payload": "5"}'}).encode()
    assert parse_envelope(200, {}, ok) == '{"type": "integer", "payload": "5"}'
    # the agent raised: HTTP 200 with success:false
    with pytest.raises(ra.InternalError) as ei:
        parse_envelope(200, {}, env_err("INTERNAL_ERROR", "Agent execution failed: ValueError: nope"))
    assert ei.value.message == "Agent execution failed: ValueError: nope" and ei.value.status == 200
    with pytest.raises(ra.InternalError) as ei:
        parse_envelope(200, {}, b'{"success": false, "error": null}')
    assert ei.value.message == "agent execution failed"
    with pytest.raises(ra.InternalError) as ei:
        parse_envelope(200, {}, b'{"success": false, "error": "plain"}')
    assert ei.value.message == "plain"
    for bad in (b"", b"[]", b"{}", b'{"success": "yes"}', b"<html>"):
        with pytest.raises(ra.InternalError) as ei:
            parse_envelope(200, {}, bad)
        assert "malformed response" in ei.value.message
    with pytest.raises(ra.NotFoundError):
        parse_envelope(404, {}, env_err("NOT_FOUND", "Entrypoint x not found"))


def test_error_str_and_attrs():
    e = ra.RunAgentError("TIMEOUT", "slow", 504, 2.0)
    assert str(e) == "runagent: TIMEOUT (HTTP 504): slow" and e.retry_after == 2.0
    assert str(ra.ValidationError(message="bad")) == "runagent: VALIDATION_ERROR: bad"
    assert ra.PermissionError_ is ra.PermissionDeniedError
    assert ra.TimeoutError_ is ra.RunAgentTimeoutError and ra.ConnectionError_ is ra.RunAgentConnectionError
    assert issubclass(ra.ChunkError, ra.InternalError)
    assert code_for_status(200) == "INTERNAL_ERROR"


@pytest.mark.parametrize("frame,code,cls", [
    ({"type": "error", "error": "Streaming error: boom"}, "INTERNAL_ERROR", ra.InternalError),
    ({"type": "error", "detail": "Entrypoint x_stream not found"}, "NOT_FOUND", ra.NotFoundError),
    ({"type": "error", "detail": "Entrypoint x not found", "code": "VALIDATION_ERROR"}, "VALIDATION_ERROR", ra.ValidationError),
    ({"type": "error", "error": "deadline", "code": "TIMEOUT"}, "TIMEOUT", ra.RunAgentTimeoutError),
    ({"type": "error", "error": "x", "code": "AGENT_CRASHED"}, "AGENT_CRASHED", ra.AgentCrashedError),
    ({"type": "error", "detail": "Invalid JSON"}, "VALIDATION_ERROR", ra.ValidationError),
    ({"type": "error", "detail": "missing field input_args"}, "VALIDATION_ERROR", ra.ValidationError),
    ({"type": "error", "error": "Streaming error: not found in dict"}, "INTERNAL_ERROR", ra.InternalError),
    ({"type": "error", "error": "invalid api key"}, "AUTHENTICATION_ERROR", ra.AuthenticationError),
    ({"type": "error", "error": "forbidden"}, "PERMISSION_ERROR", ra.PermissionDeniedError),
    ({"type": "error", "error": "rate limit hit"}, "RATE_LIMIT_EXCEEDED", ra.RateLimitError),
    ({"type": "error", "error": "server overloaded"}, "OVERLOADED", ra.OverloadedError),
    ({"type": "error", "error": "the call timed out"}, "TIMEOUT", ra.RunAgentTimeoutError),
    ({"type": "error", "error": "agent crashed"}, "AGENT_CRASHED", ra.AgentCrashedError),
    ({"type": "error", "error": "something"}, "INTERNAL_ERROR", ra.InternalError),
    ({"type": "error"}, "INTERNAL_ERROR", ra.InternalError),
])
def test_frame_errors(frame, code, cls):
    e = frame_error(frame)
    assert type(e) is cls and e.code == code and e.status is None
    assert e.retryable == (code in ("RATE_LIMIT_EXCEEDED", "OVERLOADED"))


def test_frame_error_messages():
    assert frame_error({"type": "error"}).message == "stream failed"
    assert frame_error({"type": "error", "detail": {"a": 1}}).message == '{"a": 1}'
    assert frame_error({"type": "error", "error": "e", "detail": "d"}).message == "e"


def test_chunk_serialization_frame():
    e = frame_error({"type": "error", "error": "Chunk serialization failed: bad"})
    assert type(e) is ra.ChunkError and e.code == "INTERNAL_ERROR" and not e.retryable


def test_close_error():
    e = close_error(1000)
    assert type(e) is ra.RunAgentConnectionError and e.retryable
    assert e.message == "stream closed before completion (close 1000)"
    assert type(close_error(1013, "busy")) is ra.OverloadedError
    assert close_error(None, detail="reset").message == "stream closed before completion: reset"
