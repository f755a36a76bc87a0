"""Start-up: the command line, INIT (environment, limits, flow, entrypoint
loading and classification, webhooks), READY, RESUME, and main, which starts
the writer, the capture and the worker pool, then runs the event loop in
the main thread when there is one."""

import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import os
import platform
import sys
import types

from . import calls as _calls
from . import capture, framing
from .calls import (ASYNC_FUNCTION, ASYNC_GENERATOR, ENTRYPOINTS, FAILED, SYNC_FUNCTION,
                    SYNC_GENERATOR, Pool, _AsyncioHook, _describe, _new_loop, run_async_call,
                    run_sync_call, set_flow)
from .capture import flush_logs
from .framing import K_INIT, K_READY, PROTOCOL, Reader, open_stream, pack_header, send_json
from .jsonpath import compile_extractor
from .streams import run_async_stream, run_sync_stream

PACKAGE = "_runagent_agent"  # the synthetic package of the agent's files

# The folder the interpreter runs (python3 <folder>): not the agent's.
_RUN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_json_loads = json.loads


def classify(obj):
    if not callable(obj):
        raise TypeError("%s object is not callable" % type(obj).__name__)
    for f in _candidates(obj):
        if inspect.isasyncgenfunction(f):
            return ASYNC_GENERATOR
        if inspect.iscoroutinefunction(f):
            return ASYNC_FUNCTION
        if inspect.isgeneratorfunction(f):
            return SYNC_GENERATOR
    return SYNC_FUNCTION


def _candidates(obj):
    seen = 0
    while obj is not None and seen < 8:
        seen += 1
        yield obj
        if isinstance(obj, functools.partial):
            obj = obj.func
            continue
        if inspect.ismethod(obj):
            obj = obj.__func__
            continue
        if inspect.isfunction(obj) or inspect.isbuiltin(obj) or isinstance(obj, type):
            return
        # a callable instance: look at its __call__
        call = getattr(type(obj), "__call__", None)
        if call is None or isinstance(call, (types.WrapperDescriptorType,
                                             types.MethodWrapperType)):
            return
        obj = call


class Entrypoint:
    __slots__ = ("tag", "fn", "kind", "stream", "extract", "on_loop", "run")

    def __init__(self, tag, fn, kind, extract):
        self.tag = tag
        self.fn = fn
        self.kind = kind
        self.stream = tag.endswith("_stream")
        self.extract = extract
        self.on_loop = kind in (ASYNC_FUNCTION, ASYNC_GENERATOR) and (
            self.stream or kind == ASYNC_FUNCTION)
        if self.on_loop:
            self.run = run_async_stream if self.stream else run_async_call
        else:
            self.run = run_sync_stream if self.stream else run_sync_call


class Importer:
    """Loads entrypoint files as modules of a synthetic package rooted at the
    agent folder, so relative and absolute sibling imports both work."""

    def __init__(self, agent_dir):
        self.agent_dir = agent_dir
        self.modules = {}   # path -> module or exception
        self.outside = 0
        pkg = types.ModuleType(PACKAGE)
        pkg.__path__ = [agent_dir]
        pkg.__package__ = PACKAGE
        pkg.__file__ = None
        pkg.__spec__ = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
        pkg.__spec__.submodule_search_locations = [agent_dir]
        sys.modules[PACKAGE] = pkg

    def load(self, file):
        path = os.path.normpath(os.path.join(self.agent_dir, file))
        got = self.modules.get(path)
        if got is None:
            try:
                got = self._load(path)
            except BaseException as e:  # noqa: a SystemExit at import is an error too
                got = e
            self.modules[path] = got
        if isinstance(got, BaseException):
            raise got
        return got

    def _load(self, path):
        if not os.path.isfile(path):
            raise FileNotFoundError("Entry point file not found: %s" % path)
        if not path.endswith(".py"):
            raise ValueError("Entry point must be a Python file: %s" % path)
        rel = os.path.relpath(path, self.agent_dir)
        parts = rel[:-3].split(os.sep)
        if parts[0] == os.pardir or any(not p or "." in p for p in parts):
            # outside the agent folder, or not importable by name
            self.outside += 1
            return self._exec_file("_runagent_entry_%d" % self.outside, path, None)
        if parts[-1] == "__init__":
            parts.pop()
        if not parts:
            # the agent folder's own __init__.py
            return self._exec_file(PACKAGE, path, [self.agent_dir])
        name = PACKAGE + "." + ".".join(parts)
        if len(parts) > 1:
            importlib.import_module(PACKAGE + "." + ".".join(parts[:-1]))
        if name in sys.modules:
            return sys.modules[name]
        if os.path.basename(path) == "__init__.py":
            return importlib.import_module(name)
        return self._exec_file(name, path, None)

    def _exec_file(self, name, path, search):
        spec = importlib.util.spec_from_file_location(
            name, path, submodule_search_locations=search)
        if spec is None or spec.loader is None:
            raise ImportError("Could not create a module spec for %s" % path)
        module = importlib.util.module_from_spec(spec)
        old = sys.modules.get(name)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            if old is not None:
                sys.modules[name] = old
            else:
                sys.modules.pop(name, None)
            raise
        parent, _, child = name.rpartition(".")
        if parent and parent in sys.modules:
            setattr(sys.modules[parent], child, module)
        return module


