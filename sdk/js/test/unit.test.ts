import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import {
  RunAgentClient, RunAgentError, ErrorCode, isCode, isChunkError, codeOf, parseJSON, stringifyJSON,
  decodeStructured, decodeData, httpError, frameError, parseRetryAfter, classifyMessage, parseRunResponse, Retrier, normalizeRetry,
} from "../src/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

test("serializer vectors: every structured decodes to its decoded value", () => {
  const vectors = parseJSON(readFileSync(path.join(root, "testdata/serializer/vectors.json"), "utf8")) as any[];
  assert.ok(vectors.length >= 100);
  for (const v of vectors) {
    assert.deepStrictEqual(decodeStructured(v.structured), v.decoded, v.name);
    // The same through the envelope's string "data".
    assert.deepStrictEqual(decodeData(v.structured), v.decoded, v.name);
  }
});

test("parseJSON: big integers, NaN, Infinity, nesting", () => {
  assert.equal(parseJSON("9007199254740993"), 9007199254740993n);
  assert.equal(parseJSON("-9223372036854775808"), -9223372036854775808n);
  assert.equal(parseJSON("9007199254740991"), 9007199254740991);
  assert.equal(parseJSON("0000000000000000001".replace(/^0+/, "")), 1);
  assert.equal(parseJSON("1.5e3"), 1500);
  assert.equal(parseJSON("NaN"), null);
  assert.equal(parseJSON("-Infinity"), -Infinity);
  assert.deepStrictEqual(parseJSON('{"a":[1,"x\\"y",{"b":null}], "c": true}'), { a: [1, 'x"y', { b: null }], c: true });
  assert.deepStrictEqual(parseJSON('"\\\\"'), "\\");
  assert.deepStrictEqual(parseJSON('"a\\\\\\"b"'), 'a\\"b');
  let deep = "core" as unknown;
  let text = '"core"';
  for (let i = 0; i < 500; i++) {
    deep = [deep];
    text = "[" + text + "]";
  }
  assert.deepStrictEqual(parseJSON(text), deep);
  for (const bad of ["", "{", "[1,]", '{"a" 1}', "01", "tru", '"abc', "1 2", '"\u0001"', "[".repeat(20000)]) {
    assert.throws(() => parseJSON(bad), (e: unknown) => isCode(e, ErrorCode.INTERNAL), bad.slice(0, 20));
  }
});

test("stringifyJSON keeps BigInt and matches JSON.stringify otherwise", () => {
  assert.equal(stringifyJSON([9007199254740993n, -1n]), "[9007199254740993,-1]");
  const v = { a: [1, "é\u0000\"", null, undefined, { t: true }], u: undefined, d: new Date(0), n: NaN };
  assert.equal(stringifyJSON(v), JSON.stringify(v));
  assert.deepStrictEqual(parseJSON(stringifyJSON({ x: 2n ** 70n })), { x: 2n ** 70n });
});

test("decoding malformed structured values never crashes, throws INTERNAL_ERROR", () => {
  for (const bad of ["", "[]", "{}", "nope", '{"type":"integer","payload":"{"}', "42"]) {
    assert.throws(() => decodeStructured(bad), (e: unknown) => e instanceof RunAgentError && e.code === ErrorCode.INTERNAL, bad);
  }
  assert.equal(decodeStructured('{"type":"string","payload":"not json"}'), "not json");
  assert.equal(decodeData(null), null);
  assert.deepStrictEqual(decodeData({ type: "array", payload: "[1]" }), [1]);
});

test("error mapping: HTTP statuses and envelopes", () => {
  const cases: [number, string][] = [[400, "VALIDATION_ERROR"], [401, "AUTHENTICATION_ERROR"], [403, "PERMISSION_ERROR"], [404, "NOT_FOUND"],
    [413, "VALIDATION_ERROR"], [422, "VALIDATION_ERROR"], [429, "RATE_LIMIT_EXCEEDED"], [500, "INTERNAL_ERROR"], [502, "INTERNAL_ERROR"],
    [503, "OVERLOADED"], [504, "TIMEOUT"]];
  for (const [st, code] of cases) {
    const e = httpError(st, "<html>oops</html>");
    assert.equal(e.code, code, String(st));
    assert.equal(e.status, st);
    assert.equal(e.retryable, st === 429 || st === 503);
  }
  const env = JSON.stringify({ success: false, data: null, message: null, error: { code: "AGENT_CRASHED", message: "died", field: null, details: { x: 1 } }, request_id: "rid-1" });
  const e = httpError(502, env, "2");
  assert.equal(e.code, "AGENT_CRASHED");
  assert.equal(e.message, "died");
  assert.equal(e.requestId, "rid-1");
  assert.equal(e.retryAfterMs, 2000);
  assert.deepStrictEqual(e.details, { x: 1 });
  const fe = httpError(422, JSON.stringify({ detail: [{ loc: ["body", "x"], msg: "field required" }] }));
  assert.equal(fe.code, "VALIDATION_ERROR");
  assert.match(fe.message, /field required/);
  // 200 with success:false: the agent raised.
  assert.throws(() => parseRunResponse(200, JSON.stringify({ success: false, error: { code: "INTERNAL_ERROR", message: "Agent execution failed: boom" }, request_id: "r" })),
    (x: unknown) => isCode(x, "INTERNAL_ERROR") && (x as RunAgentError).message.includes("boom") && (x as RunAgentError).status === 200);
  assert.equal(parseRunResponse(200, JSON.stringify({ success: true, data: '{"type":"integer","payload":"9007199254740993"}' })), 9007199254740993n);
  assert.throws(() => parseRunResponse(200, "hello"), (x: unknown) => isCode(x, "INTERNAL_ERROR"));
  assert.equal(codeOf(null), "");
  assert.equal(codeOf(new Error("x")), "INTERNAL_ERROR");
});

