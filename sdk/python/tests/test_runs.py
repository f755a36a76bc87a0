"""Background runs and re-joinable streams against a real `runagent server`
(the platform): start_run / wait_run / get_run / cancel_run, sync and
async, run_stream_resumable re-joining through a proxy that cuts the
connection every few kilobytes, and join_stream after breaking out of a
stream. Scripted SSE answers (httpx.MockTransport) pin what a real server
does not do on demand: which error events re-join, replayed ids, a server
naming no run."""
import asyncio
import json
import os
import socket
import subprocess
import threading
import time

import httpx
import pytest

import runagent_client as ra
from conftest import free_port
from fakes import FakeClock

SLOW_ASYNC = '''import asyncio


async def nap(path, seconds=30):
    with open(path, "a") as f:
        f.write("started\\n")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        with open(path, "a") as f:
            f.write("cancelled\\n")
        raise
    return "rested"
'''


class Platform:
    def __init__(self, binary, root):
        self.root = root
        self.env = dict(os.environ, RUNAGENT_CACHE_DIR=str(root / "cache"))
        self.port = free_port()
        data = root / "data"
        self.proc = subprocess.Popen([binary, "server", "--port", str(self.port), "--data-dir", str(data)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.base_url = "http://127.0.0.1:%d" % self.port
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(self.base_url + "/api/v1/health").status_code == 200 and (data / "admin-key").exists():
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                pytest.fail("runagent server did not start: %s" % self.proc.stderr.read().decode(errors="replace"))
            time.sleep(0.05)
        self.key = (data / "admin-key").read_text().strip()
        agent = root / "agent"
        subprocess.run([binary, "init", str(agent), "--template", "showcase"], env=self.env, check=True,
                       capture_output=True, timeout=120)
        (agent / "nap.py").write_text(SLOW_ASYNC)
        cfg_path = agent / "runagent.config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["agent_architecture"]["entrypoints"].append({"file": "nap.py", "module": "nap", "tag": "nap"})
        cfg_path.write_text(json.dumps(cfg))
        r = subprocess.run([binary, "deploy", str(agent), "--server", self.base_url, "--api-key", self.key, "--json"],
                           env=self.env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.fail("runagent deploy: %s %s" % (r.stdout, r.stderr))
        self.agent_id = json.loads(r.stdout)["agent_id"]

    def client(self, tag, cls=ra.RunAgentClient, base_url=None, **kw):
        return cls(self.agent_id, tag, base_url=base_url or self.base_url, api_key=self.key, **kw)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)


@pytest.fixture(scope="module")
def platform(runagent_bin, tmp_path_factory):
    p = Platform(runagent_bin, tmp_path_factory.mktemp("platform"))
    yield p
    p.stop()


class CuttingProxy:
    """Forwards to a server and cuts each connection after it has passed
    `budget` bytes from the server: a stream through it drops again and again."""

    def __init__(self, target_port, budget):
        self.budget, self.target = budget, ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        up = socket.create_connection(self.target)
        def client_to_server():
            try:
                while True:
                    b = c.recv(65536)
                    if not b:
                        break
                    up.sendall(b)
            except OSError:
                pass
        threading.Thread(target=client_to_server, daemon=True).start()
        passed = 0
        try:
            while passed < self.budget:
                b = up.recv(min(4096, self.budget - passed))
                if not b:
                    return
                c.sendall(b)
                passed += len(b)
            self.cuts += 1
        except OSError:
            pass
        finally:
            for s in (c, up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self.sock.close()


def test_background_run(platform):
    c = platform.client("add")
    run = c.start_run(2, 40)
    assert run["status"] == "pending" and run["run_id"]
    done = c.wait_run(run["run_id"], timeout=30)
    assert done["status"] == "completed" and done["output_data"] == 42 and done["attempts"] == 1
    assert c.get_run(run["run_id"])["status"] == "completed"


def test_idempotency_key(platform, tmp_path):
    c = platform.client("add")
    opts = ra.RunOptions(idempotency_key="py-sdk-1")
    a, b = c.start_run(1, 2, run_options=opts), c.start_run(1, 2, run_options=opts)
    assert a["run_id"] == b["run_id"]
    with pytest.raises(ra.RunAgentError) as e:
        c.start_run(5, 5, run_options=opts)
    assert e.value.code == "RESOURCE_ALREADY_EXISTS"


def test_cancel_reaches_the_task(platform, tmp_path):
    marks = tmp_path / "nap"
    c = platform.client("nap")
    run = c.start_run(str(marks), 60)
    deadline = time.time() + 15
    while c.get_run(run["run_id"])["status"] != "running" and time.time() < deadline:
        time.sleep(0.05)
    cancelled = c.cancel_run(run["run_id"])
    assert cancelled["status"] == "cancelled"
    deadline = time.time() + 10
    while "cancelled" not in (marks.read_text() if marks.exists() else "") and time.time() < deadline:
        time.sleep(0.05)
    assert marks.read_text() == "started\ncancelled\n"


def test_async_client_runs(platform):
    async def go():
        async with platform.client("add", cls=ra.AsyncRunAgentClient) as c:
            run = await c.start_run(a=20, b=22)
            done = await c.wait_run(run["run_id"])
            assert done["status"] == "completed" and done["output_data"] == 42
            assert (await c.get_run(run["run_id"]))["run_id"] == run["run_id"]
            ended = await c.cancel_run(run["run_id"])
            assert ended["status"] == "completed"  # it had ended: cancel answers it as it is
    asyncio.run(go())


def test_stream_resumes_after_drops(platform):
    proxy = CuttingProxy(platform.port, budget=3000)
    try:
        c = platform.client("count_stream", base_url="http://127.0.0.1:%d" % proxy.port,
                            retry=ra.RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05))
        chunks = list(c.run_stream_resumable(n=600, delay=0.002))
    finally:
        proxy.close()
    assert chunks == [{"i": i} for i in range(600)]
    assert proxy.cuts >= 10, "the proxy cut the stream %d times: the test would prove nothing" % proxy.cuts


def test_stream_resumable_agent_error(platform):
    c = platform.client("fail_stream")
    got = []
    with pytest.raises(ra.RunAgentError) as e:
        for ch in c.run_stream_resumable(after=2):
            got.append(ch)
    assert len(got) == 2 and e.value.code == "INTERNAL_ERROR"


FAST_RETRY = ra.RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)
COUNT = [{"i": i} for i in range(50)]


def test_async_stream_resumes_after_drops(platform):
    proxy = CuttingProxy(platform.port, budget=3000)

    async def go():
        async with platform.client("count_stream", cls=ra.AsyncRunAgentClient) as direct, \
                platform.client("count_stream", cls=ra.AsyncRunAgentClient, retry=FAST_RETRY,
                                base_url="http://127.0.0.1:%d" % proxy.port) as cut:
            whole = [ch async for ch in direct.run_stream_resumable(n=600)]
            s = cut.run_stream_resumable(n=600, delay=0.002)
            return whole, [ch async for ch in s], s
    try:
        whole, got, s = asyncio.run(go())
    finally:
        proxy.close()
    assert whole == [{"i": i} for i in range(600)]
    assert got == whole
    assert proxy.cuts >= 10, "the proxy cut the stream %d times: the test would prove nothing" % proxy.cuts
    assert s.reconnects >= proxy.cuts - 1  # each cut before the end was one re-join
    assert s.run_id and s.last_event_id == "599" and s.total_chunks == 600 and s.error is None


def test_join_stream_after_break(platform):
    c = platform.client("count_stream")
    seen = []
    with c.run_stream_resumable(n=50, delay=0.002) as s:
        for ch in s:
            seen.append(ch)
            if len(seen) == 7:
                break
    assert s.run_id and s.last_event_id == "6"
    rest = c.join_stream(s.run_id, s.last_event_id)
    assert seen + list(rest) == COUNT
    assert rest.run_id == s.run_id and rest.last_event_id == "49" and rest.total_chunks == 50
    assert c.wait_run(s.run_id)["status"] == "completed"  # leaving the stream did not stop the run
    assert list(c.join_stream(s.run_id)) == COUNT                 # from the first event
    assert list(c.join_stream(s.run_id, 47)) == COUNT[48:]         # an int id
    assert list(c.join_stream(s.run_id, "49")) == []               # after the last chunk: just the end
    # another entrypoint's client joins it all the same (the run id names it)
    assert list(c.with_entrypoint("add").join_stream(s.run_id, "44")) == COUNT[45:]


def test_async_join_stream_after_break(platform):
    async def go():
        async with platform.client("count_stream", cls=ra.AsyncRunAgentClient) as c:
            s = c.run_stream_resumable(n=50, delay=0.002)
            seen = []
            async for ch in s:
                seen.append(ch)
                if len(seen) == 7:
                    break
            run_id, last = s.run_id, s.last_event_id
            del s  # dropped without aclose(): its connection is closed later, the run goes on
            rest = await c.join_stream(run_id, last)  # opened before the first chunk
            assert rest.run_id == run_id
            got = [ch async for ch in rest]
            again = [ch async for ch in c.join_stream(run_id)]
            return run_id, last, seen, got, rest, again
    run_id, last, seen, got, rest, again = asyncio.run(go())
    assert last == "6" and seen + got == COUNT and again == COUNT
    assert rest.last_event_id == "49" and rest.total_chunks == 50
    # the sync client re-joins the async one's run
    assert list(platform.client("count_stream").join_stream(run_id, last)) == COUNT[7:]


def test_join_stream_of_cancelled_run(platform):
    c = platform.client("count_stream")
    s = c.run_stream_resumable(n=100000, delay=0.01)
    first = [next(s) for _ in range(3)]
    s.close()
    assert first == COUNT[:3]
    assert c.cancel_run(s.run_id)["status"] == "cancelled"
    j = c.join_stream(s.run_id, s.last_event_id)
    got = []
    with pytest.raises(ra.RunAgentCancelledError) as e:
        for ch in j:
            got.append(ch)
    assert [ch["i"] for ch in got] == list(range(3, 3 + len(got)))  # the rest, once, until the cancel
    assert e.value.code == "CANCELLED" and j.error is e.value
    with pytest.raises(ra.RunAgentCancelledError):  # after its last chunk: just its end
        list(c.join_stream(s.run_id, j.last_event_id))


def test_async_stream_resumable_errors(platform):
    async def go():
        async with platform.client("fail_stream", cls=ra.AsyncRunAgentClient) as c:
            got = []
            s = c.run_stream_resumable(after=2)
            with pytest.raises(ra.InternalError):
                async for ch in s:
                    got.append(ch)
            assert len(got) == 2 and s.error is not None and s.last_event_id == "1"
            j = c.join_stream(s.run_id, "0")  # the error is in the run's log: the join ends with it
            with pytest.raises(ra.InternalError):
                async for ch in j:
                    got.append(ch)
            assert got[2:] == got[1:2]
            with pytest.raises(ra.NotFoundError):
                await c.join_stream("no-such-run")
    asyncio.run(go())
    c = platform.client("add")
    run = c.start_run(1, 2)
    with pytest.raises(ra.NotFoundError):  # a background run has no event log
        list(c.join_stream(run["run_id"]))
    for bad in (("",), ("r", "x1"), ("r", 1.5)):
        with pytest.raises(ra.ValidationError):
            c.join_stream(*bad)
    with pytest.raises(ra.ValidationError):  # not a streaming tag: no request
        c.run_stream_resumable()


# --- scripted SSE answers ---------------------------------------------------

AGENT = "11111111-2222-3333-4444-555555555555"


def sse(*events):
    """SSE text of (event, id, data) triples; a str is a raw line (a comment)."""
    out = []
    for ev in events:
        if isinstance(ev, str):
            out.append(ev + "\n\n")
            continue
        kind, eid, data = ev
        out.append(("id: %s\n" % eid if eid is not None else "") + "event: %s\ndata: %s\n\n" % (kind, data))
    return "".join(out)


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body; cut: the connection drops after it."""

    def __init__(self, text, cut):
        self.data, self.cut = text.encode(), cut

    def __iter__(self):
        yield self.data
        if self.cut:
            raise httpx.ReadError("connection reset by peer")

    async def __aiter__(self):
        yield self.data
        if self.cut:
            raise httpx.ReadError("connection reset by peer")


def scripted(cls, *answers, **kw):
    """A client of cls whose requests get answers (status, headers, text, cut) in turn."""
    seen = []

    def handler(request):
        seen.append(request)
        status, headers, text, cut = answers[len(seen) - 1]
        return httpx.Response(status, headers={"Content-Type": "text/event-stream", **headers}, stream=Body(text, cut))
    transport = httpx.MockTransport(handler)
    http = httpx.AsyncClient(transport=transport) if cls is ra.AsyncRunAgentClient else httpx.Client(transport=transport)
    c = cls(AGENT, "count_stream", base_url="http://runagent.test", api_key="k", retry=FAST_RETRY,
            clock=FakeClock().clock(), http_client=http, **kw)
    return c, seen


def drain(c, stream_of):
    """The items of stream_of(c) (sync or async) and the error that ended it."""
    if isinstance(c, ra.AsyncRunAgentClient):
        async def go():
            s, got = stream_of(c), []
            try:
                async for ch in s:
                    got.append(ch)
            except ra.RunAgentError as e:
                return s, got, e
            return s, got, None
        return asyncio.run(go())
    s, got = stream_of(c), []
    try:
        for ch in s:
            got.append(ch)
    except ra.RunAgentError as e:
        return s, got, e
    return s, got, None


BOTH = pytest.mark.parametrize("cls", [ra.RunAgentClient, ra.AsyncRunAgentClient], ids=["sync", "async"])
LOC = {"Content-Location": "/api/v1/runs/r%2F1"}


@BOTH
def test_scripted_rejoins(cls):
    c, seen = scripted(
        cls,
        (200, LOC, sse(("start", None, '{"run_id":"r/1","invocation_id":"r/1"}'), ("chunk", 0, '{"i":0}'),
                       ("chunk", 1, '{"i":1}')) + "id: 2\nevent: chunk\ndata: {\"i\":", True),  # cut mid-event
        (200, {}, sse(("chunk", 1, '{"i":1}'), ("chunk", 2, '{"i":2}'),  # 1 replayed: skipped
                      ("error", None, '{"code":"CONNECTION_ERROR","message":"the event log could not be read"}')), False),
        (200, {}, sse(": heartbeat", ("chunk_error", 3, '{"message":"Chunk serialization failed: x"}'),
                      ("chunk", 4, "NaN"), ("chunk", 5, "{not json"), ("done", 6, '{"total_chunks":6}')), False),
    )
    s, got, err = drain(c, lambda c: c.run_stream_resumable(n=6))
    assert err is None
    assert got[:3] == [{"i": 0}, {"i": 1}, {"i": 2}] and got[4] is None and len(got) == 6
    assert all(isinstance(g, ra.ChunkError) for g in (got[3], got[5])) and "serialization" in got[3].message
    assert (s.run_id, s.last_event_id, s.total_chunks, s.reconnects) == ("r/1", "5", 6, 2)
    assert [(r.method, r.url.raw_path.decode(), r.headers.get("last-event-id")) for r in seen] == [
        ("POST", "/api/v1/agents/%s/run-stream" % AGENT, None),
        ("GET", "/api/v1/runs/r%2F1/stream", "1"),
        ("GET", "/api/v1/runs/r%2F1/stream", "2")]
    body = json.loads(seen[0].content)
    assert body["on_disconnect"] == "continue" and body["input_kwargs"] == {"n": 6}
    assert all(r.headers["accept"] == "text/event-stream" and r.headers["authorization"] == "Bearer k" for r in seen)


@BOTH
def test_scripted_error_events(cls):
    # An error event in the run's log (it has an id) ends the stream, CONNECTION_ERROR too.
    c, seen = scripted(cls, (200, {}, sse(("chunk", 8, "8"), ("error", 9, '{"code":"CONNECTION_ERROR","message":"x"}')), False))
    s, got, err = drain(c, lambda c: c.join_stream("r1", "7"))
    assert got == [8] and err.code == "CONNECTION_ERROR" and s.error is err and len(seen) == 1
    assert seen[0].headers["last-event-id"] == "7"
    # Any other code ends it; without a code the message is classified.
    c, seen = scripted(cls, (200, {}, sse(("error", None, '{"code":"AGENT_CRASHED","message":"gone"}')), False))
    assert isinstance(drain(c, lambda c: c.join_stream("r1"))[2], ra.AgentCrashedError) and len(seen) == 1
    c, seen = scripted(cls, (200, {}, sse(("error", None, '{"message":"request timed out"}')), False))
    assert drain(c, lambda c: c.join_stream("r1"))[2].code == "TIMEOUT"
    # on_chunk_error="raise": the chunk error ends the stream, after which a join goes on.
    c, seen = scripted(cls, (200, {}, sse(("chunk", 0, "0"), ("chunk_error", 1, '{"message":"bad"}'), ("chunk", 2, "2")), False),
                       on_chunk_error="raise")
    s, got, err = drain(c, lambda c: c.join_stream("r1"))
    assert got == [0] and type(err) is ra.ChunkError and err.message == "bad" and s.last_event_id == "1"


@BOTH
def test_scripted_no_second_post(cls):
    # 200 without a run id (no Content-Location, no start event), then a drop:
    # posting again would start a second run.
    c, seen = scripted(cls, (200, {}, sse(("chunk", 0, "0")), True))
    s, got, err = drain(c, lambda c: c.run_stream_resumable())
    assert got == [0] and err.code == "INTERNAL_ERROR" and "named no run" in err.message and len(seen) == 1
    # 503 before the stream: posted again; 404 on a join: raised at once.
    c, seen = scripted(cls, (503, {"Content-Type": "application/json"}, "", False), (200, LOC, sse(("done", None, "{}")), False))
    assert drain(c, lambda c: c.run_stream_resumable())[1:] == ([], None) and [r.method for r in seen] == ["POST", "POST"]
    c, seen = scripted(cls, (404, {"Content-Type": "application/json"},
                             '{"success":false,"error":{"code":"NOT_FOUND","message":"no event log"}}', False))
    err = drain(c, lambda c: c.join_stream("r1"))[2]
    assert isinstance(err, ra.NotFoundError) and err.message == "no event log" and len(seen) == 1
