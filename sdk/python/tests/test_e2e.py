"""End-to-end tests against `runagent serve` (the Go binary)."""
import asyncio
import threading
import time

import pytest

import runagent_client as ra
from runagent_client import RetryPolicy
from conftest import Server, free_port
from fakes import FakeClock

pytestmark = pytest.mark.e2e


@pytest.fixture
def sc(showcase):
    made = []

    def make(tag, **kw):
        made.append(ra.RunAgentClient(showcase.agent_id, tag, host="127.0.0.1", port=showcase.port, **kw))
        return made[-1]
    yield make
    for c in made:
        c.close()


@pytest.fixture
def asc(showcase):
    def make(tag, **kw):
        return ra.AsyncRunAgentClient(showcase.agent_id, tag, host="127.0.0.1", port=showcase.port, **kw)
    return make


def test_run_positional_and_kwargs(sc):
    with sc("echo") as c:
        assert c.run(1, "two", [3], x={"y": None}, z=1.5) == {"args": [1, "two", [3]], "kwargs": {"x": {"y": None}, "z": 1.5}}
        assert c.run() == {"args": [], "kwargs": {}}
        assert c.with_entrypoint("add").run(2, 3) == 5
        assert c.with_entrypoint("add").run(a=2.5, b=1) == 3.5
        assert c.with_entrypoint("greet").run(name="Ada") == {"text": "Hello, Ada!", "lang": "en"}


def test_run_with_api_key_is_accepted(sc):
    assert sc("add", api_key="any-key").run(1, 1) == 2


def test_run_async(asc):
    async def main():
        async with asc("add") as c:
            assert await c.run(2, 3) == 5
            e = c.with_entrypoint("echo")
            results = await asyncio.gather(*(e.run(i, k=i) for i in range(20)))
            assert results == [{"args": [i], "kwargs": {"k": i}} for i in range(20)]
    asyncio.run(main())


