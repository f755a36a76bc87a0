"""Tests of the Python runner as a process, through the runner protocol
(docs/runner-protocol.md). The encoding and the extractor have their own
tests (test_encoding.py, test_jsonpath.py).

Run with:  python3 -m pytest -q internal/pyrunner
"""

import json
import os
import queue
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# The folder the interpreter runs (python3 RUNNER --fd N), as written by
# pyrunner.WriteScript.
RUNNER = os.path.join(HERE, "runagent_runner")
# The interpreter the runner subprocesses use (the runner supports 3.9+).
PYTHON = os.environ.get("RUNAGENT_TEST_PYTHON") or sys.executable

sys.path.insert(0, RUNNER)
from _runagent_runner import encoding  # noqa: E402

# ---------------------------------------------------------------------------
# The runner as a process
# ---------------------------------------------------------------------------

HDR = struct.Struct(">IBI")
INIT, CALL, CANCEL, PING = 1, 2, 3, 4
READY, RESULT, CHUNK, END, ERROR, CHUNK_ERROR, LOG, PONG = 10, 11, 12, 13, 14, 15, 16, 17
FINAL = {RESULT, END, ERROR, PONG}

AGENT_FILES = {
    "helpers.py": '''
        VALUE = 42

        def greet(name):
            return "hello " + name
    ''',
    "pkg/__init__.py": "",
    "pkg/util.py": '''
        def twice(x):
            return x * 2
    ''',
    "sub/deep.py": '''
        from .sibling import SIB
        from ..helpers import greet
        import sibling

        def deep():
            return [SIB, sibling.SIB, greet("deep")]
    ''',
    "sub/sibling.py": 'SIB = "sib"\n',
    "broken.py": '''
        import does_not_exist_xyz
        def f():
            return 1
    ''',
    "main.py": r"""
        import asyncio
        import os
        import sys
        import threading
        import time
        from concurrent.futures import ThreadPoolExecutor

        from .helpers import greet
        import helpers
        from pkg.util import twice

        print("importing main")
        print("import warning", file=sys.stderr)
        MARK_DIR = os.environ["MARK_DIR"]
        NOT_CALLABLE = 5


        def hello(name="world"):
            return greet(name)


        def abs_import():
            return [helpers.VALUE, twice(21), os.getcwd()]


        def echo(*args, **kwargs):
            return {"args": args, "kwargs": kwargs}


        async def ahello(name):
            await asyncio.sleep(0)
            return "async " + name


        async def loop_id():
            await asyncio.sleep(0)
            return [id(asyncio.get_running_loop()), threading.current_thread().name]


        def thread_name():
            return threading.current_thread().name


        def fail():
            raise ValueError("bad input")


        async def afail():
            raise KeyError("k")


        def sync_gen_stream(n):
            for i in range(n):
                yield {"i": i, "thread": threading.current_thread().name}


        async def async_gen_stream(n):
            for i in range(n):
                yield i
                await asyncio.sleep(0)


        async def async_list_stream(n):
            await asyncio.sleep(0)
            return ["x%d" % i for i in range(n)]


        def sync_list_stream(n):
            return ("t%d" % i for i in range(n)) if n < 0 else ["t%d" % i for i in range(n)]


        def set_stream():
            yield {1}
            yield float("nan")
            yield b"raw"


        def fail_stream():
            yield "one"
            yield "two"
            raise RuntimeError("mid-stream")


        def extract_me():
            return {"data": {"items": [{"text": "first"}, {"text": "second"}]}, "meta": 1}


        def extract_stream():
            yield {"delta": {"content": "a"}}
            yield {"other": 1}
            yield {"delta": {"content": "b"}}


        def _mark(name, text):
            with open(os.path.join(MARK_DIR, name), "w") as f:
                f.write(text)


        def slow_gen_stream(name):
            i = 0
            try:
                while True:
                    yield i
                    i += 1
                    time.sleep(0.01)
            finally:
                print("cleanup", name)
                _mark(name, "closed after %d" % i)


        async def slow_agen_stream(name):
            i = 0
            try:
                while True:
                    yield i
                    i += 1
                    await asyncio.sleep(0.01)
            finally:
                print("cleanup", name)
                _mark(name, "closed after %d" % i)


        def busy_gen_stream(name):
            i = 0
            try:
                while i < 10 ** 7:
                    yield i
                    i += 1
            finally:
                print("cleanup", name)
                _mark(name, "closed after %d" % i)


        async def busy_agen_stream(name):
            # never awaits: a cancellation can only land while it is
            # suspended at a yield, so the runner must aclose() it
            i = 0
            try:
                while i < 10 ** 7:
                    yield i
                    i += 1
            finally:
                print("cleanup", name)
                _mark(name, "closed after %d" % i)


        async def slow_async(name):
            try:
                await asyncio.sleep(30)
            finally:
                _mark(name, "cancelled")


        def printer(tag):
            print("sync", tag)
            print("to stderr", tag, file=sys.stderr)
            sys.stdout.write("partial " + tag)
            sys.__stdout__.write("real stdout " + tag + "\n")
            sys.__stdout__.flush()
            os.write(1, ("raw fd " + tag + "\n").encode())
            return tag


        async def aprinter(tag):
            print("async", tag)
            await asyncio.sleep(0.01)
            print("async again", tag)
            return tag


        def thread_printer(tag):
            t = threading.Thread(target=lambda: print("thread", tag))
            t.start()
            t.join()
            with ThreadPoolExecutor(2) as ex:
                ex.submit(print, "pool", tag).result()
            return tag


        async def executor_printer(tag):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, print, "executor", tag)
            await asyncio.to_thread(print, "to_thread", tag)
            return tag


        def sleepy(s, v):
            time.sleep(s)
            return v


        def touch(name):
            _mark(name, "ran")
            return name


        def returns_coroutine(x):
            return ahello(x)


        def returns_agen_stream(n):
            return async_gen_stream(n)


        def big(n):
            return "é" * n


        def die():
            os._exit(3)


        def block_until(name, tag="", limit=20):
            # runs until the test creates marks/<name> (a blocking sync call)
            print("waiting", tag)
            path = os.path.join(MARK_DIR, name)
            deadline = time.time() + limit
            while not os.path.exists(path) and time.time() < deadline:
                time.sleep(0.005)
            print("released", tag)
            return name


        def spin(s):
            # CPU-bound: holds the GIL except at the interpreter's switches
            end = time.time() + s
            n = 0
            while time.time() < end:
                n += 1
            return s


        def raise_base(kind, tag):
            print("about to raise", tag)
            if kind == "exit":
                raise SystemExit(7)
            if kind == "interrupt":
                raise KeyboardInterrupt("agent")
            raise ValueError(tag)


        def block_gen_stream(name):
            try:
                yield "first"
                path = os.path.join(MARK_DIR, name)
                deadline = time.time() + 20
                while not os.path.exists(path) and time.time() < deadline:
                    time.sleep(0.005)
                yield "second"
            finally:
                print("gen cleanup", name)


        class Bot:
            def __init__(self, name):
                self.name = name

            def reply(self, text):
                return self.name + ": " + text

            async def areply(self, text):
                return self.name + " async: " + text


        class Agent:
            bot = Bot("nested")


        bot = Bot("bot")
        agent = Agent()
    """,
}