test("error mapping: WebSocket error frames", () => {
  assert.equal(frameError({ type: "error", error: "Streaming error: not found anywhere" }).code, "INTERNAL_ERROR");
  assert.equal(frameError({ type: "error", error: "Agent execution failed: timeout" }).code, "INTERNAL_ERROR");
  assert.equal(frameError({ type: "error", detail: "Entrypoint x not found" }).code, "NOT_FOUND");
  assert.equal(frameError({ type: "error", detail: "anything", code: "TIMEOUT" }).code, "TIMEOUT");
  assert.equal(frameError({ type: "error", detail: "rate limit hit" }).retryable, true);
  const c = frameError({ type: "error", error: "Chunk serialization failed: bad" });
  assert.ok(isChunkError(c));
  assert.equal(classifyMessage("Tag must end with _stream"), "VALIDATION_ERROR");
  assert.equal(classifyMessage("agent crashed"), "AGENT_CRASHED");
});

test("Retry-After parsing", () => {
  assert.equal(parseRetryAfter("3"), 3000);
  assert.equal(parseRetryAfter("0.5"), 500);
  assert.equal(parseRetryAfter("-1"), 0);
  assert.equal(parseRetryAfter(""), 0);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:10 GMT", now), 10000);
  assert.equal(parseRetryAfter("garbage"), 0);
});

function fakeClock(start = 1_000_000) {
  const c = { t: start, sleeps: [] as number[], rnd: 1 - 1e-12 };
  return Object.assign(c, {
    now: () => c.t,
    random: () => c.rnd,
    sleep: async (ms: number) => {
      c.sleeps.push(ms);
      c.t += ms;
    },
  });
}

test("retry timing: full jitter caps 200, 400, 800 ms; 4 attempts", async () => {
  const clk = fakeClock();
  const r = new Retrier(normalizeRetry(undefined), clk);
  const e = new RunAgentError({ code: "OVERLOADED", message: "x", retryable: true });
  await r.wait(e);
  await r.wait(e);
  await r.wait(e);
  await assert.rejects(r.wait(e), (x: unknown) => x === e);
  assert.deepStrictEqual(clk.sleeps.map(Math.round), [200, 400, 800]);
  const nr = new Retrier(normalizeRetry(undefined), fakeClock());
  await assert.rejects(nr.wait(new RunAgentError({ code: "NOT_FOUND", message: "x" })), (x: unknown) => isCode(x, "NOT_FOUND"));
  // Cap at 5 s.
  const big = new Retrier(normalizeRetry({ maxAttempts: 10, maxElapsedMs: -1 }), fakeClock());
  big.attempts = 7;
  assert.equal(big.cap(), 5000);
});

test("retry timing: Retry-After is a floor, the 30 s budget ends the call", async () => {
  const clk = fakeClock();
  clk.rnd = 0;
  const r = new Retrier(normalizeRetry(undefined), clk);
  const e = new RunAgentError({ code: "RATE_LIMIT_EXCEEDED", message: "x", retryable: true, retryAfterMs: 7000 });
  await r.wait(e);
  await r.wait(e);
  await r.wait(e);
  assert.deepStrictEqual(clk.sleeps, [7000, 7000, 7000]);
  const clk2 = fakeClock();
  const r2 = new Retrier(normalizeRetry(undefined), clk2);
  const long = new RunAgentError({ code: "RATE_LIMIT_EXCEEDED", message: "x", retryable: true, retryAfterMs: 31000 });
  await assert.rejects(r2.wait(long), (x: unknown) => x === long && (x as RunAgentError).retryAfterMs === 31000);
  assert.deepStrictEqual(clk2.sleeps, []);
});

