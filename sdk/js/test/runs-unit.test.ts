// Background runs, user fields and the re-joinable SSE stream against a
// fake fetch: the requests sent, the retry policy, SSE parsing, re-joins.
// (test/runs.test.ts drives the same API against a real `runagent server`.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { RunAgentClient, RunAgentError, isCode, isChunkError, parseJSON, readSSE, stringifyJSON } from "../src/index.js";

const enc = new TextEncoder();

function fakeClock() {
  const c = { t: 1_000_000, sleeps: [] as number[] };
  return Object.assign(c, {
    now: () => c.t,
    random: () => 0.5,
    sleep: async (ms: number) => {
      c.sleeps.push(ms);
      c.t += ms;
    },
  });
}

type Call = { url: string; method: string; headers: Record<string, string>; body: any };
type Answer = (call: Call) => Response | Promise<Response>;

/** A fetch that records each call and answers with the next answer. */
function fakeFetch(answers: Answer[]) {
  const calls: Call[] = [];
  const fn = (async (url: string, init: any) => {
    const call: Call = { url, method: init.method, headers: { ...init.headers }, body: init.body === undefined || init.body === "" ? undefined : parseJSON(init.body) };
    calls.push(call);
    const a = answers.shift();
    if (!a) throw Object.assign(new TypeError("fetch failed"), { cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }) });
    return a(call);
  }) as any;
  return { fn, calls };
}

const envelope = (data: unknown, status = 200, headers: Record<string, string> = {}) => () =>
  new Response(stringifyJSON({ success: true, data, message: "ok", error: null, request_id: "r" }), { status, headers: { "content-type": "application/json", ...headers } });

function run(status: string, extra: Record<string, unknown> = {}) {
  return { run_id: "run-1", invocation_id: "run-1", agent_id: "a", status, output_data: null, error_detail: null, attempts: 1, ...extra };
}

/** An SSE answer: the texts are sent one read apiece; then the body ends, or fails with `fail`. */
function sse(parts: string[], o: { fail?: boolean; headers?: Record<string, string> } = {}) {
  return () => {
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(c) { // one part a read, as from a socket (error() would drop what is queued)
        if (i < parts.length) c.enqueue(enc.encode(parts[i++]));
        else if (o.fail) c.error(new TypeError("terminated"));
        else c.close();
      },
    });
    return new Response(body, { status: 200, headers: { "content-type": "text/event-stream", ...o.headers } });
  };
}

const start = (id: string) => `event: start\ndata: {"run_id":"${id}","invocation_id":"${id}","agent_id":"a"}\n\n`;
const chunk = (n: number, v: unknown = { i: n }) => `id: ${n}\nevent: chunk\ndata: ${JSON.stringify(v)}\n\n`;
const done = (n: number, total: number) => `id: ${n}\nevent: done\ndata: {"total_chunks":${total},"execution_time":0.01,"invocation_id":"x"}\n\n`;

function client(fetch: any, extra: Record<string, unknown> = {}) {
  return new RunAgentClient({ agentId: "a", entrypointTag: "add", baseUrl: "http://x.test", apiKey: "k", clock: fakeClock(), fetch, ...extra });
}

async function collect(st: AsyncIterable<unknown>) {
  const out: unknown[] = [];
  let err: unknown;
  try {
    for await (const v of st) out.push(v);
  } catch (e) {
    err = e;
  }
  return { out, err };
}

