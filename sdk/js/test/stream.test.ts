import { test } from "node:test";
import assert from "node:assert/strict";
import { RunAgentClient, RunAgentError, isCode, isChunkError, parseJSON } from "../src/index.js";

type Script = (ws: FakeWS, request: any) => void;

/** A browser-style WebSocket double; each connection runs the next script. */
class FakeWS extends EventTarget {
  static scripts: Script[] = [];
  static opened: FakeWS[] = [];
  closed = false;
  constructor(readonly url: string) {
    super();
    FakeWS.opened.push(this);
    const script = FakeWS.scripts.shift();
    queueMicrotask(() => {
      if (!script) {
        this.dispatchEvent(Object.assign(new Event("error"), { error: new Error("connect ECONNREFUSED") }));
        this.fireClose(1006);
        return;
      }
      this.dispatchEvent(new Event("open"));
      (this as any).script = script;
    });
  }
  send(data: string) {
    queueMicrotask(() => (this as any).script(this, parseJSON(data)));
  }
  frame(obj: unknown) {
    this.dispatchEvent(Object.assign(new Event("message"), { data: JSON.stringify(obj) }));
  }
  fireClose(code = 1000, reason = "") {
    if (this.closed) return;
    this.closed = true;
    this.dispatchEvent(Object.assign(new Event("close"), { code, reason }));
  }
  close(code = 1000) {
    queueMicrotask(() => this.fireClose(code));
  }
}

const chunk = (v: number) => ({ type: "data", content: JSON.stringify({ type: "integer", payload: String(v) }) });
const started = { type: "status", status: "stream_started", invocation_id: "inv-1" };
const completed = { type: "status", status: "stream_completed", total_chunks: 2 };

function client(extra: Record<string, unknown> = {}) {
  FakeWS.opened = [];
  return new RunAgentClient({ agentId: "a", entrypointTag: "s_stream", local: true, WebSocket: FakeWS as any,
    clock: { sleep: async () => {}, random: () => 0 }, ...extra });
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

test("stream: chunks arriving with the completion (same tick) are all delivered", async () => {
  let req: any;
  FakeWS.scripts = [(ws, r) => {
    req = r;
    ws.frame(started);
    for (let i = 0; i < 5; i++) ws.frame(chunk(i));
    ws.frame(completed);
    ws.fireClose(1000);
  }];
  const c = client({ apiKey: "k" });
  const st = await c.runStream({ args: [1], kwargs: { n: 2 } });
  assert.equal(st.invocationId, "inv-1");
  assert.deepStrictEqual(await collect(st), { out: [0, 1, 2, 3, 4], err: undefined });
  assert.deepStrictEqual(req, { entrypoint_tag: "s_stream", input_args: [1], input_kwargs: { n: 2 } });
  assert.equal(FakeWS.opened[0].url, "ws://127.0.0.1:8450/api/v1/agents/a/run-stream?token=k");
});

test("stream: a close before stream_completed is CONNECTION_ERROR after the chunks before it", async () => {
  FakeWS.scripts = [(ws) => {
    ws.frame(started);
    ws.frame(chunk(1));
    ws.frame(chunk(2));
    ws.fireClose(1006);
  }];
  const { out, err } = await collect(await client().runStream());
  assert.deepStrictEqual(out, [1, 2]);
  assert.ok(isCode(err, "CONNECTION_ERROR"), String(err));
  assert.equal(FakeWS.opened.length, 1, "a stream that produced data is never re-sent");
});

test("stream: Chunk serialization failed does not end the stream; agent error does", async () => {
  FakeWS.scripts = [(ws) => {
    ws.frame(started);
    ws.frame(chunk(1));
    ws.frame({ type: "error", error: "Chunk serialization failed: bad" });
    ws.frame({ type: "data", content: "not a structured value" });
    ws.frame(chunk(2));
    ws.frame({ type: "error", error: "Streaming error: boom" });
    ws.fireClose(1000);
  }];
  const seen: RunAgentError[] = [];
  const st = await client().runStream({}, { onChunkError: (e) => seen.push(e) });
  const { out, err } = await collect(st);
  assert.deepStrictEqual(out, [1, 2]);
  assert.ok(isCode(err, "INTERNAL_ERROR") && (err as Error).message.includes("boom"));
  assert.equal(seen.length, 2);
  assert.ok(seen.every(isChunkError));
  assert.equal(st.chunkErrors.length, 2);
});

test("stream: errors before stream_started reject runStream; 503-coded frames and refused connections are retried", async () => {
  FakeWS.scripts = [(ws) => { ws.frame({ type: "error", detail: "Entrypoint s_stream not found", code: "NOT_FOUND" }); ws.fireClose(1003); }];
  await assert.rejects(client().runStream(), (e: unknown) => isCode(e, "NOT_FOUND"));
  assert.equal(FakeWS.opened.length, 1);

  FakeWS.scripts = [
    (ws) => { ws.frame({ type: "error", detail: "busy", code: "OVERLOADED" }); ws.fireClose(1013); },
    undefined as any, // refused
    (ws) => { ws.frame(started); ws.fireClose(1006); }, // dropped before any data: re-sent
    (ws) => { ws.frame(started); ws.frame(chunk(7)); ws.frame(completed); ws.fireClose(); },
  ];
  const { out, err } = await collect(await client().runStream());
  assert.deepStrictEqual(out, [7]);
  assert.equal(err, undefined);
  assert.equal(FakeWS.opened.length, 4);

  FakeWS.scripts = [];
  await assert.rejects(client().runStream(), (e: unknown) => isCode(e, "CONNECTION_ERROR"));
  assert.equal(FakeWS.opened.length, 4, "4 attempts");
});

test("stream: abort and break close the socket at once", async () => {
  FakeWS.scripts = [(ws) => { ws.frame(started); ws.frame(chunk(1)); }];
  const ac = new AbortController();
  const st = await client().runStream({}, { signal: ac.signal });
  const got: unknown[] = [];
  await assert.rejects(async () => {
    for await (const v of st) {
      got.push(v);
      ac.abort();
    }
  }, (e: unknown) => isCode(e, "CANCELLED"));
  assert.deepStrictEqual(got, [1]);
  await new Promise((r) => setTimeout(r, 5));
  assert.ok(FakeWS.opened[0].closed);

  FakeWS.scripts = [(ws) => { ws.frame(started); ws.frame(chunk(1)); ws.frame(chunk(2)); }];
  const st2 = await client().runStream();
  for await (const v of st2) {
    assert.equal(v, 1);
    break;
  }
  await new Promise((r) => setTimeout(r, 5));
  assert.ok(FakeWS.opened[0].closed);
});