function jsonResponse(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(typeof body === "string" ? body : JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

test("run: retries 503 and 429 with Retry-After, then succeeds; sends the request", async () => {
  const clk = fakeClock();
  clk.rnd = 0;
  const bodies: any[] = [];
  const answers = [
    () => jsonResponse(503, { success: false, error: { code: "OVERLOADED", message: "busy" } }),
    () => jsonResponse(429, { success: false, error: { code: "RATE_LIMIT_EXCEEDED", message: "slow down" } }, { "retry-after": "2" }),
    () => jsonResponse(200, { success: true, data: '{"type":"integer","payload":"42"}' }),
  ];
  let auth = "";
  const client = new RunAgentClient({
    agentId: "id1", entrypointTag: "add", baseUrl: "http://x.test/", apiKey: "k", clock: clk,
    fetch: (async (url: string, init: any) => {
      assert.equal(url, "http://x.test/api/v1/agents/id1/run");
      auth = init.headers.Authorization;
      bodies.push(parseJSON(init.body));
      return answers.shift()!();
    }) as any,
  });
  assert.equal(await client.run({ args: [40, 2n ** 64n], kwargs: { k: 1 } }), 42);
  assert.equal(auth, "Bearer k");
  assert.deepStrictEqual(clk.sleeps, [0, 2000]);
  assert.deepStrictEqual(bodies[0], { entrypoint_tag: "add", input_args: [40, 2n ** 64n], input_kwargs: { k: 1 }, timeout_seconds: 300 });
});

test("run: connection failures are retried 4 times then CONNECTION_ERROR; 4xx not retried", async () => {
  const clk = fakeClock();
  let calls = 0;
  const client = new RunAgentClient({ agentId: "a", entrypointTag: "t", local: true, port: 1, clock: clk,
    fetch: (async () => { calls++; throw Object.assign(new TypeError("fetch failed"), { cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }) }); }) as any });
  await assert.rejects(client.run(), (e: unknown) => isCode(e, "CONNECTION_ERROR"));
  assert.equal(calls, 4);
  assert.equal(clk.sleeps.length, 3);
  calls = 0;
  const c2 = new RunAgentClient({ agentId: "a", entrypointTag: "t", local: true, clock: fakeClock(),
    fetch: (async () => { calls++; return jsonResponse(404, { success: false, error: { code: "NOT_FOUND", message: "Entrypoint t not found" }, request_id: "r9" }); }) as any });
  await assert.rejects(c2.run(), (e: unknown) => isCode(e, "NOT_FOUND") && (e as RunAgentError).requestId === "r9" && (e as RunAgentError).status === 404);
  assert.equal(calls, 1);
  const c3 = new RunAgentClient({ agentId: "a", entrypointTag: "t", local: true, retry: false, clock: fakeClock(),
    fetch: (async () => { calls++; return jsonResponse(503, "busy"); }) as any });
  calls = 0;
  await assert.rejects(c3.run(), (e: unknown) => isCode(e, "OVERLOADED"));
  assert.equal(calls, 1);
});

test("run: guardrails, cancellation and timeout", async () => {
  const c = new RunAgentClient({ agentId: "a", entrypointTag: "x_stream", local: true, fetch: (() => assert.fail("no request")) as any });
  await assert.rejects(c.run(), (e: unknown) => isCode(e, "VALIDATION_ERROR"));
  const p = new RunAgentClient({ agentId: "a", entrypointTag: "x", local: true, fetch: (() => assert.fail("no request")) as any });
  await assert.rejects(p.runStream(), (e: unknown) => isCode(e, "VALIDATION_ERROR"));
  const hang = ((_u: string, init: any) => new Promise((_res, rej) => init.signal.addEventListener("abort", () => rej(init.signal.reason)))) as any;
  const ac = new AbortController();
  const h = new RunAgentClient({ agentId: "a", entrypointTag: "x", local: true, fetch: hang });
  const run = h.run({}, { signal: ac.signal });
  setTimeout(() => ac.abort(), 10);
  await assert.rejects(run, (e: unknown) => isCode(e, "CANCELLED"));
  const t = new RunAgentClient({ agentId: "a", entrypointTag: "x", local: true, fetch: hang, timeoutMs: 30 });
  await assert.rejects(t.run(), (e: unknown) => isCode(e, "TIMEOUT"));
});

test("config: env and defaults", () => {
  const saved = { ...process.env };
  try {
    process.env.RUNAGENT_LOCAL = "true";
    process.env.RUNAGENT_PORT = "9999";
    process.env.RUNAGENT_TIMEOUT = "12";
    const c = new RunAgentClient({ agentId: "a", entrypointTag: "t" });
    assert.equal(c.baseUrl, "http://127.0.0.1:9999");
    assert.equal(c.timeoutMs, 12000);
    delete process.env.RUNAGENT_LOCAL;
    delete process.env.RUNAGENT_PORT;
    assert.equal(new RunAgentClient({ agentId: "a", entrypointTag: "t" }).baseUrl, "https://backend.run-agent.ai");
    assert.equal(new RunAgentClient({ agentId: "a", entrypointTag: "t", local: true }).baseUrl, "http://127.0.0.1:8450");
    assert.throws(() => new RunAgentClient({ agentId: "", entrypointTag: "t" }), (e: unknown) => isCode(e, "VALIDATION_ERROR"));
  } finally {
    process.env = saved;
  }
});