test("user fields: persistentMemory without userId is refused; userId goes in every run body", async () => {
  assert.throws(() => new RunAgentClient({ agentId: "a", entrypointTag: "add", local: true, persistentMemory: true }),
    (e: unknown) => isCode(e, "VALIDATION_ERROR") && /userId/.test((e as Error).message));
  assert.throws(() => new RunAgentClient({ agentId: "a", entrypointTag: "add", local: true, userId: "", persistentMemory: true }),
    (e: unknown) => isCode(e, "VALIDATION_ERROR"));
  const f = fakeFetch([envelope('{"type":"integer","payload":"3"}'), envelope({ run_id: "r", status: "pending" }, 202)]);
  const c = client(f.fn, { userId: "ana", persistentMemory: true });
  assert.equal(c.userId, "ana");
  assert.equal(c.persistentMemory, true);
  assert.equal(await c.run({ args: [1, 2] }), 3);
  await c.startRun({ args: [1, 2] });
  for (const call of f.calls) {
    assert.equal(call.body.user_id, "ana");
    assert.equal(call.body.persistent_memory, true);
  }
  // A user without persistent memory is sent as the Python SDK sends it.
  const g = fakeFetch([envelope('{"type":"integer","payload":"3"}')]);
  await client(g.fn, { userId: "bob" }).run();
  assert.deepStrictEqual(g.calls[0].body, { entrypoint_tag: "add", input_args: [], input_kwargs: {}, timeout_seconds: 300, user_id: "bob", persistent_memory: false });
  // No user: no fields.
  const h = fakeFetch([envelope('{"type":"integer","payload":"3"}')]);
  await client(h.fn).run();
  assert.equal("user_id" in h.calls[0].body, false);
});

