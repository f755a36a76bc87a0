import asyncio
import json

import httpx
import pytest

import runagent_client as ra
from runagent_client.retry import Retrier, RetryPolicy
from fakes import FakeClock

AGENT = "11111111-2222-3333-4444-555555555555"


def retryable(retry_after=None):
    return ra.OverloadedError(message="busy", status=503, retry_after=retry_after, retryable=True)


def test_defaults_and_normalization():
    p = RetryPolicy().normalized()
    assert (p.max_attempts, p.initial_backoff, p.max_backoff, p.max_elapsed) == (4, 0.2, 5.0, 30.0)
    assert RetryPolicy(max_attempts=-3).normalized().max_attempts == 1
    assert RetryPolicy(initial_backoff=2, max_backoff=1).normalized().max_backoff == 2
    assert RetryPolicy(max_elapsed=-1).normalized().max_elapsed == -1
    assert ra.NO_RETRY.normalized().max_attempts == 1


def test_backoff_is_capped_exponential_full_jitter():
    fc = FakeClock()
    r = Retrier(RetryPolicy(max_attempts=10, max_elapsed=-1), fc.clock())
    for _ in range(9):
        r.wait(retryable())
    assert fc.sleeps == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0]
    with pytest.raises(ra.OverloadedError):
        r.wait(retryable())  # the 10th attempt was the last


def test_jitter_draws_from_zero_to_cap():
    seen = []
    fc = FakeClock(rand=lambda lo, hi: seen.append((lo, hi)) or lo)
    r = Retrier(RetryPolicy(), fc.clock())
    r.wait(retryable())
    r.wait(retryable())
    assert seen == [(0.0, 0.2), (0.0, 0.4)] and fc.sleeps == [0.0, 0.0]


def test_default_max_attempts_is_4():
    fc = FakeClock()
    r = Retrier(RetryPolicy(), fc.clock())
    for _ in range(3):
        r.wait(retryable())
    with pytest.raises(ra.OverloadedError):
        r.wait(retryable())
    assert len(fc.sleeps) == 3


def test_not_retryable_raises_at_once():
    fc = FakeClock()
    r = Retrier(RetryPolicy(), fc.clock())
    with pytest.raises(ra.InternalError):
        r.wait(ra.InternalError(message="x"))
    assert fc.sleeps == []


def test_retry_after_is_a_floor():
    fc = FakeClock()
    r = Retrier(RetryPolicy(), fc.clock())
    r.wait(retryable(retry_after=2.5))
    r.wait(retryable(retry_after=0.1))
    assert fc.sleeps == [2.5, 0.4]


def test_max_elapsed_bounds_total_time():
    fc = FakeClock()
    r = Retrier(RetryPolicy(max_attempts=100), fc.clock())
    with pytest.raises(ra.OverloadedError) as ei:
        for _ in range(100):
            r.wait(retryable(retry_after=10))
    assert fc.sleeps == [10, 10, 10] and ei.value.retry_after == 10  # a 4th wait would end at 40 s > 30 s


def test_deadline_bounds_retries():
    fc = FakeClock()
    r = Retrier(RetryPolicy(), fc.clock(), deadline=fc.now() + 1.0)
    with pytest.raises(ra.OverloadedError):
        r.wait(retryable(retry_after=2))
    assert fc.sleeps == []


# --- through the clients, with httpx.MockTransport --------------------------

def ok(value):
    return httpx.Response(200, json={"success": True, "data": json.dumps({"type": "object", "payload": json.dumps(value)}),
                                     "message": "Agent execution completed successfully", "error": None})


def scripted(responses, calls):
    def handler(request):
        calls.append(request)
        r = responses.pop(0)
        if isinstance(r, Exception):
            raise r
        return r
    return handler


def sync_client(responses, calls, fc, tag="echo", **kw):
    http = httpx.Client(transport=httpx.MockTransport(scripted(responses, calls)))
    return ra.RunAgentClient(AGENT, tag, base_url="http://agents.test", http_client=http, clock=fc.clock(), **kw)


def async_client(responses, calls, fc, tag="echo", **kw):
    http = httpx.AsyncClient(transport=httpx.MockTransport(scripted(responses, calls)))
    return ra.AsyncRunAgentClient(AGENT, tag, base_url="http://agents.test", http_client=http, clock=fc.clock(), **kw)


def test_503_then_success():
    calls, fc = [], FakeClock()
    c = sync_client([httpx.Response(503), ok({"a": 1})], calls, fc)
    assert c.run(1) == {"a": 1} and len(calls) == 2 and fc.sleeps == [0.2]


def test_429_honours_retry_after():
    calls, fc = [], FakeClock()
    c = sync_client([httpx.Response(429, headers={"Retry-After": "3"}), ok(1)], calls, fc)
    assert c.run() == 1 and fc.sleeps == [3.0]


