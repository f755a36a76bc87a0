"""Background runs and re-joinable streams against a real `runagent server`
(the platform): start_run / wait_run / get_run / cancel_run, sync and
async, and run_stream_resumable re-joining through a proxy that cuts the
connection every few kilobytes."""
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