def EP(tag, module, file="main.py", extractor=None):
    e = {"tag": tag, "file": file, "module": module}
    if extractor is not None:
        e["extractor"] = extractor
    return e


ENTRYPOINTS = [
    EP("hello", "hello"),
    EP("abs_import", "abs_import"),
    EP("echo", "echo"),
    EP("ahello", "ahello"),
    EP("loop_id", "loop_id"),
    EP("thread_name", "thread_name"),
    EP("deep", "deep", file="sub/deep.py"),
    EP("fail", "fail"),
    EP("afail", "afail"),
    EP("sync_gen_stream", "sync_gen_stream"),
    EP("async_gen_stream", "async_gen_stream"),
    EP("async_list_stream", "async_list_stream"),
    EP("sync_list_stream", "sync_list_stream"),
    EP("set_stream", "set_stream"),
    EP("fail_stream", "fail_stream"),
    EP("extract_me", "extract_me", extractor={"first": "$.data.items[0].text",
                                               "all": "$..text", "none": "$.nope"}),
    EP("extract_stream", "extract_stream", extractor={"content": "$.delta.content"}),
    EP("slow_gen_stream", "slow_gen_stream"),
    EP("slow_agen_stream", "slow_agen_stream"),
    EP("slow_async", "slow_async"),
    EP("busy_gen_stream", "busy_gen_stream"),
    EP("busy_agen_stream", "busy_agen_stream"),
    EP("printer", "printer"),
    EP("aprinter", "aprinter"),
    EP("thread_printer", "thread_printer"),
    EP("executor_printer", "executor_printer"),
    EP("sleepy", "sleepy"),
    EP("touch", "touch"),
    EP("returns_coroutine", "returns_coroutine"),
    EP("returns_agen_stream", "returns_agen_stream"),
    EP("big", "big"),
    EP("die", "die"),
    EP("block_until", "block_until"),
    EP("spin", "spin"),
    EP("raise_base", "raise_base"),
    EP("block_gen_stream", "block_gen_stream"),
    EP("bot_reply", "bot.reply"),
    EP("bot_areply", "bot.areply"),
    EP("nested_reply", "agent.bot.reply"),
    # broken ones
    EP("broken", "f", file="broken.py"),
    EP("missing", "nope"),
    EP("missing_nested", "bot.nope"),
    EP("missing_file", "f", file="nofile.py"),
    EP("not_callable", "NOT_CALLABLE"),
    EP("bad_extractor", "hello", extractor={"x": "$[?(@.a)]"}),
]


@pytest.fixture(scope="session")
def agent_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("agent")
    for name, text in AGENT_FILES.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    (d / "marks").mkdir()
    return str(d)


class Runner:
    """A runner subprocess driven like the Go host drives it."""

    def __init__(self, agent_dir, entrypoints, threads=8, env=None, flow=None):
        host, child = socket.socketpair()
        fd = child.fileno()
        self.out_path = os.path.join(agent_dir, "runner-%d.out" % id(self))
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-u", "-X", "utf8", RUNNER, "--fd", str(fd)],
            pass_fds=(fd,), stdout=self.out, stderr=subprocess.STDOUT, cwd="/")
        child.close()
        self.sock = host
        self.lock = threading.Lock()
        self.queues = {}
        self.frames = []          # every frame, in arrival order
        self.logs = []            # (call, stream, text)
        self.next_id = 0
        self.eof = threading.Event()
        self.wlock = threading.Lock()
        init = {
            "agent_dir": agent_dir, "entrypoints": entrypoints, "threads": threads,
            "env": dict(env or {}, MARK_DIR=os.path.join(agent_dir, "marks")),
        }
        if flow is not None:
            init["flow"] = flow
        self.send(INIT, 0, json.dumps(init).encode())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        kind, body = self.next(0, timeout=30)
        assert kind == READY, (kind, body)
        self.ready = json.loads(body)

    def _q(self, cid):
        with self.lock:
            q = self.queues.get(cid)
            if q is None:
                q = self.queues[cid] = queue.Queue()
            return q

    def _read(self):
        buf = b""
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                break
            buf += data
            while len(buf) >= 9:
                n, kind, cid = HDR.unpack_from(buf, 0)
                assert 5 <= n <= (256 << 20), "bad frame length %d" % n
                if len(buf) < 4 + n:
                    break
                body = buf[9:4 + n]
                buf = buf[4 + n:]
                assert kind in (READY, RESULT, CHUNK, END, ERROR, CHUNK_ERROR, LOG, PONG), kind
                self.frames.append((kind, cid, body))
                if kind == LOG:
                    log = json.loads(body)
                    assert set(log) == {"stream", "text"}
                    self.logs.append((cid, log["stream"], log["text"]))
                else:
                    self._q(cid).put((kind, body))
        assert buf == b"", "stream ended inside a frame"
        self.eof.set()

    def send(self, kind, cid, body=b""):
        with self.wlock:
            self.sock.sendall(HDR.pack(len(body) + 5, kind, cid) + body)

    def new_id(self):
        with self.lock:
            self.next_id += 1
            return self.next_id

    def start(self, tag, *args, **kwargs):
        cid = self.new_id()
        self.send(CALL, cid, json.dumps({"tag": tag, "args": list(args), "kwargs": kwargs}).encode())
        return cid

    def next(self, cid, timeout=20):
        return self._q(cid).get(timeout=timeout)

    def call(self, tag, *args, **kwargs):
        cid = self.start(tag, *args, **kwargs)
        kind, body = self.next(cid)
        return kind, body

    def value(self, tag, *args, **kwargs):
        """Call a non-stream tag and decode its RESULT like a client does."""
        kind, body = self.call(tag, *args, **kwargs)
        assert kind == RESULT, (kind, body)
        return json.loads(json.loads(body.decode("utf-8"))["payload"])

    def stream(self, tag, *args, **kwargs):
        cid = self.start(tag, *args, **kwargs)
        return cid, self.collect(cid)

    def collect(self, cid):
        out = []
        while True:
            kind, body = self.next(cid)
            out.append((kind, body))
            if kind in FINAL:
                return out

    def ping(self):
        cid = self.new_id()
        self.send(PING, cid)
        assert self.next(cid) == (PONG, b"")

    def logs_of(self, cid):
        return [(s, t) for c, s, t in self.logs if c == cid]

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            # the reader thread sees the end of the stream before the socket
            # is closed under it
            self.reader.join(timeout=10)
            self.sock.close()
            self.out.close()
        return code

    def output(self):
        self.out.flush()
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def runner(agent_dir):
    r = Runner(agent_dir, ENTRYPOINTS, threads=32)
    yield r
    assert r.close() == 0


def chunks_of(frames):
    assert frames[-1][0] == END, frames[-1]
    out = []
    for kind, body in frames[:-1]:
        assert kind == CHUNK, (kind, body)
        out.append(json.loads(json.loads(body.decode("utf-8"))["payload"]))
    assert json.loads(frames[-1][1]) == {"chunks": len(out)}
    return out