def test_gives_up_after_4_attempts():
    calls, fc = [], FakeClock()
    c = sync_client([httpx.Response(503, headers={"Retry-After": "1"}) for _ in range(5)], calls, fc)
    with pytest.raises(ra.OverloadedError) as ei:
        c.run()
    assert len(calls) == 4 and len(fc.sleeps) == 3 and ei.value.retry_after == 1.0 and ei.value.status == 503


def test_connection_failure_is_retried():
    calls, fc = [], FakeClock()
    c = sync_client([httpx.ConnectError("refused"), httpx.ConnectError("refused"), ok("x")], calls, fc)
    assert c.run() == "x" and len(calls) == 3 and fc.sleeps == [0.2, 0.4]


def test_server_disconnect_before_response_is_retried():
    calls, fc = [], FakeClock()
    c = sync_client([httpx.RemoteProtocolError("Server disconnected"), ok(2)], calls, fc)
    assert c.run() == 2 and len(calls) == 2


def test_connection_failure_exhausts():
    calls, fc = [], FakeClock()
    c = sync_client([httpx.ConnectError("refused")] * 4, calls, fc)
    with pytest.raises(ra.RunAgentConnectionError) as ei:
        c.run()
    assert len(calls) == 4 and ei.value.status is None and "refused" in ei.value.message


@pytest.mark.parametrize("resp,cls", [
    (httpx.Response(500, json={"success": False, "error": {"code": "INTERNAL_ERROR", "message": "m"}}), ra.InternalError),
    (httpx.Response(502, json={"success": False, "error": {"code": "AGENT_CRASHED", "message": "m"}}), ra.AgentCrashedError),
    (httpx.Response(504, json={"success": False, "error": {"code": "TIMEOUT", "message": "m"}}), ra.RunAgentTimeoutError),
    (httpx.Response(400), ra.ValidationError),
    (httpx.Response(401), ra.AuthenticationError),
    (httpx.Response(200, json={"success": False, "error": {"code": "INTERNAL_ERROR", "message": "raised"}}), ra.InternalError),
    (httpx.ReadTimeout("slow"), ra.RunAgentTimeoutError),
])
def test_not_retried(resp, cls):
    calls, fc = [], FakeClock()
    responses = [resp, ok(1)]
    c = sync_client(responses, calls, fc)
    with pytest.raises(cls):
        c.run()
    assert len(calls) == 1 and fc.sleeps == []


def test_async_retries():
    calls, fc = [], FakeClock()
    c = async_client([httpx.Response(503), httpx.ConnectError("refused"), ok([1, 2])], calls, fc)
    assert asyncio.run(c.run()) == [1, 2]
    assert len(calls) == 3 and fc.sleeps == [0.2, 0.4]
    calls2, fc2 = [], FakeClock()
    c2 = async_client([httpx.Response(429)] * 4, calls2, fc2)
    with pytest.raises(ra.RateLimitError):
        asyncio.run(c2.run())
    assert len(calls2) == 4 and len(fc2.sleeps) == 3


def test_request_shape_and_auth():
    calls, fc = [], FakeClock()
    c = sync_client([ok(1), ok(2)], calls, fc, api_key="sekret", timeout=2.5)
    c.run(1, "é", k={"x": None})
    req = calls[0]
    assert req.method == "POST" and str(req.url) == "http://agents.test/api/v1/agents/%s/run" % AGENT
    assert req.headers["Authorization"] == "Bearer sekret" and req.headers["Content-Type"] == "application/json"
    body = json.loads(req.content.decode("utf-8"))
    assert body == {"entrypoint_tag": "echo", "input_args": [1, "é"], "input_kwargs": {"k": {"x": None}},
                    "timeout_seconds": 3}
    assert "é".encode() in req.content  # not \u-escaped
    calls2 = []
    c2 = sync_client([ok(1)], calls2, fc, api_key=None)
    c2.run()
    assert "Authorization" not in calls2[0].headers
    assert json.loads(calls2[0].content)["input_args"] == [] and json.loads(calls2[0].content)["input_kwargs"] == {}


def test_tag_guardrails_make_no_request():
    calls, fc = [], FakeClock()
    c = sync_client([], calls, fc, tag="count_stream")
    with pytest.raises(ra.ValidationError):
        c.run()
    with pytest.raises(ra.ValidationError):
        c.with_entrypoint("echo").run_stream()
    a = async_client([], calls, fc, tag="count_stream")
    with pytest.raises(ra.ValidationError):
        asyncio.run(a.run())
    with pytest.raises(ra.ValidationError):
        a.with_entrypoint("echo").run_stream()
    assert calls == []


def test_unencodable_input():
    calls, fc = [], FakeClock()
    c = sync_client([], calls, fc)
    with pytest.raises(ra.ValidationError):
        c.run(object())
    with pytest.raises(ra.ValidationError):
        c.run(float("nan"))
    assert calls == []


def test_undecodable_result():
    calls, fc = [], FakeClock()
    c = sync_client([httpx.Response(200, json={"success": True, "data": "garbage"})], calls, fc)
    with pytest.raises(ra.InternalError) as ei:
        c.run()
    assert ei.value.status == 200 and "malformed" in ei.value.message
