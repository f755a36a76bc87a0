"""RunAgent Python runner: serves one agent's entrypoints to the Go host.

Standard library only, Python 3.9+. Embedded in the Go binary, written out as
a folder (this package and a __main__.py beside it) and started as
``python3 -u -X utf8 <folder> --fd 3`` (or ``--connect unix:/path``).
The protocol is described in docs/runner-protocol.md; values are encoded
exactly like the original RunAgent 0.1.49 server (testdata/serializer/vectors.json).

The package's name is one no agent uses, and the folder is taken off
sys.path before the agent is imported, so the runner's modules never shadow
the agent's (its own ``encoding`` or ``jsonpath``). Modules, by concern:
  * encoding: the serializer (results and stream chunks);
  * jsonpath: the extractor (to_dict and the JSONPath subset);
  * framing: the frame header, the stream to the host, Writer and Reader;
  * capture: print and sys.stderr captured per call, sent as LOG;
  * calls: Call, dispatch, the worker pool and the event loop;
  * streams: sync and async stream iteration with flow control;
  * startup: INIT, entrypoint loading, webhooks, RESUME and main.

Threads (see calls.Pool and framing.Writer):
  * workers (up to INIT.threads + 1, started on demand) take turns holding
    the reading role (leader/followers): the leader reads frames, parses CALL
    bodies, answers PING, hands async work to the event loop, and runs a sync
    call it read on its own thread, after handing the role on (or, for a lone
    call, while a standby thread watches the stream to take the role over if
    the host sends more before the call ends);
  * standby: blocked on an epoll of the stream while a lone call runs;
  * the main thread runs the one asyncio event loop all agent async code uses,
    started only when needed (see calls._new_loop): an agent whose entrypoints
    are all sync, and which does not import asyncio itself, never loads asyncio;
  * writer: sends what producers queue (stream chunks, LOGs, and final frames
    while another thread is writing) in few, large sends; a final frame is
    otherwise written by the thread that produced it.

Importing the package (or any of its modules) starts nothing: main() does.
"""