def test_ready(runner):
    ready = runner.ready
    assert ready["protocol"] == 1
    assert ready["pid"] == runner.proc.pid
    want = subprocess.check_output([PYTHON, "-c", "import platform; print(platform.python_version())"])
    assert ready["python"] == want.decode().strip()
    kinds = ready["entrypoints"]
    assert kinds["hello"] == "sync_function"
    assert kinds["ahello"] == "async_function"
    assert kinds["sync_gen_stream"] == "sync_generator"
    assert kinds["async_gen_stream"] == "async_generator"
    assert kinds["async_list_stream"] == "async_function"
    assert kinds["bot_reply"] == "sync_function"
    assert kinds["bot_areply"] == "async_function"
    assert kinds["deep"] == "sync_function"
    errors = ready["errors"]
    assert set(errors) == {"broken", "missing", "missing_nested", "missing_file",
                           "not_callable", "bad_extractor"}
    assert not set(errors) & set(kinds)
    assert errors["broken"] == "ModuleNotFoundError: No module named 'does_not_exist_xyz'"
    assert errors["missing"].startswith("AttributeError: Object 'nope' not found in ")
    assert "hello" in errors["missing"]  # lists what is available
    assert errors["missing_nested"] == "AttributeError: 'Bot' object has no attribute 'nope'"
    assert errors["missing_file"].startswith("FileNotFoundError: Entry point file not found: ")
    assert errors["not_callable"] == "TypeError: int object is not callable"
    assert errors["bad_extractor"].startswith("JSONPathError: extractor 'x': invalid JSONPath")


def test_import_time_prints_are_logged_before_ready(runner):
    ready_at = [i for i, f in enumerate(runner.frames) if f[0] == READY][0]
    before = [(f[1], json.loads(f[2])) for f in runner.frames[:ready_at] if f[0] == LOG]
    assert (0, {"stream": "stdout", "text": "importing main\n"}) in before
    assert (0, {"stream": "stderr", "text": "import warning\n"}) in before


def test_calls_and_imports(runner, agent_dir):
    assert runner.value("hello") == "hello world"
    assert runner.value("hello", "bob") == "hello bob"
    assert runner.value("hello", name="kw") == "hello kw"
    assert runner.value("abs_import") == [42, 42, agent_dir]
    assert runner.value("deep") == ["sib", "sib", "hello deep"]
    assert runner.value("echo", 1, "é", [None], k={"a": 1.5}) == {
        "args": [1, "é", [None]], "kwargs": {"k": {"a": 1.5}}}
    assert runner.value("bot_reply", "hi") == "bot: hi"
    assert runner.value("bot_areply", "hi") == "bot async: hi"
    assert runner.value("nested_reply", "yo") == "nested: yo"


def test_agent_modules_named_like_the_runners_are_the_agents(tmp_path):
    # The runner's modules live in its own package and its folder is off
    # sys.path: an agent's encoding.py or jsonpath.py is the one it imports.
    names = ("encoding", "jsonpath", "framing", "capture", "calls", "streams", "startup")
    for name in names:
        (tmp_path / (name + ".py")).write_text("WHO = 'agent %s'\n" % name, encoding="utf-8")
    (tmp_path / "main.py").write_text(textwrap.dedent("""
        import sys
        import %s

        def who():
            runner = [p for p in sys.path if p and "runagent_runner" in p]
            return [m.WHO for m in (%s)], runner
        """ % (", ".join(names), ", ".join(names))), encoding="utf-8")
    r = Runner(str(tmp_path), [EP("who", "who")], threads=2)
    try:
        assert r.value("who") == [["agent " + n for n in names], []]
    finally:
        assert r.close() == 0


def test_result_bytes_are_the_structured_string(runner):
    kind, body = runner.call("echo", "日本 🚀")
    assert kind == RESULT
    assert body == encoding.structured_bytes({"args": ("日本 🚀",), "kwargs": {}})
    assert body.decode("utf-8") == (
        '{"type": "object", "payload": "{\\"args\\": [\\"日本 🚀\\"], \\"kwargs\\": {}}"}')


def test_async_calls_share_one_loop_and_sync_runs_off_it(runner):
    a = runner.value("loop_id")
    b = runner.value("loop_id")
    assert a[0] == b[0]
    assert a[1] == "MainThread"  # the loop runs in the main thread
    assert runner.value("thread_name").startswith("runagent-worker-")
    assert runner.value("ahello", "x") == "async x"
    assert runner.value("returns_coroutine", "y") == "async y"


def test_errors(runner):
    kind, body = runner.call("fail")
    assert kind == ERROR
    err = json.loads(body)
    assert err["code"] == "INTERNAL_ERROR"
    assert err["type"] == "ValueError"
    assert err["message"] == "bad input"
    assert 'raise ValueError("bad input")' in err["traceback"]
    assert "main.py" in err["traceback"]
    # no frame of the runner's (its __main__.py or any module of its package)
    assert RUNNER not in err["traceback"]
    assert "_runagent_runner" not in err["traceback"]

    kind, body = runner.call("afail")
    err = json.loads(body)
    assert (kind, err["code"], err["type"], err["message"]) == (ERROR, "INTERNAL_ERROR", "KeyError", "'k'")
    assert "main.py" in err["traceback"]
    assert RUNNER not in err["traceback"]

    kind, body = runner.call("hello", 1, 2, 3)  # wrong arguments
    err = json.loads(body)
    assert (kind, err["code"], err["type"]) == (ERROR, "INTERNAL_ERROR", "TypeError")
    assert "hello()" in err["message"]
    assert RUNNER not in err["traceback"]


def test_unknown_and_failed_tags(runner):
    kind, body = runner.call("no_such_tag")
    err = json.loads(body)
    assert (kind, err["code"], err["message"]) == (ERROR, "NOT_FOUND", "Entrypoint no_such_tag not found")
    kind, body = runner.call("broken")
    err = json.loads(body)
    assert (kind, err["code"]) == (ERROR, "NOT_FOUND")
    assert "No module named 'does_not_exist_xyz'" in err["message"]


def test_streams_all_shapes(runner):
    _, frames = runner.stream("sync_gen_stream", 5)
    got = chunks_of(frames)
    assert [c["i"] for c in got] == [0, 1, 2, 3, 4]
    assert all(c["thread"].startswith("runagent-worker-") for c in got)  # not on the loop

    _, frames = runner.stream("async_gen_stream", 4)
    assert chunks_of(frames) == [0, 1, 2, 3]

    _, frames = runner.stream("async_list_stream", 3)
    assert chunks_of(frames) == ["x0", "x1", "x2"]

    _, frames = runner.stream("sync_list_stream", 2)
    assert chunks_of(frames) == ["t0", "t1"]

    _, frames = runner.stream("sync_list_stream", 0)
    assert frames == [(END, b'{"chunks": 0}')]

    _, frames = runner.stream("returns_agen_stream", 3)
    assert chunks_of(frames) == [0, 1, 2]


def test_stream_chunk_encoding_differs_from_results(runner):
    _, frames = runner.stream("set_stream")
    assert [b.decode() for k, b in frames[:-1]] == [
        '{"type": "string", "payload": "\\"{1}\\""}',
        '{"type": "number", "payload": "null"}',
        '{"type": "string", "payload": "\\"b\'raw\'\\""}',
    ]


def test_stream_error_mid_stream(runner):
    _, frames = runner.stream("fail_stream")
    assert [k for k, _ in frames] == [CHUNK, CHUNK, ERROR]
    err = json.loads(frames[-1][1])
    assert (err["code"], err["type"], err["message"]) == ("INTERNAL_ERROR", "RuntimeError", "mid-stream")


