import sqlite3

import pytest

import runagent_client as ra

AGENT = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for k in ("RUNAGENT_API_KEY", "RUNAGENT_BASE_URL", "RUNAGENT_LOCAL", "RUNAGENT_HOST", "RUNAGENT_PORT",
              "RUNAGENT_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RUNAGENT_CACHE_DIR", str(tmp_path))


def registry(tmp_path, rows):
    db = sqlite3.connect(str(tmp_path / "runagent_local.db"))
    db.execute("CREATE TABLE agents (agent_id TEXT PRIMARY KEY, agent_path TEXT, host TEXT, port INTEGER)")
    db.executemany("INSERT INTO agents VALUES (?, '/x', ?, ?)", rows)
    db.commit()
    db.close()


def test_defaults():
    c = ra.RunAgentClient(AGENT, "echo")
    assert c.base_url == "https://backend.run-agent.ai" and c.timeout == 300.0
    assert c._cfg.ws_url == "wss://backend.run-agent.ai/api/v1/agents/%s/run-stream" % AGENT


def test_env_then_args(monkeypatch):
    monkeypatch.setenv("RUNAGENT_BASE_URL", "http://env.example:9000/api/v1/")
    monkeypatch.setenv("RUNAGENT_API_KEY", "envkey")
    monkeypatch.setenv("RUNAGENT_TIMEOUT", "7")
    c = ra.RunAgentClient(AGENT, "echo")
    assert c.base_url == "http://env.example:9000" and c._cfg.api_key == "envkey" and c.timeout == 7
    assert c._cfg.ws_url.endswith("/run-stream?token=envkey") and c._cfg.ws_url.startswith("ws://env.example:9000/")
    c = ra.RunAgentClient(AGENT, "echo", base_url="https://arg.example", api_key="k y", timeout=0)
    assert c.base_url == "https://arg.example" and c._cfg.ws_url.endswith("?token=k%20y") and c.timeout is None


def test_local_explicit_host_port():
    c = ra.RunAgentClient(AGENT, "echo", local=True, host="::1", port=8450)
    assert c.base_url == "http://[::1]:8450"
    assert ra.RunAgentClient(AGENT, "echo", host="localhost", port=1).base_url == "http://localhost:1"


def test_local_discovery(tmp_path):
    registry(tmp_path, [(AGENT, "127.0.0.1", 8461), ("other", "0.0.0.0", 1)])
    c = ra.RunAgentClient(AGENT, "echo", local=True)
    assert c.base_url == "http://127.0.0.1:8461"
    assert ra.RunAgentClient(AGENT, "echo", local=True, port=9999).base_url == "http://127.0.0.1:9999"


def test_local_env(monkeypatch, tmp_path):
    registry(tmp_path, [(AGENT, "127.0.0.1", 8461)])
    monkeypatch.setenv("RUNAGENT_LOCAL", "true")
    assert ra.RunAgentClient(AGENT, "echo").base_url == "http://127.0.0.1:8461"
    monkeypatch.setenv("RUNAGENT_PORT", "8462")
    assert ra.RunAgentClient(AGENT, "echo").base_url == "http://127.0.0.1:8462"


def test_local_missing(tmp_path):
    with pytest.raises(ra.NotFoundError, match="not found.*runagent serve"):
        ra.RunAgentClient(AGENT, "echo", local=True)
    registry(tmp_path, [("other", "127.0.0.1", 1)])
    with pytest.raises(ra.NotFoundError, match="not in the local agent registry"):
        ra.RunAgentClient(AGENT, "echo", local=True)


def test_invalid_config(monkeypatch):
    with pytest.raises(ra.ValidationError, match="agent_id is required; entrypoint_tag is required"):
        ra.RunAgentClient("", " ")
    with pytest.raises(ra.ValidationError, match="must be http or https"):
        ra.RunAgentClient(AGENT, "echo", base_url="ftp://x")
    monkeypatch.setenv("RUNAGENT_TIMEOUT", "soon")
    with pytest.raises(ra.ValidationError, match="RUNAGENT_TIMEOUT"):
        ra.RunAgentClient(AGENT, "echo")
    with pytest.raises(ra.ValidationError):
        ra.RunAgentClient(AGENT, "echo", timeout=1, on_chunk_error="explode")


def test_with_entrypoint_shares_config():
    c = ra.RunAgentClient(AGENT, "echo", base_url="http://h")
    d = c.with_entrypoint("count_stream")
    assert d.entrypoint_tag == "count_stream" and d.base_url == "http://h" and d._http is c._http
    assert c.entrypoint_tag == "echo"


def test_with_entrypoint_outlives_parent():
    import gc
    d = ra.RunAgentClient(AGENT, "echo", base_url="http://h").with_entrypoint("add")
    gc.collect()
    assert not d._http.is_closed
