"""Fixtures for the end-to-end tests: the runagent binary and a served
showcase agent on a free port with a temporary RUNAGENT_CACHE_DIR."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # for fakes.py

REPO = Path(__file__).resolve().parents[3]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def runagent_bin(tmp_path_factory):
    """$RUNAGENT_BIN, else <repo>/bin/runagent, else built once with go build."""
    env_bin = os.environ.get("RUNAGENT_BIN")
    if env_bin:
        if not os.access(env_bin, os.X_OK):
            pytest.fail("RUNAGENT_BIN=%s is not an executable" % env_bin)
        return env_bin
    b = REPO / "bin" / "runagent"
    if b.exists():
        return str(b)
    go = shutil.which("go")
    if go is None:
        pytest.fail("the runagent binary is missing (%s) and go is not on PATH to build it: "
                    "run `make build` at the repository root" % b)
    out = tmp_path_factory.mktemp("bin") / "runagent"
    r = subprocess.run([go, "build", "-o", str(out), "./cmd/runagent"], cwd=str(REPO),
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail("go build ./cmd/runagent failed (the runagent binary %s is missing):\n%s" % (b, r.stderr))
    return str(out)


class Server:
    def client_args(self):
        return {"host": "127.0.0.1", "port": self.port}

    def __init__(self, binary, root, template, *serve_args):
        self.cache = root / "cache"
        self.cache.mkdir()
        self.folder = root / "agent"
        self.env = dict(os.environ, RUNAGENT_CACHE_DIR=str(self.cache))
        r = subprocess.run([binary, "init", str(self.folder), "--template", template], env=self.env,
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            pytest.fail("runagent init --template %s failed:\n%s%s" % (template, r.stdout, r.stderr))
        self.agent_id = json.loads((self.folder / "runagent.config.json").read_text())["agent_id"]
        self.port = free_port()
        self.base_url = "http://127.0.0.1:%d" % self.port
        self.log = open(root / "serve.log", "w+")
        self.cmd = [binary, "serve", str(self.folder), "--port", str(self.port), *serve_args]
        self.start()

    def start(self, wait=True):
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("runagent serve exited with %s:\n%s" % (self.proc.returncode, self.output()))
            try:
                h = httpx.get(self.base_url + "/api/v1/health", timeout=2).json()
                if h.get("status") == "healthy" and h.get("runner", "ready") == "ready":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail("runagent serve did not become ready:\n" + self.output())

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stop(self):
        self.kill()
        self.log.close()


CONFORMANCE = REPO / "testdata" / "conformance" / "cases.json"


def conformance_suite():
    """testdata/conformance/cases.json (docs/sdk-contract.md), or None."""
    if not CONFORMANCE.exists():
        return None
    return json.loads(CONFORMANCE.read_text(encoding="utf-8"))


class Remote:
    """An agent already deployed on a platform server (or a cluster's gateway)."""

    def __init__(self, base_url, agent_id, api_key):
        self.base_url, self.agent_id, self.api_key = base_url, agent_id, api_key

    def client_args(self):
        return {"base_url": self.base_url, "api_key": self.api_key}


@pytest.fixture(scope="session")
def showcase(request, tmp_path_factory):
    """The showcase template served as the conformance suite says (--timeout 2s);
    with RUNAGENT_CONFORMANCE_BASE_URL, RUNAGENT_CONFORMANCE_AGENT_ID and
    RUNAGENT_CONFORMANCE_API_KEY, that deployed agent instead (the Go end-to-end
    suite runs the cases so through a cluster's gateway)."""
    base = os.environ.get("RUNAGENT_CONFORMANCE_BASE_URL")
    if base:
        agent_id, key = os.environ.get("RUNAGENT_CONFORMANCE_AGENT_ID"), os.environ.get("RUNAGENT_CONFORMANCE_API_KEY")
        if not agent_id or not key:
            pytest.fail("RUNAGENT_CONFORMANCE_BASE_URL needs RUNAGENT_CONFORMANCE_AGENT_ID and RUNAGENT_CONFORMANCE_API_KEY")
        yield Remote(base, agent_id, key)
        return
    runagent_bin = request.getfixturevalue("runagent_bin")
    suite = conformance_suite() or {}
    args = suite.get("serve_args") or ["--timeout", "2s"]
    s = Server(runagent_bin, tmp_path_factory.mktemp("showcase"), suite.get("template", "showcase"), *args)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def default_agent(runagent_bin, tmp_path_factory):
    """The default template (minimal / minimal_stream)."""
    s = Server(runagent_bin, tmp_path_factory.mktemp("default"), "default")
    yield s
    s.stop()
