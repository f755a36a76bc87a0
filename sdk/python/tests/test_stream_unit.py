"""Stream protocol handling against a scripted in-process WebSocket server."""
import asyncio
import json
import threading

import pytest
from websockets.sync.server import serve

import runagent_client as ra
from fakes import FakeClock

AGENT = "11111111-2222-3333-4444-555555555555"


def data(value):
    return {"type": "data", "content": json.dumps({"type": "object", "payload": json.dumps(value)})}


STARTED = {"type": "status", "status": "stream_started", "invocation_id": "inv-1"}
DONE = {"type": "status", "status": "stream_completed", "total_chunks": 2, "execution_time": 0.1, "invocation_id": "inv-1"}


class FakeServer:
    """Each connection plays the next script: a list of frames (dicts) or
    ("close", code) / ("http", status, headers)."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.requests = []
        self.headers = []
        self.paths = []
        self.connections = 0

        def process_request(conn, request):
            self.connections += 1
            self.paths.append(request.path)
            self.headers.append(dict(request.headers.raw_items()))
            script = self.scripts[0]
            if isinstance(script, tuple) and script[0] == "http":
                self.scripts.pop(0)
                resp = conn.respond(script[1], "busy\n")
                for k, v in script[2].items():
                    resp.headers[k] = v
                return resp
            return None

        def handler(ws):
            script = self.scripts.pop(0)
            self.requests.append(json.loads(ws.recv()))
            for item in script:
                if isinstance(item, tuple) and item[0] == "close":
                    ws.close(item[1])
                    return
                ws.send(json.dumps(item))
            ws.close()

        self.server = serve(handler, "127.0.0.1", 0, process_request=process_request)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def fake():
    servers = []

    def make(*scripts):
        s = FakeServer(scripts)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def client(srv, fc=None, tag="count_stream", **kw):
    fc = fc or FakeClock()
    return ra.RunAgentClient(AGENT, tag, host="127.0.0.1", port=srv.port, clock=fc.clock(), **kw)


def aclient(srv, fc=None, tag="count_stream", **kw):
    fc = fc or FakeClock()
    return ra.AsyncRunAgentClient(AGENT, tag, host="127.0.0.1", port=srv.port, clock=fc.clock(), **kw)


def test_chunks_and_request(fake):
    srv = fake([STARTED, data(1), data({"a": "é"}), DONE])
    st = client(srv, api_key="k").run_stream(1, n=2)
    assert list(st) == [1, {"a": "é"}]
    assert st.invocation_id == "inv-1" and st.total_chunks == 2 and st.error is None
    assert srv.requests == [{"entrypoint_tag": "count_stream", "input_args": [1], "input_kwargs": {"n": 2}}]
    assert srv.paths == ["/api/v1/agents/%s/run-stream?token=k" % AGENT]
    assert srv.headers[0]["Authorization"] == "Bearer k"


def test_no_token_without_key(fake):
    srv = fake([STARTED, DONE])
    assert list(client(srv).run_stream()) == []
    assert srv.paths == ["/api/v1/agents/%s/run-stream" % AGENT] and "Authorization" not in srv.headers[0]


def test_error_before_start_raised_by_run_stream(fake):
    srv = fake([{"type": "error", "detail": "Entrypoint x_stream not found", "code": "NOT_FOUND"}, ("close", 1003)])
    with pytest.raises(ra.NotFoundError, match="x_stream not found"):
        client(srv).run_stream()
    assert srv.connections == 1


def test_close_before_completed_is_connection_error_and_not_retried_after_data(fake):
    srv = fake([STARTED, data(1), ("close", 1000)], [STARTED, data(1), DONE])
    fc = FakeClock()
    st = client(srv, fc).run_stream()
    assert next(st) == 1
    with pytest.raises(ra.RunAgentConnectionError, match="closed before completion"):
        next(st)
    assert srv.connections == 1 and fc.sleeps == []
    with pytest.raises(StopIteration):
        next(st)


def test_retried_before_any_data(fake):
    srv = fake([STARTED, {"type": "error", "error": "busy", "code": "OVERLOADED"}],
               ("http", 503, {"Retry-After": "2"}),
               [STARTED, ("close", 1011)],
               [STARTED, data("ok"), DONE])
    fc = FakeClock()
    st = client(srv, fc).run_stream()
    assert list(st) == ["ok"]
    assert srv.connections == 4 and fc.sleeps == [0.2, 2.0, 0.8]


def test_handshake_errors(fake):
    srv = fake(("http", 401, {}))
    with pytest.raises(ra.AuthenticationError) as ei:
        client(srv).run_stream()
    assert ei.value.status == 401
    srv = fake(*[("http", 429, {})] * 4)
    fc = FakeClock()
    with pytest.raises(ra.RateLimitError):
        client(srv, fc).run_stream()
    assert srv.connections == 4 and len(fc.sleeps) == 3


def test_agent_error_after_chunks(fake):
    srv = fake([STARTED, data(0), data(1), {"type": "error", "error": "Streaming error: boom"}])
    st = client(srv).run_stream()
    got = []
    with pytest.raises(ra.InternalError, match="Streaming error: boom") as ei:
        for x in st:
            got.append(x)
    assert got == [0, 1] and st.error is ei.value and srv.connections == 1


CHUNK_FAIL = {"type": "error", "error": "Chunk serialization failed: cannot encode"}


def test_chunk_error_yielded_by_default(fake):
    srv = fake([STARTED, data(0), CHUNK_FAIL, data(2), {"type": "data", "content": "garbage"}, DONE])
    items = list(client(srv).run_stream())
    assert items[0] == 0 and items[2] == 2
    assert isinstance(items[1], ra.ChunkError) and "Chunk serialization failed" in items[1].message
    assert isinstance(items[3], ra.ChunkError) and "undecodable" in items[3].message


def test_chunk_error_skip_and_raise(fake):
    srv = fake([STARTED, CHUNK_FAIL, data(1), DONE], [STARTED, data(0), CHUNK_FAIL, data(1), DONE])
    assert list(client(srv, on_chunk_error="skip").run_stream()) == [1]
    st = client(srv, on_chunk_error="raise").run_stream()
    assert next(st) == 0
    with pytest.raises(ra.ChunkError):
        next(st)


def test_chunk_error_first_blocks_retry(fake):
    srv = fake([STARTED, CHUNK_FAIL, ("close", 1000)])
    st = client(srv).run_stream()
    assert isinstance(next(st), ra.ChunkError)
    with pytest.raises(ra.RunAgentConnectionError):
        next(st)
    assert srv.connections == 1


def test_unknown_frames_ignored_and_early_close(fake):
    srv = fake([STARTED, {"type": "ping"}, data(1), {"type": "status", "status": "other"}, data(2), DONE])
    with client(srv).run_stream() as st:
        assert next(st) == 1
    with pytest.raises(StopIteration):
        next(st)


def test_async_stream(fake):
    srv = fake([STARTED, data(0), CHUNK_FAIL, data(1), DONE],
               [STARTED, data(0), {"type": "error", "error": "Streaming error: late"}],
               ("http", 503, {}), [STARTED, data("again"), DONE])
    fc = FakeClock()

    async def main():
        c = aclient(srv, fc)
        items = [x async for x in c.run_stream()]
        assert items[0] == 0 and isinstance(items[1], ra.ChunkError) and items[2] == 1
        got = []
        with pytest.raises(ra.InternalError, match="late"):
            async for x in c.run_stream():
                got.append(x)
        assert got == [0]
        st = await c.run_stream()  # opened (and retried) before iteration
        assert st.invocation_id == "inv-1"
        assert [x async for x in st] == ["again"]
        await c.aclose()
    asyncio.run(main())
    assert fc.sleeps == [0.2]
