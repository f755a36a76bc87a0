"""A bare FastAPI + uvicorn server for the benchmark's baseline.

It serves an agent folder's entrypoints with RunAgent's wire format (the /run envelope, the
structured string, the /run-stream frames) the way the original RunAgent 0.1.49 server runs
them (sync functions and sync generators are started in the default thread pool executor),
but with nothing else: no database, no logging, no middleware.

    python fastapi_app.py AGENT_DIR --port 8471
"""

import argparse
import asyncio
import importlib.util
import inspect
import json
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple, set)):
        return "array"
    return "object"


def structured(value: Any) -> str:
    """RunAgent's structured string: {"type": T, "payload": "<value as JSON>"} as a string."""
    if isinstance(value, set):
        value = list(value)
    elif not isinstance(value, (type(None), bool, int, float, str, list, tuple, dict)):
        value = str(value)
    payload = json.dumps(value, ensure_ascii=False)
    return json.dumps({"type": _type_name(value), "payload": payload}, ensure_ascii=False)


def _dumps(obj: Any) -> str:
    # Starlette's send_json encoding.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def load_agent(agent_dir: Path):
    config = json.loads((agent_dir / "runagent.config.json").read_text())
    sys.path.insert(0, str(agent_dir))
    modules: Dict[str, Any] = {}
    functions: Dict[str, Any] = {}
    for ep in config["agent_architecture"]["entrypoints"]:
        path = (agent_dir / ep["file"]).resolve()
        mod = modules.get(str(path))
        if mod is None:
            spec = importlib.util.spec_from_file_location("bench_agent_%d" % len(modules), path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            modules[str(path)] = mod
        obj = mod
        for attr in ep["module"].split("."):
            obj = getattr(obj, attr)
        functions[ep["tag"]] = obj
    return config, functions


class RunRequest(BaseModel):
    entrypoint_tag: str
    input_args: List[Any] = []
    input_kwargs: Dict[str, Any] = {}


def envelope(success: bool, data=None, message=None, error=None) -> Dict[str, Any]:
    return {
        "success": success,
        "data": data,
        "message": message,
        "error": error,
        "timestamp": datetime.now().isoformat(),
        "request_id": str(uuid.uuid4()),
    }


def create_app(agent_dir: Path) -> FastAPI:
    config, functions = load_agent(agent_dir)
    agent_id = config["agent_id"]
    started = time.time()
    app = FastAPI(title="bench baseline")

    def error_response(status: int, code: str, message: str) -> Response:
        err = {"code": code, "message": message, "details": None, "field": None}
        return JSONResponse(status_code=status, content=envelope(False, error=err))

    @app.get("/api/v1/health")
    async def health():
        return {"status": "healthy", "server": "bench FastAPI baseline",
                "uptime_seconds": time.time() - started, "agent_id": agent_id}

    @app.post(f"/api/v1/agents/{agent_id}/run")
    async def run(request: RunRequest):
        fn = functions.get(request.entrypoint_tag)
        if fn is None:
            return error_response(404, "NOT_FOUND", f"Entrypoint {request.entrypoint_tag} not found")
        if request.entrypoint_tag.endswith("_stream"):
            return error_response(400, "VALIDATION_ERROR", "Can't use Streaming Entrypoint through non-streaming endpoint.")
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(*request.input_args, **request.input_kwargs)
            else:
                result = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: fn(*request.input_args, **request.input_kwargs))
            body = envelope(True, data=structured(result), message="Agent execution completed successfully")
        except Exception as exc:  # the agent raised: 200 with success false, as the original
            err = {"code": "INTERNAL_ERROR", "message": f"Agent execution failed: {exc}", "details": None, "field": None}
            body = envelope(False, error=err)
        return Response(content=_dumps(body).encode("utf-8"), media_type="application/json")

    @app.websocket(f"/api/v1/agents/{agent_id}/run-stream")
    async def run_stream(ws: WebSocket):
        await ws.accept()
        try:
            req = json.loads(await ws.receive_text())
            tag = req["entrypoint_tag"]
            args, kwargs = req["input_args"], req["input_kwargs"]
        except (ValueError, KeyError, TypeError) as exc:
            await ws.send_text(_dumps({"type": "error", "detail": f"Invalid request: {exc}"}))
            await ws.close(code=1003)
            return
        except WebSocketDisconnect:
            return
        fn = functions.get(tag)
        if fn is None or not tag.endswith("_stream"):
            await ws.send_text(_dumps({"type": "error", "detail": f"Entrypoint {tag} not found or not streaming"}))
            await ws.close(code=1003)
            return
        invocation_id = str(uuid.uuid4())
        start = time.time()
        n = 0
        try:
            await ws.send_text(_dumps({"type": "status", "status": "stream_started", "invocation_id": invocation_id}))
            if inspect.isasyncgenfunction(fn):
                async for chunk in fn(*args, **kwargs):
                    await ws.send_text(_dumps({"type": "data", "content": structured(chunk)}))
                    n += 1
            else:
                it = await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))
                for chunk in it:
                    await ws.send_text(_dumps({"type": "data", "content": structured(chunk)}))
                    n += 1
            await ws.send_text(_dumps({"type": "status", "status": "stream_completed", "total_chunks": n,
                                       "execution_time": time.time() - start, "invocation_id": invocation_id}))
            await ws.close()
        except WebSocketDisconnect:
            return
        except Exception as exc:
            await ws.send_text(_dumps({"type": "error", "error": f"Streaming error: {exc}"}))
            await ws.close()

    return app


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("agent_dir", type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8471)
    a = ap.parse_args()
    app = create_app(a.agent_dir.resolve())
    # One worker, no access log; uvicorn picks its HTTP and WebSocket
    # implementations the same way the original's `runagent serve` does.
    uvicorn.run(app, host=a.host, port=a.port, workers=1, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