def test_large_unicode_payload(sc, asc):
    unit = "héllo wörld — 日本語 😀 \"quoted\" \\ \n"
    big = unit * (3 * 1024 * 1024 // len(unit.encode("utf-8")) + 1)
    assert len(big.encode("utf-8")) > 3 * 1024 * 1024
    with sc("echo") as c:
        assert c.run(big, k=big[:1000]) == {"args": [big], "kwargs": {"k": big[:1000]}}

    async def main():
        async with asc("echo") as c:
            assert await c.run(text=big) == {"args": [], "kwargs": {"text": big}}
    asyncio.run(main())


def test_run_stream_sync(sc):
    c = sc("count_stream")
    st = c.run_stream(n=5)
    assert isinstance(st, ra.Stream)
    assert list(st) == [{"i": i} for i in range(5)]
    assert st.invocation_id and st.total_chunks == 5
    assert list(c.with_entrypoint("list_stream").run_stream("x", "y")) == ["x", "y"]
    assert list(c.with_entrypoint("count_async_stream").run_stream(3)) == [0, 1, 2]


def test_run_stream_async(asc):
    async def main():
        async with asc("count_async_stream") as c:
            assert [x async for x in c.run_stream(n=4)] == [0, 1, 2, 3]
            assert [x async for x in c.with_entrypoint("list_async_stream").run_stream()] == ["a", "b", "c"]
            st = await c.with_entrypoint("count_stream").run_stream(n=2)
            assert st.invocation_id
            assert [x async for x in st] == [{"i": 0}, {"i": 1}]
    asyncio.run(main())


def test_fail_is_internal_error_with_message(sc, asc):
    with pytest.raises(ra.InternalError) as ei:
        sc("fail").run(message="kaboom ü")
    e = ei.value
    assert e.code == "INTERNAL_ERROR" and e.status == 200 and "kaboom ü" in e.message
    assert e.message.startswith("Agent execution failed")
    async def main():
        async with asc("fail") as c:
            await c.run()
    with pytest.raises(ra.InternalError, match="something went wrong"):
        asyncio.run(main())


def test_unknown_tag_is_not_found(sc, asc):
    with pytest.raises(ra.NotFoundError) as ei:
        sc("no_such_tag").run()
    assert ei.value.status == 404 and "no_such_tag" in ei.value.message
    with pytest.raises(ra.NotFoundError):
        sc("no_such_stream").run_stream()

    async def main():
        with pytest.raises(ra.NotFoundError):
            async for _ in asc("no_such_stream").run_stream():
                pass
    asyncio.run(main())


def test_unknown_agent_is_not_found(showcase):
    c = ra.RunAgentClient("00000000-0000-4000-8000-000000000001", "echo", host="127.0.0.1", port=showcase.port)
    with pytest.raises(ra.NotFoundError):
        c.run()


def test_slow_hits_server_timeout(sc):
    t0 = time.monotonic()
    with pytest.raises(ra.RunAgentTimeoutError) as ei:
        sc("slow_async").run(seconds=10)
    assert ei.value.code == "TIMEOUT" and ei.value.status == 504 and time.monotonic() - t0 < 9
    with pytest.raises(ra.RunAgentTimeoutError):
        sc("slow").run(seconds=10)


def test_client_timeout(sc):
    with pytest.raises(ra.RunAgentTimeoutError):
        sc("slow_async", timeout=0.5).run(seconds=1.5)


def test_crash_is_agent_crashed(sc):
    with pytest.raises(ra.AgentCrashedError) as ei:
        sc("crash").run(code=3)
    assert ei.value.status == 502
    assert sc("add").run(1, 2) == 3  # a fresh runner serves the next call


def test_fail_stream_chunks_then_error(sc, asc):
    got = []
    st = sc("fail_stream").run_stream(after=3)
    with pytest.raises(ra.InternalError) as ei:
        for x in st:
            got.append(x)
    assert len(got) == 3 and "Streaming error" in ei.value.message and st.error is ei.value

    async def main():
        got = []
        with pytest.raises(ra.InternalError):
            async for x in asc("fail_stream").run_stream(after=2):
                got.append(x)
        return got
    assert len(asyncio.run(main())) == 2


def test_stream_close_cancels_generator(sc, tmp_path):
    path = tmp_path / "ticks.txt"
    with sc("tick_stream").run_stream(path=str(path), n=1000, interval=0.02) as st:
        for i, x in enumerate(st):
            assert x == {"tick": i}
            if i == 2:
                break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "cancelled" not in (path.read_text() if path.exists() else ""):
        time.sleep(0.05)
    assert "cancelled" in path.read_text()


def wait_cancelled(path):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "cancelled" not in (path.read_text() if path.exists() else ""):
        time.sleep(0.05)
    return path.read_text()


def test_dropped_stream_cancels_generator(sc, asc, tmp_path):
    p1 = tmp_path / "sync.txt"
    st = sc("tick_stream").run_stream(path=str(p1), n=1000, interval=0.02)
    assert next(st) == {"tick": 0}
    del st  # dropping the iterator closes the socket
    assert "cancelled" in wait_cancelled(p1)

    p2, p3 = tmp_path / "async-break.txt", tmp_path / "async-task.txt"

    async def main():
        async with asc("tick_async_stream") as c:
            async for x in c.run_stream(path=str(p2), n=1000, interval=0.02):
                break  # dropped without aclose()

            async def consume():
                async for _ in c.run_stream(path=str(p3), n=1000, interval=0.02):
                    pass
            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    asyncio.run(main())
    assert "cancelled" in wait_cancelled(p2)
    assert "cancelled" in wait_cancelled(p3)


def test_local_discovery_by_agent_id(showcase, monkeypatch):
    monkeypatch.setenv("RUNAGENT_CACHE_DIR", str(showcase.cache))
    for k in ("RUNAGENT_HOST", "RUNAGENT_PORT"):
        monkeypatch.delenv(k, raising=False)
    c = ra.RunAgentClient(showcase.agent_id, "add", local=True)
    assert c.base_url == showcase.base_url.replace("localhost", "127.0.0.1") or c.base_url.endswith(":%d" % showcase.port)
    assert c.run(20, 22) == 42
    assert list(c.with_entrypoint("count_stream").run_stream(n=2)) == [{"i": 0}, {"i": 1}]
    async def main():
        async with ra.AsyncRunAgentClient(showcase.agent_id, "add", local=True) as a:
            return await a.run(1, 1)
    assert asyncio.run(main()) == 2
    with pytest.raises(ra.NotFoundError):
        ra.RunAgentClient("00000000-0000-4000-8000-000000000002", "add", local=True)


def test_health_and_architecture(sc, showcase):
    c = sc("echo")
    h = c.health()
    assert h["status"] == "healthy" and h["agent_id"] == showcase.agent_id
    tags = {e["tag"] for e in c.architecture()["entrypoints"]}
    assert {"echo", "add", "fail", "count_stream", "fail_stream"} <= tags


def test_connection_refused_retries_then_connection_error():
    port = free_port()
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    fc = FakeClock()
    c = ra.RunAgentClient("00000000-0000-4000-8000-000000000003", "echo", host="127.0.0.1", port=port,
                          retry=policy, clock=fc.clock())
    with pytest.raises(ra.RunAgentConnectionError) as ei:
        c.run()
    assert ei.value.code == "CONNECTION_ERROR" and ei.value.status is None
    assert fc.sleeps == [0.01, 0.02]
    fc.sleeps.clear()
    with pytest.raises(ra.RunAgentConnectionError):
        c.with_entrypoint("x_stream").run_stream()
    assert fc.sleeps == [0.01, 0.02]
    fc.sleeps.clear()
    a = ra.AsyncRunAgentClient("00000000-0000-4000-8000-000000000003", "echo", host="127.0.0.1", port=port,
                               retry=policy, clock=fc.clock())
    with pytest.raises(ra.RunAgentConnectionError):
        asyncio.run(a.run())
    assert fc.sleeps == [0.01, 0.02]
    fc.sleeps.clear()

    async def stream():
        async for _ in a.with_entrypoint("x_stream").run_stream():
            pass
    with pytest.raises(ra.RunAgentConnectionError):
        asyncio.run(stream())
    assert fc.sleeps == [0.01, 0.02]
    # real waiting with the default clock stays within the tiny budget
    t0 = time.monotonic()
    with pytest.raises(ra.RunAgentConnectionError):
        ra.RunAgentClient("00000000-0000-4000-8000-000000000003", "echo", host="127.0.0.1", port=port,
                          retry=policy).run()
    assert time.monotonic() - t0 < 5


def test_default_template_minimal(default_agent):
    c = ra.RunAgentClient(default_agent.agent_id, "minimal", host="127.0.0.1", port=default_agent.port)
    out = c.run(message="Hello", role="user")
    assert isinstance(out, str) and out
    chunks = list(c.with_entrypoint("minimal_stream").run_stream(message="Hello", role="user"))
    assert chunks and all(isinstance(x, str) for x in chunks)


def test_run_retried_across_server_restart(runagent_bin, tmp_path):
    srv = Server(runagent_bin, tmp_path, "showcase")
    try:
        c = ra.RunAgentClient(srv.agent_id, "add", host="127.0.0.1", port=srv.port,
                              retry=RetryPolicy(max_attempts=20, initial_backoff=0.1, max_backoff=0.3))
        assert c.run(1, 2) == 3
        srv.kill()
        restart = threading.Timer(0.5, srv.start, kwargs={"wait": False})
        restart.start()
        assert c.run(2, 2) == 4  # connection refused, retried until the server is back
        restart.join()
        c.close()
    finally:
        srv.stop()