test("startRun: the body and options, an Idempotency-Key made once per call and kept across retries", async () => {
  const f = fakeFetch([
    () => new Response(JSON.stringify({ success: false, error: { code: "OVERLOADED", message: "busy" } }), { status: 503 }),
    envelope({ run_id: "run-1", invocation_id: "run-1", agent_id: "a", status: "pending", status_url: "/api/v1/runs/run-1" }, 202),
  ]);
  const c = client(f.fn);
  const acc = await c.startRun({ args: [2], kwargs: { b: 40 } }, { webhook: "https://hooks.example.com/x", threadId: "t-1", multitask: "enqueue" });
  assert.equal(f.calls.length, 2);
  assert.equal(f.calls[0].url, "http://x.test/api/v1/agents/a/runs");
  assert.equal(f.calls[0].method, "POST");
  assert.equal(f.calls[0].headers.Authorization, "Bearer k");
  assert.deepStrictEqual(f.calls[0].body, {
    entrypoint_tag: "add", input_args: [2], input_kwargs: { b: 40 }, timeout_seconds: 300,
    webhook: "https://hooks.example.com/x", thread_id: "t-1", multitask: "enqueue",
  });
  const key = f.calls[0].headers["Idempotency-Key"];
  assert.match(key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(f.calls[1].headers["Idempotency-Key"], key, "a retried create carries the same key");
  assert.equal(acc.run_id, "run-1");
  assert.equal(acc.idempotency_key, key);
  assert.equal(acc.replayed, false);

  const g = fakeFetch([envelope({ run_id: "run-1", status: "pending" }, 202, { "idempotent-replayed": "true" }), envelope({ run_id: "run-2", status: "pending" }, 202)]);
  const c2 = client(g.fn);
  const again = await c2.startRun({}, { idempotencyKey: "mine-1" });
  assert.equal(g.calls[0].headers["Idempotency-Key"], "mine-1");
  assert.equal(again.replayed, true);
  await c2.startRun();
  assert.notEqual(g.calls[1].headers["Idempotency-Key"], "mine-1");
  assert.notEqual(g.calls[1].headers["Idempotency-Key"], key, "a new key per call");

  await assert.rejects(c2.startRun({}, { idempotencyKey: "bad\nkey" }), (e: unknown) => isCode(e, "VALIDATION_ERROR"));
  await assert.rejects(client(g.fn, { entrypointTag: "x_stream" }).startRun(), (e: unknown) => isCode(e, "VALIDATION_ERROR"));
  assert.equal(g.calls.length, 2, "refused without a request");
});

test("getRun, cancelRun, waitRun: routes, the wait loop, errors", async () => {
  const f = fakeFetch([
    envelope(run("running")),
    envelope(run("running")), // wait timed out on the server: ask again
    envelope(run("completed", { output_data: 9007199254740993n })),
    envelope(run("cancelled", { error_detail: "CANCELLED: by the test" })),
    () => new Response(JSON.stringify({ success: false, error: { code: "NOT_FOUND", message: "no run" } }), { status: 404 }),
  ]);
  const c = client(f.fn);
  assert.equal((await c.getRun("run/1")).status, "running");
  assert.equal(f.calls[0].url, "http://x.test/api/v1/runs/run%2F1");
  const done = await c.waitRun("run-1", 60);
  assert.equal(done.status, "completed");
  assert.equal(done.output_data, 9007199254740993n, "the output decoded as run() results are");
  assert.equal(f.calls[1].url, "http://x.test/api/v1/runs/run-1/wait?timeout_seconds=60.000");
  assert.match(f.calls[2].url, /\/api\/v1\/runs\/run-1\/wait\?timeout_seconds=\d+\.\d{3}$/);
  const cancelled = await c.cancelRun("run-1");
  assert.equal(f.calls[3].method, "POST");
  assert.equal(f.calls[3].url, "http://x.test/api/v1/runs/run-1/cancel");
  assert.equal(cancelled.status, "cancelled");
  await assert.rejects(c.getRun("nope"), (e: unknown) => isCode(e, "NOT_FOUND") && (e as RunAgentError).status === 404);
  await assert.rejects(c.getRun(""), (e: unknown) => isCode(e, "VALIDATION_ERROR"));
  await assert.rejects(c.waitRun("run-1", -1), (e: unknown) => isCode(e, "VALIDATION_ERROR"));

  // waitRun ends at its timeout with the run as it is then.
  const clk = fakeClock();
  const g = fakeFetch([() => {
    clk.t += 5000; // the server held the request 5 s
    return envelope(run("running"))();
  }]);
  const c2 = client(g.fn, { clock: clk });
  assert.equal((await c2.waitRun("run-1", 5)).status, "running");
  assert.equal(g.calls.length, 1);
  assert.match(g.calls[0].url, /timeout_seconds=5\.000$/);
  // More than the server's 300 s: several waits.
  const h = fakeFetch([envelope(run("running")), envelope(run("completed"))]);
  await client(h.fn).waitRun("run-1", 1000);
  assert.match(h.calls[0].url, /timeout_seconds=300\.000$/);
});

test("readSSE: fields, comments, CRLF split across reads, multi-line data, a cut-off event is dropped", async () => {
  const parts = ["\ufeffevent: start\r", "\ndata: {\"a\":1}\r\n\r\n: heartbeat\n\nid: 0\nevent: chunk\ndata: li", "ne1\ndata:line2\n\n",
    "data: plain\n\n", "id: 1\nevent: chunk\ndata: {\"cut\":"];
  const body = new ReadableStream<Uint8Array>({ start(c) { for (const p of parts) c.enqueue(enc.encode(p)); c.close(); } });
  const got = [];
  for await (const ev of readSSE(body)) got.push(ev);
  assert.deepStrictEqual(got, [
    { event: "start", data: '{"a":1}' },
    { event: "chunk", data: "line1\nline2", id: "0" },
    { event: "message", data: "plain" },
  ]);
});

test("runStreamResumable: re-joins with Last-Event-ID after drops, each chunk once, to done", async () => {
  const f = fakeFetch([
    () => new Response(JSON.stringify({ success: false, error: { code: "OVERLOADED", message: "busy" } }), { status: 503, headers: { "retry-after": "1" } }),
    sse([start("run-9"), chunk(0), chunk(1), "id: 2\nevent: chu"], { fail: true, headers: { "content-location": "/api/v1/runs/run-9" } }),
    sse([start("run-9"), chunk(1), chunk(2), "id: 3\nevent: chunk_error\ndata: {\"message\":\"Chunk serialization failed: x\"}\n\n"]), // ends without done
    sse([start("run-9"), "id: 4\nevent: chunk\ndata: 9007199254740993\n\n"], { fail: true }),
    sse([start("run-9"), chunk(4, "again"), chunk(5), done(6, 6)]),
  ]);
  const errs: RunAgentError[] = [];
  const c = client(f.fn, { entrypointTag: "count_stream", userId: "ana" });
  const st = c.runStreamResumable({ kwargs: { n: 6 } }, { onChunkError: (e) => errs.push(e) });
  assert.equal(f.calls.length, 0, "nothing is sent before the iteration");
  const { out, err } = await collect(st);
  assert.equal(err, undefined);
  assert.deepStrictEqual(out, [{ i: 0 }, { i: 1 }, { i: 2 }, 9007199254740993n, { i: 5 }]);
  assert.equal(errs.length, 1);
  assert.ok(isChunkError(errs[0]));
  assert.deepStrictEqual(st.chunkErrors, errs);
  assert.equal(st.runId, "run-9");
  assert.equal(st.lastEventId, "5");
  assert.equal(st.totalChunks, 6);
  assert.equal(st.reconnects, 3);
  assert.equal(f.calls[0].url, "http://x.test/api/v1/agents/a/run-stream");
  assert.equal(f.calls[0].method, "POST");
  assert.equal(f.calls[0].headers.Accept, "text/event-stream");
  assert.deepStrictEqual(f.calls[0].body, { entrypoint_tag: "count_stream", input_args: [], input_kwargs: { n: 6 }, user_id: "ana", persistent_memory: false, on_disconnect: "continue" });
  assert.equal(f.calls[1].method, "POST", "the 503 create is sent again");
  for (const [i, last] of [[2, "1"], [3, "3"], [4, "4"]] as const) {
    assert.equal(f.calls[i].method, "GET");
    assert.equal(f.calls[i].url, "http://x.test/api/v1/runs/run-9/stream");
    assert.equal(f.calls[i].headers["Last-Event-ID"], last);
    assert.equal(f.calls[i].headers.Authorization, "Bearer k");
  }
});

test("runStreamResumable: error events, retry budget without progress, guardrails", async () => {
  // An agent error: its code, after the chunks before it; never re-joined.
  const f = fakeFetch([sse([start("r"), chunk(0, "chunk 0"), 'id: 1\nevent: error\ndata: {"code":"INTERNAL_ERROR","message":"Streaming error: boom"}\n\n'])]);
  const a = await collect(client(f.fn, { entrypointTag: "fail_stream" }).runStreamResumable());
  assert.deepStrictEqual(a.out, ["chunk 0"]);
  assert.ok(isCode(a.err, "INTERNAL_ERROR") && /boom/.test((a.err as Error).message));
  assert.equal(f.calls.length, 1);

  // The server could not read the log (CONNECTION_ERROR event): re-joined.
  const g = fakeFetch([
    sse([start("r"), chunk(0), 'event: error\ndata: {"code":"CONNECTION_ERROR","message":"the event log could not be read"}\n\n']),
    sse([chunk(1), done(2, 2)]),
  ]);
  assert.deepStrictEqual((await collect(client(g.fn, { entrypointTag: "s_stream" }).runStreamResumable())).out, [{ i: 0 }, { i: 1 }]);
  assert.equal(g.calls[1].headers["Last-Event-ID"], "0");

  // Drops without a chunk use up the retry policy (4 attempts), then CONNECTION_ERROR.
  const h = fakeFetch([sse([start("r"), chunk(0)], { fail: true }), sse([], { fail: true }), sse([], { fail: true }), sse([], { fail: true }), sse([chunk(1), done(2, 2)])]);
  const b = await collect(client(h.fn, { entrypointTag: "s_stream" }).runStreamResumable());
  assert.deepStrictEqual(b.out, [{ i: 0 }]);
  assert.ok(isCode(b.err, "CONNECTION_ERROR"), String(b.err));
  assert.equal(h.calls.length, 4);

  // A connection open for long without a chunk (a quiet stream) does not use up the 30 s budget.
  const clk = fakeClock();
  const quiet = () => new Response(new ReadableStream<Uint8Array>({
    pull(c) {
      clk.t += 40_000; // 40 s of heartbeats, then the connection drops
      c.error(new TypeError("terminated"));
    },
  }), { status: 200, headers: { "content-type": "text/event-stream" } });
  const q = fakeFetch([sse([start("r"), chunk(0)], { fail: true }), quiet, quiet, sse([chunk(1), done(2, 2)])]);
  const qr = await collect(client(q.fn, { entrypointTag: "s_stream", clock: clk }).runStreamResumable());
  assert.deepStrictEqual(qr, { out: [{ i: 0 }, { i: 1 }], err: undefined });

  // A started stream whose run the server never named is not sent again.
  const k = fakeFetch([sse([chunk(0)], { fail: true })]);
  const d = await collect(client(k.fn, { entrypointTag: "s_stream" }).runStreamResumable());
  assert.ok(isCode(d.err, "CONNECTION_ERROR") && /cannot be re-joined/.test((d.err as Error).message), String(d.err));
  assert.equal(k.calls.length, 1);

  // A 4xx is not retried; a plain tag is refused without a request.
  const m = fakeFetch([() => new Response(JSON.stringify({ success: false, error: { code: "VALIDATION_ERROR", message: "needs runagent server", field: "on_disconnect" } }), { status: 400 })]);
  await assert.rejects(collect(client(m.fn, { entrypointTag: "s_stream" }).runStreamResumable()).then((r) => { if (r.err) throw r.err; }),
    (e: unknown) => isCode(e, "VALIDATION_ERROR") && (e as RunAgentError).field === "on_disconnect");
  assert.throws(() => client(m.fn).runStreamResumable(), (e: unknown) => isCode(e, "VALIDATION_ERROR"));
  assert.equal(m.calls.length, 1);
});

test("runStreamResumable: break, close() and abort end the iteration; joinStream re-joins by id", async () => {
  const endless = () => new Response(new ReadableStream<Uint8Array>({
    start(c) { c.enqueue(enc.encode(start("r") + chunk(0) + chunk(1))); }, // and then nothing: the connection stays open
  }), { status: 200, headers: { "content-type": "text/event-stream" } });
  const f = fakeFetch([endless, endless, endless]);
  const c = client(f.fn, { entrypointTag: "s_stream" });
  const st = c.runStreamResumable();
  for await (const v of st) {
    assert.deepStrictEqual(v, { i: 0 });
    break;
  }
  assert.equal(st.runId, "r");
  assert.equal(st.lastEventId, "0");

  const st2 = c.runStreamResumable();
  const got: unknown[] = [];
  for await (const v of st2) {
    got.push(v);
    if (got.length === 2) setTimeout(() => st2.close(), 1); // while the iteration waits for more
  }
  assert.deepStrictEqual(got, [{ i: 0 }, { i: 1 }]);

  const ac = new AbortController();
  const st3 = c.runStreamResumable({}, { signal: ac.signal });
  await assert.rejects(async () => {
    for await (const _ of st3) ac.abort();
  }, (e: unknown) => isCode(e, "CANCELLED"));

  const g = fakeFetch([sse([chunk(3), chunk(4), done(5, 5)])]);
  const j = client(g.fn, { entrypointTag: "s_stream" }).joinStream("r", { lastEventId: "2" });
  assert.deepStrictEqual((await collect(j)).out, [{ i: 3 }, { i: 4 }]);
  assert.equal(g.calls[0].method, "GET");
  assert.equal(g.calls[0].url, "http://x.test/api/v1/runs/r/stream");
  assert.equal(g.calls[0].headers["Last-Event-ID"], "2");
  assert.throws(() => client(g.fn).joinStream("r", { lastEventId: "x" }), (e: unknown) => isCode(e, "VALIDATION_ERROR"));
});