def test_extractor(runner):
    assert runner.value("extract_me") == {"first": "first", "all": "first", "none": None}
    _, frames = runner.stream("extract_stream")
    assert chunks_of(frames) == [{"content": "a"}, {"content": None}, {"content": "b"}]


def _wait_for(path, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
            if text:
                return text
        time.sleep(0.01)
    raise AssertionError("%s never appeared" % path)


@pytest.mark.parametrize("tag", ["slow_gen_stream", "slow_agen_stream",
                                 "busy_gen_stream", "busy_agen_stream"])
def test_cancel_stream_runs_finally(runner, agent_dir, tag):
    mark = "cancel-" + tag
    cid = runner.start(tag, mark)
    for _ in range(3):
        kind, _ = runner.next(cid)
        assert kind == CHUNK
    runner.send(CANCEL, cid)
    text = _wait_for(os.path.join(agent_dir, "marks", mark))
    assert text.startswith("closed after ")
    # A cancelled call sends nothing final: drain what was in flight, then
    # make sure no END / ERROR ever comes.
    time.sleep(0.2)
    runner.ping()
    seen = []
    q = runner._q(cid)
    while not q.empty():
        seen.append(q.get()[0])
    assert all(k == CHUNK for k in seen), seen
    # the generator was closed on behalf of the call (not later by the GC)
    assert ("stdout", "cleanup %s\n" % mark) in runner.logs_of(cid)


def test_cancel_async_call(runner, agent_dir):
    cid = runner.start("slow_async", "cancel-async")
    time.sleep(0.1)
    runner.send(CANCEL, cid)
    assert _wait_for(os.path.join(agent_dir, "marks", "cancel-async")) == "cancelled"
    time.sleep(0.1)
    runner.ping()
    assert runner._q(cid).empty()


def test_cancel_before_start(agent_dir):
    r = Runner(agent_dir, ENTRYPOINTS, threads=1)
    try:
        busy = r.start("sleepy", 0.3, "busy")  # occupies the only worker
        queued = r.start("touch", "never-ran")
        r.send(CANCEL, queued)
        assert r.next(busy)[0] == RESULT
        assert r.value("touch", "did-run") == "did-run"  # same worker, after the cancelled call
        r.ping()
        assert r._q(queued).empty()
        assert not os.path.exists(os.path.join(agent_dir, "marks", "never-ran"))
        assert os.path.exists(os.path.join(agent_dir, "marks", "did-run"))
    finally:
        assert r.close() == 0


def test_cancel_unknown_call_is_ignored(runner):
    runner.send(CANCEL, 999999)
    runner.ping()
    assert runner.value("hello") == "hello world"


def test_ping(runner):
    runner.ping()


def _log_text(runner, cid, stream):
    return "".join(t for s, t in runner.logs_of(cid) if s == stream)


def test_prints_are_logged_per_call(runner):
    cid = runner.start("printer", "P1")
    kind, _ = runner.next(cid)
    assert kind == RESULT
    assert _log_text(runner, cid, "stdout") == "sync P1\npartial P1"
    assert _log_text(runner, cid, "stderr") == "to stderr P1\n"
    # every LOG of the call came before its RESULT
    idx = {f: i for i, f in enumerate((k, c) for k, c, _ in runner.frames)}
    last_log = max(i for i, (k, c, _) in enumerate(runner.frames) if k == LOG and c == cid)
    assert last_log < idx[(RESULT, cid)]
    # writes to the real descriptors go to the process output, never the stream
    out = runner.output()
    deadline = time.time() + 5
    while "raw fd P1" not in out and time.time() < deadline:
        time.sleep(0.02)
        out = runner.output()
    assert "real stdout P1" in out and "raw fd P1" in out
    assert all("real stdout" not in t and "raw fd" not in t for _, _, t in runner.logs)


def test_prints_async_threads_and_executors(runner):
    ids = {tag: runner.start(tag, tag.upper()) for tag in ("aprinter", "thread_printer", "executor_printer")}
    for tag, cid in ids.items():
        assert runner.next(cid)[0] == RESULT, tag
    assert _log_text(runner, ids["aprinter"], "stdout") == "async APRINTER\nasync again APRINTER\n"
    assert _log_text(runner, ids["thread_printer"], "stdout") == "thread THREAD_PRINTER\npool THREAD_PRINTER\n"
    assert _log_text(runner, ids["executor_printer"], "stdout") == (
        "executor EXECUTOR_PRINTER\nto_thread EXECUTOR_PRINTER\n")


def test_concurrent_prints_are_attributed(runner):
    ids = [runner.start("aprinter", "c%d" % i) for i in range(30)]
    ids += [runner.start("printer", "s%d" % i) for i in range(30)]
    for cid in ids:
        assert runner.next(cid)[0] == RESULT
    for i, cid in enumerate(ids[:30]):
        assert _log_text(runner, cid, "stdout") == "async c%d\nasync again c%d\n" % (i, i)
    for i, cid in enumerate(ids[30:]):
        assert _log_text(runner, cid, "stdout") == "sync s%d\npartial s%d" % (i, i)


def test_200_concurrent_calls(runner):
    ids = {}
    for i in range(200):
        if i % 4 == 0:
            ids[runner.start("sleepy", 0.2, i)] = i
        elif i % 4 == 1:
            ids[runner.start("ahello", "n%d" % i)] = "async n%d" % i
        elif i % 4 == 2:
            ids[runner.start("echo", i)] = {"args": [i], "kwargs": {}}
        else:
            ids[runner.start("hello", "h%d" % i)] = "hello h%d" % i
    t0 = time.time()
    for cid, want in ids.items():
        kind, body = runner.next(cid)
        assert kind == RESULT
        assert json.loads(json.loads(body)["payload"]) == want
    # 50 calls sleeping 0.2s on 32 threads: about 0.4s, not 10s
    assert time.time() - t0 < 5


def test_concurrent_streams_interleave(runner):
    ids = [runner.start("sync_gen_stream", 50) for _ in range(10)]
    ids += [runner.start("async_gen_stream", 50) for _ in range(10)]
    for cid in ids:
        got = chunks_of(runner.collect(cid))
        assert len(got) == 50


@pytest.mark.parametrize("body,what", [
    (b"not json", "JSONDecodeError"),
    (b"\xff\xfe", "UnicodeDecodeError"),
    (b'{"args": []}', "KeyError"),
    (b'{"tag": 5, "args": [], "kwargs": {}}', "tag must be a string"),
    (b'{"tag": "hello", "args": {}, "kwargs": {}}', "args a list"),
    (b'{"tag": "hello", "args": [], "kwargs": []}', "kwargs an object"),
    (b'[1, 2]', "TypeError"),
    (b"", "JSONDecodeError"),
])
def test_malformed_call(runner, body, what):
    cid = runner.new_id()
    runner.send(CALL, cid, body)
    kind, b = runner.next(cid)
    err = json.loads(b)
    assert kind == ERROR
    assert err["code"] == "VALIDATION_ERROR"
    assert what in err["message"]
    assert runner.value("hello") == "hello world"  # still serving


def test_args_and_kwargs_default_to_empty(runner):
    cid = runner.new_id()
    runner.send(CALL, cid, b'{"tag": "hello"}')
    kind, body = runner.next(cid)
    assert kind == RESULT and json.loads(json.loads(body)["payload"]) == "hello world"


def test_large_frames(runner):
    s = "x" * (3 << 20)
    assert runner.value("echo", s) == {"args": [s], "kwargs": {}}
    assert runner.value("big", 1 << 20) == "é" * (1 << 20)


def test_frames_stay_well_formed(runner):
    # every frame the runner sent so far parsed (the reader asserts) and LOGs
    # are JSON; also make sure the runner process printed nothing unexpected
    runner.ping()
    for kind, cid, body in runner.frames:
        if kind in (READY, END, ERROR, CHUNK_ERROR, LOG):
            json.loads(body)
        elif kind in (RESULT, CHUNK):
            json.loads(body.decode("utf-8"))


def test_exits_on_eof(agent_dir):
    r = Runner(agent_dir, [EP("hello", "hello")], threads=2)
    assert r.value("hello") == "hello world"
    assert r.close() == 0
    assert r.eof.wait(5)


def test_exits_on_eof_with_calls_in_flight(agent_dir):
    r = Runner(agent_dir, [EP("sleepy", "sleepy")], threads=2)
    r.start("sleepy", 30, 1)
    t0 = time.time()
    assert r.close() == 0
    assert time.time() - t0 < 5


def test_crash_is_an_eof(agent_dir):
    r = Runner(agent_dir, [EP("die", "die"), EP("hello", "hello")], threads=2)
    r.start("die")
    assert r.eof.wait(10)
    assert r.proc.wait(10) == 3
    r.sock.close()
    r.out.close()


def test_connect_unix_socket(agent_dir, tmp_path):
    path = str(tmp_path / "runner.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    proc = subprocess.Popen([PYTHON, RUNNER, "--connect", "unix:" + path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv.settimeout(20)
        conn, _ = srv.accept()
        conn.settimeout(20)
        init = json.dumps({"agent_dir": agent_dir, "entrypoints": [EP("hello", "hello")],
                           "threads": 1, "env": {"MARK_DIR": agent_dir}}).encode()
        call = json.dumps({"tag": "hello", "args": ["unix"], "kwargs": {}}).encode()
        conn.sendall(HDR.pack(len(init) + 5, INIT, 0) + init + HDR.pack(len(call) + 5, CALL, 7) + call)
        got = {}
        buf = b""
        while RESULT not in got:
            data = conn.recv(65536)
            assert data
            buf += data
            while len(buf) >= 9:
                n, kind, cid = HDR.unpack_from(buf, 0)
                if len(buf) < 4 + n:
                    break
                got[kind] = (cid, buf[9:4 + n])
                buf = buf[4 + n:]
        assert got[RESULT] == (7, b'{"type": "string", "payload": "\\"hello unix\\""}')
        assert json.loads(got[READY][1])["entrypoints"] == {"hello": "sync_function"}
        conn.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.close()


def test_bad_frame_length_exits(agent_dir):
    r = Runner(agent_dir, [EP("hello", "hello")], threads=1)
    r.sock.sendall(struct.pack(">IBI", 2, CALL, 1))  # length < 5
    assert r.proc.wait(10) == 2
    r.sock.close()
    r.out.close()


# ---------------------------------------------------------------------------
# Threading: the reading role (leader/followers, lending) and direct writes
# ---------------------------------------------------------------------------

def _release(agent_dir, name):
    with open(os.path.join(agent_dir, "marks", name), "w") as f:
        f.write("go")


def _send_batch(r, calls):
    """Several CALL frames in one write, so the runner reads them together."""
    ids = []
    data = b""
    for tag, args in calls:
        cid = r.new_id()
        ids.append(cid)
        body = json.dumps({"tag": tag, "args": list(args), "kwargs": {}}).encode()
        data += HDR.pack(len(body) + 5, CALL, cid) + body
    with r.wlock:
        r.sock.sendall(data)
    return ids


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_lone_blocking_call_does_not_stop_reading(agent_dir, threads):
    # A lone sync call runs on the thread that read it: the stream must
    # still be read while it blocks (PING, other calls, async calls).
    name = "lone-block-%d" % threads
    r = Runner(agent_dir, ENTRYPOINTS, threads=threads)
    try:
        blocked = r.start("block_until", name, "B")
        time.sleep(0.05)
        t0 = time.time()
        r.ping()
        assert r.value("ahello", "x") == "async x"
        if threads > 1:
            assert r.value("hello", "during") == "hello during"
        else:
            waiting = r.start("hello", "queued")  # waits for the only worker
            r.ping()
        assert time.time() - t0 < 2
        assert r._q(blocked).empty()
        _release(agent_dir, name)
        assert r.next(blocked) == (RESULT, b'{"type": "string", "payload": "\\"%s\\""}' % name.encode())
        if threads == 1:
            kind, body = r.next(waiting)
            assert kind == RESULT and json.loads(json.loads(body)["payload"]) == "hello queued"
        # and the runner keeps serving afterwards, sequentially and in parallel
        for i in range(20):
            assert r.value("hello", str(i)) == "hello %d" % i
        r.ping()
        assert r.logs_of(blocked) == [("stdout", "waiting B\n"), ("stdout", "released B\n")]
    finally:
        assert r.close() == 0


def test_slow_call_does_not_delay_calls_read_with_it(agent_dir):
    r = Runner(agent_dir, ENTRYPOINTS, threads=4)
    try:
        name = "batch-block"
        slow, fast, afast = _send_batch(r, [("block_until", [name, "S"]), ("hello", ["fast"]),
                                            ("ahello", ["afast"])])
        t0 = time.time()
        assert r.next(fast, timeout=5)[0] == RESULT
        assert r.next(afast, timeout=5)[0] == RESULT
        assert time.time() - t0 < 1
        assert r._q(slow).empty()
        _release(agent_dir, name)
        assert r.next(slow)[0] == RESULT
    finally:
        assert r.close() == 0


def test_slow_calls_read_together_run_in_parallel(agent_dir):
    r = Runner(agent_dir, ENTRYPOINTS, threads=8)
    try:
        t0 = time.time()
        ids = _send_batch(r, [("sleepy", [0.5, i]) for i in range(8)])
        for i, cid in enumerate(ids):
            kind, body = r.next(cid)
            assert kind == RESULT and json.loads(json.loads(body)["payload"]) == i
        assert time.time() - t0 < 2.0  # one after the other would take 4s
        # more slow calls than threads: the extra ones wait, reading goes on
        t0 = time.time()
        ids = _send_batch(r, [("sleepy", [0.3, i]) for i in range(12)])
        r.ping()
        assert time.time() - t0 < 0.25
        for cid in ids:
            assert r.next(cid)[0] == RESULT
        assert time.time() - t0 < 2.0
    finally:
        assert r.close() == 0


def test_cpu_bound_call_does_not_stop_reading(agent_dir):
    r = Runner(agent_dir, ENTRYPOINTS, threads=2)
    try:
        busy = r.start("spin", 1.0)
        time.sleep(0.05)
        t0 = time.time()
        r.ping()
        assert r.value("hello", "x") == "hello x"
        assert time.time() - t0 < 0.8
        assert r.next(busy)[0] == RESULT
    finally:
        assert r.close() == 0


@pytest.mark.parametrize("kind", ["value", "exit", "interrupt"])
def test_reading_role_survives_agent_exceptions(agent_dir, kind):
    r = Runner(agent_dir, ENTRYPOINTS, threads=1)
    try:
        for i in range(5):
            cid = r.start("raise_base", kind, "t%d" % i)
            k, body = r.next(cid)
            assert k == ERROR
            err = json.loads(body)
            assert err["code"] == "INTERNAL_ERROR"
            assert err["type"] == {"value": "ValueError", "exit": "SystemExit",
                                   "interrupt": "KeyboardInterrupt"}[kind]
            assert r.logs_of(cid) == [("stdout", "about to raise t%d\n" % i)]
            r.ping()
            assert r.value("hello", str(i)) == "hello %d" % i
        # raised while other frames arrive (the role was taken from it)
        ids = _send_batch(r, [("raise_base", [kind, "batch"]), ("hello", ["after"])])
        assert r.next(ids[0])[0] == ERROR
        assert r.next(ids[1])[0] == RESULT
        r.ping()
        assert r.value("hello") == "hello world"
    finally:
        assert r.close() == 0


@pytest.mark.parametrize("threads", [1, 4])
def test_cancel_lone_sync_generator(agent_dir, threads):
    name = "gen-block-%d" % threads
    r = Runner(agent_dir, ENTRYPOINTS, threads=threads)
    try:
        cid = r.start("block_gen_stream", name)
        kind, body = r.next(cid)
        assert kind == CHUNK
        r.send(CANCEL, cid)
        r.ping()  # the CANCEL was read although the generator blocks
        _release(agent_dir, name)
        deadline = time.time() + 10
        while ("stdout", "gen cleanup %s\n" % name) not in r.logs_of(cid):
            assert time.time() < deadline, r.logs_of(cid)
            time.sleep(0.01)
        r.ping()
        seen = []
        q = r._q(cid)
        while not q.empty():
            seen.append(q.get()[0])
        assert all(k == CHUNK for k in seen), seen
        assert r.value("hello", "next") == "hello next"
    finally:
        assert r.close() == 0


def test_prints_attributed_while_calls_overlap(agent_dir):
    r = Runner(agent_dir, ENTRYPOINTS, threads=4)
    try:
        # sequential lone calls: LOGs first, then the RESULT of each
        for i in range(10):
            cid = r.start("printer", "L%d" % i)
            assert r.next(cid)[0] == RESULT
            assert _log_text(r, cid, "stdout") == "sync L%d\npartial L%d" % (i, i)
            assert _log_text(r, cid, "stderr") == "to stderr L%d\n" % i
        # a blocked call prints on both sides of other calls' prints
        name = "print-block"
        blocked = r.start("block_until", name, "outer")
        time.sleep(0.05)
        inner = [r.start("printer", "I%d" % i) for i in range(5)]
        for i, cid in enumerate(inner):
            assert r.next(cid)[0] == RESULT
            assert _log_text(r, cid, "stdout") == "sync I%d\npartial I%d" % (i, i)
        _release(agent_dir, name)
        assert r.next(blocked)[0] == RESULT
        assert _log_text(r, blocked, "stdout") == "waiting outer\nreleased outer\n"
        order = [(k, c) for k, c, _ in r.frames if c in inner + [blocked]]
        for cid in inner + [blocked]:
            mine = [k for k, c in order if c == cid]
            assert mine[-1] == RESULT and RESULT not in mine[:-1], mine
    finally:
        assert r.close() == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_thread_count_is_bounded(agent_dir):
    r = Runner(agent_dir, [EP("sleepy", "sleepy"), EP("hello", "hello")], threads=3)
    try:
        ids = _send_batch(r, [("sleepy", [0.2, i]) for i in range(20)])
        ids += [r.start("sleepy", 0.1, i) for i in range(20)]
        time.sleep(0.3)
        tasks = len(os.listdir("/proc/%d/task" % r.proc.pid))
        for cid in ids:
            assert r.next(cid)[0] == RESULT
        # main (event loop), writer, standby, and threads + 1 workers
        assert tasks <= 3 + 1 + 3, tasks
    finally:
        assert r.close() == 0


def test_result_larger_than_the_socket_buffer_while_host_is_slow(agent_dir):
    # A direct write that the socket only partly takes leaves the rest to the
    # writer thread; frames queued meanwhile follow it intact.
    host, child = socket.socketpair()
    fd = child.fileno()
    proc = subprocess.Popen([PYTHON, RUNNER, "--fd", str(fd)], pass_fds=(fd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child.close()
    try:
        init = json.dumps({"agent_dir": agent_dir, "entrypoints": [EP("big", "big")],
                           "threads": 2, "env": {"MARK_DIR": agent_dir}}).encode()
        frames = HDR.pack(len(init) + 5, INIT, 0) + init
        body = json.dumps({"tag": "big", "args": [3 << 20], "kwargs": {}}).encode()
        frames += HDR.pack(len(body) + 5, CALL, 1) + body
        host.sendall(frames)
        # Wait until the result fills the socket (the runner's direct write
        # was only partly taken, the writer thread holds the rest) before
        # the PING: its PONG must follow the whole RESULT. A fixed sleep was
        # too short on a busy machine (encoding 3 MiB takes a while).
        import fcntl
        import termios
        pending, stable_since = 0, time.time()
        deadline = time.time() + 20
        while time.time() < deadline:
            n = struct.unpack("i", fcntl.ioctl(host, termios.FIONREAD, b"\0\0\0\0"))[0]
            if n != pending:
                pending, stable_since = n, time.time()
            elif n > 64 << 10 and time.time() - stable_since > 0.1:
                break
            time.sleep(0.01)
        assert pending > 64 << 10, "the result did not fill the socket: %d bytes pending" % pending
        host.sendall(HDR.pack(5, PING, 2))
        time.sleep(0.3)  # the host reads nothing meanwhile
        host.settimeout(20)
        got = []
        buf = b""
        while len(got) < 3:
            data = host.recv(1 << 20)
            assert data
            buf += data
            while len(buf) >= 9:
                n, kind, cid = HDR.unpack_from(buf, 0)
                if len(buf) < 4 + n:
                    break
                if kind != LOG:  # the agent prints at import
                    got.append((kind, cid, buf[9:4 + n]))
                buf = buf[4 + n:]
        assert [(k, c) for k, c, _ in got] == [(READY, 0), (RESULT, 1), (PONG, 2)]
        assert json.loads(json.loads(got[1][2].decode("utf-8"))["payload"]) == "é" * (3 << 20)
        host.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        host.close()


# ---------------------------------------------------------------------------
# The event loop is started only when needed: a sync-only agent that does not
# import asyncio never loads it (nor ssl, which asyncio pulls in).
# ---------------------------------------------------------------------------

LAZY_FILES = {
    "sync_agent.py": r'''
        import os
        import sys
        import threading

        def hello(name="world"):
            return "hello " + name

        def gen_stream(n):
            for i in range(n):
                yield i

        def modules():
            return ["asyncio" in sys.modules, "ssl" in sys.modules]

        def returns_coroutine(x):
            async def inner():
                print("lazy", x)
                t = threading.current_thread().name
                return [x * 2, t, id(sys.modules["asyncio"].get_running_loop())]
            return inner()

        def returns_agen_stream(n):
            async def agen():
                for i in range(n):
                    print("chunk", i)
                    yield i
            return agen()

        def returns_slow_coroutine(name):
            async def inner():
                import asyncio
                path = os.path.join(os.environ["MARK_DIR"], name)
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    with open(path, "w") as f:
                        f.write("cancelled")
                    raise
                return "not cancelled"
            return inner()
    ''',
    "async_agent.py": r'''
        import sys
        import threading

        async def ahello(name):
            print("async", name)
            return ["async " + name, threading.current_thread().name]

        def modules():
            return ["asyncio" in sys.modules]
    ''',
    "import_time_loop.py": r'''
        import asyncio

        LOOP = asyncio.get_event_loop()  # the loop the runner runs

        async def double(x):
            return [x * 2, asyncio.get_running_loop() is LOOP]

        def via_loop(x):
            return asyncio.run_coroutine_threadsafe(double(x), LOOP).result(10)
    ''',
}

SYNC_EPS = [EP("hello", "hello", file="sync_agent.py"),
            EP("gen_stream", "gen_stream", file="sync_agent.py"),
            EP("modules", "modules", file="sync_agent.py"),
            EP("returns_coroutine", "returns_coroutine", file="sync_agent.py"),
            EP("returns_agen_stream", "returns_agen_stream", file="sync_agent.py"),
            EP("returns_slow_coroutine", "returns_slow_coroutine", file="sync_agent.py")]


@pytest.fixture(scope="module")
def lazy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lazy")
    for name, text in LAZY_FILES.items():
        (d / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    (d / "marks").mkdir()
    return str(d)


def test_runner_module_does_not_import_asyncio():
    # startup imports every module of the runner's package
    code = ("import sys; sys.path.insert(0, %r); import _runagent_runner.startup; "
            "print(sorted(m for m in ('asyncio', 'ssl') if m in sys.modules))" % RUNNER)
    assert subprocess.check_output([PYTHON, "-c", code]).decode().strip() == "[]"


def test_sync_only_agent_never_imports_asyncio(lazy_dir):
    r = Runner(lazy_dir, SYNC_EPS, threads=4)
    try:
        assert r.value("modules") == [False, False]
        assert r.value("hello", "x") == "hello x"
        assert chunks_of(r.stream("gen_stream", 3)[1]) == [0, 1, 2]
        r.ping()
        r.send(CANCEL, 12345)  # a CANCEL with no loop
        cid = r.start("modules")
        r.send(CANCEL, cid)
        ids = _send_batch(r, [("hello", [str(i)]) for i in range(20)])
        for i, c in enumerate(ids):
            assert r.value("hello", str(i)) == "hello %d" % i
            assert r.next(c)[0] == RESULT
        r.ping()
        assert r.value("modules") == [False, False]
    finally:
        assert r.close() == 0


def test_sync_function_returning_coroutine_starts_the_loop_lazily(lazy_dir):
    r = Runner(lazy_dir, SYNC_EPS, threads=8)
    try:
        assert r.value("modules") == [False, False]
        # many at once: the workers race to start the loop, made exactly once
        ids = _send_batch(r, [("returns_coroutine", [i]) for i in range(16)])
        loops = set()
        for i, cid in enumerate(ids):
            kind, body = r.next(cid)
            assert kind == RESULT, body
            got = json.loads(json.loads(body)["payload"])
            assert got[:2] == [i * 2, "MainThread"]  # finished on the loop, in the main thread
            loops.add(got[2])
            assert r.logs_of(cid) == [("stdout", "lazy %d\n" % i)]  # prints attributed
        assert len(loops) == 1
        assert r.value("modules")[0] is True
        assert r.value("returns_coroutine", 50)[:2] == [100, "MainThread"]
        cid, frames = r.stream("returns_agen_stream", 3)
        assert chunks_of(frames) == [0, 1, 2]
        assert r.logs_of(cid) == [("stdout", "chunk %d\n" % i) for i in range(3)]
    finally:
        assert r.close() == 0


def test_sync_stream_returning_async_iterable_starts_the_loop_lazily(lazy_dir):
    r = Runner(lazy_dir, SYNC_EPS, threads=2)
    try:
        cid, frames = r.stream("returns_agen_stream", 4)
        assert chunks_of(frames) == [0, 1, 2, 3]
        assert r.logs_of(cid) == [("stdout", "chunk %d\n" % i) for i in range(4)]
        assert r.value("hello") == "hello world"
    finally:
        assert r.close() == 0


def test_cancel_a_lazily_started_coroutine(lazy_dir):
    r = Runner(lazy_dir, SYNC_EPS, threads=2)
    try:
        assert r.value("modules") == [False, False]
        cid = r.start("returns_slow_coroutine", "lazy-cancel")
        time.sleep(0.2)
        r.send(CANCEL, cid)
        assert _wait_for(os.path.join(lazy_dir, "marks", "lazy-cancel")) == "cancelled"
        time.sleep(0.1)
        r.ping()
        assert r._q(cid).empty()
        assert r.value("returns_coroutine", 1)[0] == 2
    finally:
        assert r.close() == 0


def test_async_agent_without_asyncio_import(lazy_dir):
    r = Runner(lazy_dir, [EP("ahello", "ahello", file="async_agent.py"),
                          EP("modules", "modules", file="async_agent.py")], threads=2)
    try:
        assert r.ready["entrypoints"]["ahello"] == "async_function"
        cid = r.start("ahello", "bob")
        kind, body = r.next(cid)
        assert kind == RESULT
        assert json.loads(json.loads(body)["payload"]) == ["async bob", "MainThread"]
        assert r.logs_of(cid) == [("stdout", "async bob\n")]
        assert r.value("modules") == [True]  # the runner started the loop at INIT
    finally:
        assert r.close() == 0


def test_loop_got_at_import_time_is_the_runners(lazy_dir):
    r = Runner(lazy_dir, [EP("via_loop", "via_loop", file="import_time_loop.py")], threads=2)
    try:
        assert r.value("via_loop", 4) == [8, True]
    finally:
        assert r.close() == 0


def test_channel_on_a_character_device_and_resume(tmp_path):
    """In a microVM the channel is a virtio serial port, a character device,
    not a socket: the runner reads and writes it as a file. Here a raw pty
    stands in for it. RESUME (sent after a snapshot restore) reseeds the
    random module and the runner goes on serving."""
    import pty
    import tty
    (tmp_path / "main.py").write_text(
        "import random\n"
        "def draw():\n"
        "    return random.getrandbits(64)\n", encoding="utf-8")
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    proc = subprocess.Popen([PYTHON, "-u", "-X", "utf8", RUNNER, "--fd", str(slave)],
                            pass_fds=(slave,), cwd="/")
    os.close(slave)
    try:
        def send(kind, cid, body=b""):
            os.write(master, HDR.pack(len(body) + 5, kind, cid) + body)

        buf = b""

        def recv():
            nonlocal buf
            while True:
                if len(buf) >= 9:
                    n, kind, cid = HDR.unpack_from(buf, 0)
                    if len(buf) >= 4 + n:
                        body, buf = buf[9:4 + n], buf[4 + n:]
                        return kind, cid, body
                r, _, _ = __import__("select").select([master], [], [], 20)
                assert r, "the runner did not answer on the pty"
                buf += os.read(master, 65536)

        send(INIT, 0, json.dumps({"agent_dir": str(tmp_path), "entrypoints": [
            {"tag": "draw", "file": "main.py", "module": "draw"}]}).encode())
        kind, _, body = recv()
        assert kind == READY and json.loads(body)["entrypoints"] == {"draw": "sync_function"}, body
        send(5, 0)  # RESUME
        send(CALL, 1, json.dumps({"tag": "draw", "args": [], "kwargs": {}}).encode())
        kind, cid, body = recv()
        assert (kind, cid) == (RESULT, 1), (kind, cid, body)
        send(PING, 2)
        assert recv()[:2] == (PONG, 2)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


# ---------------------------------------------------------------------------
# Data limits and flow control (INIT "flow", CREDIT frames)
# ---------------------------------------------------------------------------

CREDIT = 6

FLOW_AGENT = """
import asyncio
import os

MARK_DIR = os.environ["MARK_DIR"]


def _mark(name, text):
    with open(os.path.join(MARK_DIR, name), "w") as f:
        f.write(text)


def count_stream(n, mark):
    try:
        for i in range(n):
            _mark(mark, str(i))
            yield i
    finally:
        _mark(mark + ".closed", "closed")


async def acount_stream(n, mark):
    try:
        for i in range(n):
            _mark(mark, str(i))
            yield i
    finally:
        _mark(mark + ".closed", "closed")


def big_result(kb):
    return "x" * (kb << 10)


def big_chunk_stream(kb):
    yield "small"
    yield "x" * (kb << 10)
    yield "never"


async def abig_chunk_stream(kb):
    yield "small"
    yield "x" * (kb << 10)


def shout(kb):
    print("y" * (kb << 10))
    return 1


def huge_error(kb):
    raise ValueError("z" * (kb << 10))
"""

FLOW_EPS = [EP(t, t, file="flow.py") for t in (
    "count_stream", "acount_stream", "big_result", "big_chunk_stream",
    "abig_chunk_stream", "shout", "huge_error")]

FLOW = {"max_result": 64 << 10, "max_chunk": 16 << 10, "window_chunks": 4, "window_bytes": 1 << 20}


@pytest.fixture(scope="module")
def flow_runner(tmp_path_factory):
    d = tmp_path_factory.mktemp("flow")
    (d / "flow.py").write_text(FLOW_AGENT, encoding="utf-8")
    (d / "marks").mkdir()
    r = Runner(str(d), FLOW_EPS, threads=4, flow=FLOW)
    r.dir = str(d)
    yield r
    assert r.close() == 0


def _read_mark(r, name):
    try:
        with open(os.path.join(r.dir, "marks", name)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _credit(r, cid, chunks, nbytes):
    r.send(CREDIT, cid, json.dumps({"chunks": chunks, "bytes": nbytes}).encode())


@pytest.mark.parametrize("tag", ["count_stream", "acount_stream"])
def test_stream_waits_for_credit(flow_runner, tag):
    """A stream sends its window (4 chunks), and its generator is not
    resumed again until the host credits it."""
    r = flow_runner
    mark = "flow-" + tag
    cid = r.start(tag, 10, mark)
    got = [r.next(cid)[0] for _ in range(4)]
    assert got == [CHUNK] * 4
    # The generator produces the 5th value and waits to send it (polled:
    # on a busy machine it may take a while to get there).
    deadline = time.time() + 10
    while _read_mark(r, mark) != "4" and time.time() < deadline:
        time.sleep(0.01)
    assert _read_mark(r, mark) == "4"
    time.sleep(0.3)
    assert r._q(cid).empty(), "a chunk beyond the window was sent"
    assert _read_mark(r, mark) == "4", "the generator was resumed without credit"
    _credit(r, cid, 2, 100)
    assert [r.next(cid)[0] for _ in range(2)] == [CHUNK] * 2
    time.sleep(0.2)
    assert r._q(cid).empty()
    _credit(r, cid, 100, 1 << 20)
    rest = r.collect(cid)
    assert [k for k, _ in rest] == [CHUNK] * 4 + [END]
    assert json.loads(rest[-1][1]) == {"chunks": 10}


@pytest.mark.parametrize("tag", ["count_stream", "acount_stream"])
def test_cancel_while_waiting_for_credit_runs_finally(flow_runner, tag):
    r = flow_runner
    mark = "flow-cancel-" + tag
    cid = r.start(tag, 100, mark)
    for _ in range(4):
        assert r.next(cid)[0] == CHUNK
    r.send(CANCEL, cid)
    assert _wait_for(os.path.join(r.dir, "marks", mark + ".closed")) == "closed"
    r.ping()
    assert r._q(cid).empty()
    assert r.value("big_result", 1) == "x" * 1024  # the worker was given back


def test_window_in_bytes(flow_runner):
    """Chunks count against the byte window too: with a 10 KiB window a
    small chunk and then a 10 KiB one go (the last chunk sent may overshoot
    the window), a third waits for credit."""
    r = Runner(flow_runner.dir, FLOW_EPS, threads=4,
               flow=dict(FLOW, window_chunks=100, window_bytes=10 << 10, max_chunk=32 << 10))
    try:
        cid = r.start("big_chunk_stream", 10)
        assert r.next(cid)[0] == CHUNK  # "small"
        kind, body = r.next(cid)
        assert kind == CHUNK and len(body) > 10 << 10
        time.sleep(0.3)
        assert r._q(cid).empty()
        _credit(r, cid, 2, 20 << 10)
        rest = r.collect(cid)
        assert [k for k, _ in rest] == [CHUNK, END]
    finally:
        assert r.close() == 0


def test_result_over_the_limit(flow_runner):
    r = flow_runner
    assert r.value("big_result", 60) == "x" * (60 << 10)
    kind, body = r.call("big_result", 100)
    e = json.loads(body)
    assert kind == ERROR and e["code"] == "RESOURCE_LIMIT", (kind, body[:200])
    assert "more than this server's limit of 65536 bytes for one result" in e["message"], e["message"]
    assert "--max-result" in e["message"]


@pytest.mark.parametrize("tag", ["big_chunk_stream", "abig_chunk_stream"])
def test_chunk_over_the_limit_ends_the_stream(flow_runner, tag):
    r = flow_runner
    cid, frames = r.stream(tag, 20)
    assert [k for k, _ in frames] == [CHUNK, ERROR], frames
    e = json.loads(frames[-1][1])
    assert e["code"] == "RESOURCE_LIMIT" and "chunk 2 is" in e["message"] and "--max-chunk" in e["message"], e


def test_huge_print_is_split_into_bounded_log_frames(flow_runner):
    r = flow_runner
    cid = r.start("shout", 200)
    assert r.next(cid)[0] == RESULT
    sizes = [len(body) for kind, c, body in list(r.frames) if kind == LOG and c == cid]
    assert len(sizes) >= 4 and max(sizes) < 70 << 10, sizes
    assert len("".join(t for s, t in r.logs_of(cid))) == (200 << 10) + 1


def test_huge_error_message_is_cut(flow_runner):
    kind, body = flow_runner.call("huge_error", 1000)
    e = json.loads(body)
    assert kind == ERROR and len(body) < 200 << 10
    assert e["message"].endswith("characters cut)"), e["message"][-60:]