def resolve(module, attr_path, file):
    """generic.py _entrypoint_resolver: split at the first dot, then getattr."""
    if not isinstance(attr_path, str) or not attr_path:
        raise ValueError("entrypoint module must be a non-empty attribute path")
    primary, _, secondary = attr_path.partition(".")
    if not hasattr(module, primary):
        available = [n for n in dir(module) if not n.startswith("_")]
        raise AttributeError("Object '%s' not found in %s. Available objects: %s"
                             % (primary, file, available))
    obj = getattr(module, primary)
    if secondary:
        for attr in secondary.split("."):
            obj = getattr(obj, attr)
    return obj


def _apply_limits(limits):
    """Kernel-enforced per-process limits, set before the agent is imported
    so that it cannot raise them again (raising a hard limit needs a
    capability the runner does not have in a sandbox)."""
    import resource
    cpu = limits.get("cpu_seconds")
    if isinstance(cpu, (int, float)) and cpu > 0:
        # SIGXCPU at the limit, SIGKILL one second later if it is ignored.
        # The limit is the agent's: on top of what starting the runner took
        # (over a second in an emulated microVM).
        ru = resource.getrusage(resource.RUSAGE_SELF)
        soft = max(1, int(-(-(cpu + ru.ru_utime + ru.ru_stime) // 1)))
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    nofile = limits.get("open_files")
    if isinstance(nofile, int) and nofile > 0:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY:
            nofile = min(nofile, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def do_init(body):
    init = _json_loads(body.decode("utf-8"))
    if not isinstance(init, dict):
        raise ValueError("INIT body must be a JSON object")
    agent_dir = os.path.abspath(init.get("agent_dir") or os.getcwd())
    env = init.get("env") or {}
    for k, v in env.items():
        os.environ[str(k)] = str(v)
    os.chdir(agent_dir)
    _apply_limits(init.get("limits") or {})
    set_flow(init.get("flow"))
    threads = init.get("threads") or 0
    if not isinstance(threads, int) or threads <= 0:
        threads = min(32, (os.cpu_count() or 1) + 4)

    entries = init.get("entrypoints") or []
    # Entry files' folders first, then the agent folder (the original's order).
    dirs = []
    for e in entries:
        f = e.get("file") if isinstance(e, dict) else None
        if isinstance(f, str) and f:
            d = os.path.dirname(os.path.normpath(os.path.join(agent_dir, f)))
            if d not in dirs:
                dirs.append(d)
    if agent_dir not in dirs:
        dirs.append(agent_dir)
    for d in reversed(dirs):
        if d in sys.path:
            sys.path.remove(d)
        sys.path.insert(0, d)

    importer = Importer(agent_dir)
    hook = None
    if "asyncio" in sys.modules:
        _new_loop()  # loaded already (sitecustomize?): the loop is set now
    else:
        hook = _AsyncioHook()
        sys.meta_path.insert(0, hook)
    try:
        kinds = _load_entrypoints(entries, importer, agent_dir)
    finally:
        if hook is not None:
            try:
                sys.meta_path.remove(hook)
            except ValueError:
                pass
    if _calls.loop is None and any(k in (ASYNC_FUNCTION, ASYNC_GENERATOR)
                                   for k in kinds.values()):
        _new_loop()
    flush_logs(0)
    return threads, {
        "protocol": PROTOCOL,
        "python": platform.python_version(),
        "pid": os.getpid(),
        "entrypoints": kinds,
        "errors": dict(FAILED),
    }


def _load_entrypoints(entries, importer, agent_dir):
    kinds = {}
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("tag"), str):
            continue
        tag = e["tag"]
        try:
            extract = compile_extractor(e.get("extractor"))
            if e.get("webhook_url"):
                if tag.endswith("_stream"):
                    raise ValueError("webhook entrypoints answer once; a _stream tag cannot be a webhook")
                fn, kind = webhook(e), SYNC_FUNCTION
            else:
                file = e.get("file")
                if not isinstance(file, str) or not file:
                    raise ValueError("entrypoint %r has no file" % tag)
                module = importer.load(file)
                fn = resolve(module, e.get("module"), os.path.join(agent_dir, file))
                kind = classify(fn)
        except BaseException as exc:  # noqa: report, keep serving the others
            FAILED[tag] = _describe(exc)[:8192]
            continue
        ENTRYPOINTS[tag] = Entrypoint(tag, fn, kind, extract)
        kinds[tag] = kind
    return kinds


def webhook(e):
    """A webhook entrypoint (framework n8n) as a sync function, like the
    original's N8NExecutor: the single positional argument, or the keyword
    argument payload, is sent as the JSON body; the JSON answer is the result.
    urllib is imported here, so agents without webhooks never load it."""
    import urllib.error
    import urllib.request

    url = e["webhook_url"]
    method = str(e.get("method") or "post").lower()
    timeout = e.get("timeout") or 30

    def call_webhook(*input_args, **input_kwargs):
        if len(input_args) > 1:
            raise ValueError("Too many positional arguments. Expected at most 1.")
        if input_args and input_kwargs:
            raise ValueError("Cannot specify both positional and keyword arguments.")
        if len(input_kwargs) > 1 or (input_kwargs and "payload" not in input_kwargs):
            raise ValueError("Only 'payload' keyword argument is allowed.")
        payload = input_args[0] if input_args else input_kwargs.get("payload")
        if method == "post":
            req = urllib.request.Request(url, method="POST", data=json.dumps(payload).encode("utf-8"),
                                         headers={"Content-Type": "application/json"})
        else:
            req = urllib.request.Request(url, method="GET")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as err:
            kind = "Client" if err.code < 500 else "Server"
            raise RuntimeError("%s error '%d %s' for url '%s'" % (kind, err.code, err.reason, url)) from None
        return json.loads(body)

    call_webhook.__name__ = "webhook"
    return call_webhook


def resume():
    """Every instance restored from one snapshot starts with the same
    memory: reseed the random module's generator (the guest kernel's was
    reseeded by the host before this frame), so that instances do not draw
    the same numbers."""
    import random
    random.seed()


def main(argv=None):
    sock = open_stream(sys.argv[1:] if argv is None else argv)
    del sys.argv[1:]  # the agent sees no runner options

    # The runner's own folder is not the agent's (the runner's modules are
    # all imported by now).
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _RUN_DIR]

    framing.start_writer(sock)
    capture.install()
    reader = Reader(sock)

    first = reader.read()
    if first is None:
        os._exit(0)
    # frames after INIT stay for the reading worker
    reader.buf[:0] = b"".join(pack_header(len(b) + 5, k, c) + bytes(b)
                              for k, c, b in first[1:])
    kind, _, body = first[0]
    if kind != K_INIT:
        os.write(2, b"runagent runner: the first frame must be INIT\n")
        os._exit(2)

    try:
        threads, ready = do_init(body)
    except Exception as e:
        os.write(2, ("runagent runner: bad INIT frame: %s\n" % _describe(e)).encode())
        framing.flush()
        os._exit(2)
    send_json(K_READY, 0, ready)
    pool = Pool(threads, reader)
    framing.set_backlog(pool.pending)
    pool.start()
    try:
        _calls.run_loop()
    finally:
        os._exit(0)
