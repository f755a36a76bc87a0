"""Client configuration: arguments, then the environment, then defaults."""
from __future__ import annotations

import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import INTERNAL_ERROR, NOT_FOUND, VALIDATION_ERROR, error_for

DEFAULT_BASE_URL = "https://backend.run-agent.ai"
DEFAULT_LOCAL_HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 300.0
API_PREFIX = "/api/v1"


def local_registry_path() -> Path:
    """``$RUNAGENT_CACHE_DIR/runagent_local.db``, default ``~/.runagent/runagent_local.db``."""
    d = os.environ.get("RUNAGENT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".runagent")
    return Path(d) / "runagent_local.db"


def discover_local(agent_id: str) -> Tuple[str, int]:
    """Host and port of ``agent_id`` from table ``agents`` of the local registry (read-only)."""
    path = local_registry_path()
    hint = "; start the agent with `runagent serve <agent folder>` or pass host= and port="
    if not path.exists():
        raise error_for(NOT_FOUND, "local agent registry %s not found%s" % (path, hint))
    try:
        db = sqlite3.connect("file:%s?mode=ro" % quote(str(path.resolve())), uri=True, timeout=2.0)
        try:
            row = db.execute("SELECT host, port FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise error_for(INTERNAL_ERROR, "cannot read local agent registry %s: %s%s" % (path, exc, hint)) from None
    if row is None:
        raise error_for(NOT_FOUND, "agent %s is not in the local agent registry %s%s" % (agent_id, path, hint))
    host, port = row
    try:
        port = int(str(port).strip()) if not isinstance(port, (int, float)) else int(port)
    except ValueError:
        port = 0
    if not isinstance(host, str) or not host.strip() or not 0 < port <= 65535:
        raise error_for(NOT_FOUND, "agent %s has no host/port in the local agent registry %s%s" % (agent_id, path, hint))
    return host.strip(), port


def normalize_base_url(raw: str) -> str:
    raw = raw.strip()
    if "://" not in raw:
        raw = "https://" + raw
    u = urlsplit(raw)
    if u.scheme not in ("http", "https"):
        raise error_for(VALIDATION_ERROR, "invalid config: base_url must be http or https, not %r" % u.scheme)
    if not u.hostname:
        raise error_for(VALIDATION_ERROR, "invalid config: base_url has no host: %r" % raw)
    netloc = u.netloc.rsplit("@", 1)[-1]
    s = urlunsplit((u.scheme, netloc, u.path, "", "")).rstrip("/")
    if s.endswith(API_PREFIX):
        s = s[: -len(API_PREFIX)]
    return s.rstrip("/")


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


@dataclass(frozen=True)
class ResolvedConfig:
    agent_id: str
    tag: str
    base_url: str       # scheme://host[:port], no /api/v1
    api_key: str
    timeout: Optional[float]  # None: no timeout
    local: bool

    @property
    def agent_url(self) -> str:
        return self.base_url + API_PREFIX + "/agents/" + quote(self.agent_id, safe="")

    @property
    def run_url(self) -> str:
        return self.agent_url + "/run"

    @property
    def ws_url(self) -> str:
        u = "ws" + self.agent_url[len("http"):] + "/run-stream"
        if self.api_key:
            u += "?token=" + quote(self.api_key, safe="")
        return u

    @property
    def timeout_seconds(self) -> int:
        return int(math.ceil(self.timeout)) if self.timeout else 0

    def headers(self, user_agent: str) -> dict:
        h = {"Accept": "application/json", "User-Agent": user_agent}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        return h


def resolve(agent_id: str, entrypoint_tag: str, local: Optional[bool], host: Optional[str], port: Optional[int],
            base_url: Optional[str], api_key: Optional[str], timeout: Optional[float]) -> ResolvedConfig:
    problems = []
    agent_id = (agent_id or "").strip()
    tag = (entrypoint_tag or "").strip()
    if not agent_id:
        problems.append("agent_id is required")
    if not tag:
        problems.append("entrypoint_tag is required")
    key = (api_key or "").strip() or _env("RUNAGENT_API_KEY")

    if local is None:
        v = _env("RUNAGENT_LOCAL").lower()
        if v in ("1", "t", "true", "yes", "on"):
            local = True
        elif v in ("", "0", "f", "false", "no", "off"):
            local = bool(host or port)
        else:
            problems.append("RUNAGENT_LOCAL is not a boolean: %r" % v)
            local = False

    if timeout is None:
        timeout = DEFAULT_TIMEOUT
        v = _env("RUNAGENT_TIMEOUT")
        if v:
            try:
                timeout = float(v)
            except ValueError:
                problems.append("RUNAGENT_TIMEOUT is not a number of seconds: %r" % v)
    if timeout is not None and (timeout <= 0 or math.isinf(timeout) or math.isnan(timeout)):
        timeout = None

    if local:
        host = (host or "").strip() or _env("RUNAGENT_HOST")
        if not port and _env("RUNAGENT_PORT"):
            try:
                port = int(_env("RUNAGENT_PORT"))
            except ValueError:
                problems.append("RUNAGENT_PORT is not a port number: %r" % _env("RUNAGENT_PORT"))
        if port is not None and not 0 <= int(port) <= 65535:
            problems.append("port %s is out of range" % port)
        if problems:
            raise error_for(VALIDATION_ERROR, "invalid config: " + "; ".join(problems))
        if not host or not port:
            h, p = discover_local(agent_id)
            host, port = host or h, port or p
        host = host.strip("[]")
        base = "http://%s:%d" % ("[%s]" % host if ":" in host else host, int(port))
    else:
        try:
            base = normalize_base_url((base_url or "").strip() or _env("RUNAGENT_BASE_URL") or DEFAULT_BASE_URL)
        except Exception as exc:  # RunAgentError
            problems.append(getattr(exc, "message", str(exc)).replace("invalid config: ", ""))
            base = ""
    if problems:
        raise error_for(VALIDATION_ERROR, "invalid config: " + "; ".join(problems))
    return ResolvedConfig(agent_id, tag, base, key, timeout, bool(local))
