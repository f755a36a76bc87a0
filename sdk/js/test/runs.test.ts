// Background runs, per-user persistent memory and the re-joinable SSE
// stream against a real `runagent server` (the platform), as
// sdk/python/tests/test_runs.py: the showcase template plus entrypoints of
// the test's own, deployed with the CLI; a proxy that cuts every connection
// after a few kilobytes makes the stream drop again and again.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect, Server as NetServer, Socket } from "node:net";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { RunAgentClient, RunAgentClientOptions, RunAgentError, isCode, isRunEnded } from "../src/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

// An async entrypoint that notes its start and its cancellation in a file.
const NAP = `import asyncio


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
`;

// Notes kept in the agent's persistent folder "memory": per user with
// persistent_memory, the bundle's own folder otherwise.
const MEMO = `import os

HERE = os.path.dirname(os.path.abspath(__file__))


def remember(note=None):
    path = os.path.join(HERE, "memory", "notes.txt")
    if note is not None:
        with open(path, "a") as f:
            f.write(note + "\\n")
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def remember_stream(note=None):
    yield from remember(note)
`;

let tmp = "";
let server: ChildProcess | undefined;
let logs = "";
let baseUrl = "";
let apiPort = 0;
let apiKey = "";
let agentId = "";

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as any).port;
      s.close(() => resolve(p));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function client(entrypointTag: string, extra: Partial<RunAgentClientOptions> = {}): RunAgentClient {
  return new RunAgentClient({ agentId, entrypointTag, baseUrl, apiKey, ...extra });
}

before(async () => {
  tmp = mkdtempSync(path.join(tmpdir(), "runagent-js-runs-"));
  let bin = process.env.RUNAGENT_BIN || path.join(root, "bin/runagent");
  if (!existsSync(bin)) {
    bin = path.join(tmp, "runagent");
    execFileSync("go", ["build", "-o", bin, "./cmd/runagent"], { cwd: root, env: { ...process.env, CGO_ENABLED: "0" }, stdio: "inherit" });
  }
  const env = { ...process.env, RUNAGENT_CACHE_DIR: path.join(tmp, "cache") };
  const data = path.join(tmp, "data");
  apiPort = await freePort();
  baseUrl = `http://127.0.0.1:${apiPort}`;
  // A process group of its own, so that the clean-up can reach its instances too.
  server = spawn(bin, ["server", "--port", String(apiPort), "--data-dir", data], { env, stdio: ["ignore", "pipe", "pipe"], detached: true });
  server.stdout!.on("data", (d) => (logs += d));
  server.stderr!.on("data", (d) => (logs += d));
  for (const deadline = Date.now() + 60_000; ;) {
    if (server.exitCode !== null) throw new Error("runagent server exited during start-up:\n" + logs);
    try {
      if ((await fetch(`${baseUrl}/api/v1/health`)).status === 200 && existsSync(path.join(data, "admin-key"))) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error("runagent server not healthy after 60 s:\n" + logs);
    await sleep(50);
  }
  apiKey = readFileSync(path.join(data, "admin-key"), "utf8").trim();

  const agent = path.join(tmp, "agent");
  execFileSync(bin, ["init", agent, "--template", "showcase"], { env, stdio: "pipe" });
  writeFileSync(path.join(agent, "nap.py"), NAP);
  writeFileSync(path.join(agent, "memo.py"), MEMO);
  mkdirSync(path.join(agent, "memory"));
  writeFileSync(path.join(agent, "memory", ".keep"), "");
  const cfgPath = path.join(agent, "runagent.config.json");
  const cfg = JSON.parse(readFileSync(cfgPath, "utf8"));
  cfg.agent_architecture.entrypoints.push(
    { file: "nap.py", module: "nap", tag: "nap" },
    { file: "memo.py", module: "remember", tag: "remember" },
    { file: "memo.py", module: "remember_stream", tag: "remember_stream" },
  );
  cfg.persistent_folders = ["memory"];
  writeFileSync(cfgPath, JSON.stringify(cfg));
  let out: string;
  try {
    out = execFileSync(bin, ["deploy", agent, "--server", baseUrl, "--api-key", apiKey, "--json"], { env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 120_000 });
  } catch (e: any) {
    throw new Error(`runagent deploy failed: ${e.stdout ?? ""} ${e.stderr ?? ""}\n${logs}`);
  }
  agentId = JSON.parse(out).agent_id;
  assert.ok(agentId, `deploy printed ${out}`);
});

after(async () => {
  const proc = server;
  if (proc && proc.exitCode === null && proc.signalCode === null) {
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    const t = setTimeout(() => {
      try {
        process.kill(-proc.pid!, "SIGKILL");
      } catch {
        /* gone */
      }
    }, 15_000);
    await exited;
    clearTimeout(t);
  }
  if (tmp) rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
});

/**
 * Forwards to the server and cuts each connection once it has passed
 * `budget` bytes from the server: a stream through it drops again and again.
 */
class CuttingProxy {
  cuts = 0;
  port = 0;
  private readonly srv: NetServer;
  private readonly open = new Set<Socket>();

  constructor(private readonly targetPort: number, private readonly budget: number) {
    this.srv = createServer((c) => this.serve(c));
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.srv.listen(0, "127.0.0.1", () => {
      this.port = (this.srv.address() as any).port;
      resolve();
    }));
  }

  private serve(c: Socket): void {
    const up = connect(this.targetPort, "127.0.0.1");
    for (const s of [c, up]) {
      this.open.add(s);
      s.on("close", () => this.open.delete(s));
      s.on("error", () => {
        c.destroy();
        up.destroy();
      });
    }
    c.pipe(up);
    let passed = 0;
    up.on("data", (b: Buffer) => {
      if (passed >= this.budget) return;
      const room = this.budget - passed;
      if (b.length < room) {
        passed += b.length;
        c.write(b);
        return;
      }
      passed = this.budget;
      this.cuts++;
      c.end(b.subarray(0, room)); // the last bytes, then the connection ends mid-stream
      up.destroy();
    });
    up.on("end", () => c.end());
  }

  close(): Promise<void> {
    for (const s of this.open) s.destroy();
    return new Promise((resolve) => this.srv.close(() => resolve()));
  }
}

async function collect(st: AsyncIterable<unknown>, max = Infinity) {
  const out: unknown[] = [];
  let err: unknown;
  try {
    for await (const v of st) {
      out.push(v);
      if (out.length >= max) break;
    }
  } catch (e) {
    err = e;
  }
  return { out, err };
}

/** Polls the run until pred holds (a bound on the tries, never on the time). */
async function pollRun(c: RunAgentClient, runId: string, pred: (status: string) => boolean) {
  let run = await c.getRun(runId);
  for (let i = 0; i < 400 && !pred(run.status); i++) {
    await sleep(50);
    run = await c.getRun(runId);
  }
  return run;
}

test("runs: startRun and waitRun complete with the output, decoded as run() decodes it", { timeout: 60_000 }, async () => {
  const c = client("add");
  const big = 2n ** 60n; // the sum is beyond 2^53: a BigInt, as run() gives it
  const acc = await c.startRun({ args: [big, big] });
  assert.equal(acc.status, "pending");
  assert.ok(acc.run_id);
  assert.equal(acc.replayed, false);
  assert.match(acc.idempotency_key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const done = await c.waitRun(acc.run_id, 30);
  assert.equal(done.status, "completed", `the run: ${JSON.stringify(done, (_k, v) => (typeof v === "bigint" ? String(v) : v))}`);
  assert.equal(done.output_data, 2n ** 61n);
  assert.equal(done.output_data, await c.run({ args: [big, big] }));
  assert.equal(done.attempts, 1);
  assert.equal(done.background, true);
  assert.equal(done.error_detail, null);
  assert.equal(done.idempotency_key, acc.idempotency_key);
  assert.equal(done.user_id, null);
  assert.equal(typeof done.response_timestamp, "string");
  const got = await c.getRun(acc.run_id);
  assert.equal(got.status, "completed");
  assert.equal(got.run_id, acc.run_id);
  // Keyword arguments, and a run that fails: error_detail says why.
  const failed = await client("fail").startRun({ kwargs: { message: "raised in the background" } });
  const f = await client("fail").waitRun(failed.run_id, 30);
  assert.equal(f.status, "failed");
  assert.match(f.error_detail ?? "", /raised in the background/);
});

test("runs: the same Idempotency-Key returns the same run; another input with it is refused", { timeout: 60_000 }, async () => {
  const c = client("add");
  const a = await c.startRun({ args: [1, 2] }, { idempotencyKey: "js-sdk-1" });
  const b = await c.startRun({ args: [1, 2] }, { idempotencyKey: "js-sdk-1" });
  assert.equal(b.run_id, a.run_id);
  assert.equal(a.replayed, false);
  assert.equal(b.replayed, true);
  await assert.rejects(c.startRun({ args: [5, 5] }, { idempotencyKey: "js-sdk-1" }),
    (e: unknown) => isCode(e, "RESOURCE_ALREADY_EXISTS") && (e as RunAgentError).status === 409);
  const done = await c.waitRun(a.run_id, 30);
  assert.equal(done.output_data, 3);
  assert.equal(done.idempotency_key, "js-sdk-1");
  // Without a key, each call is a run of its own.
  const x = await c.startRun({ args: [1, 2] });
  const y = await c.startRun({ args: [1, 2] });
  assert.notEqual(x.run_id, y.run_id);
});

test("runs: waitRun answers at its timeout; cancelling a running run ends it cancelled and reaches the task", { timeout: 60_000 }, async () => {
  const marks = path.join(tmp, "nap-marks");
  const c = client("nap");
  const acc = await c.startRun({ args: [marks, 60] });
  const early = await c.waitRun(acc.run_id, 0.2); // the nap takes a minute: not over yet
  assert.equal(isRunEnded(early.status), false, `status ${early.status}`);
  const running = await pollRun(c, acc.run_id, (s) => s === "running");
  assert.equal(running.status, "running");
  let cancelled = await c.cancelRun(acc.run_id);
  if (!isRunEnded(cancelled.status)) cancelled = await c.waitRun(acc.run_id, 30); // the cancel was still on its way
  assert.equal(cancelled.status, "cancelled");
  assert.match(cancelled.error_detail ?? "", /^CANCELLED/);
  const read = () => (existsSync(marks) ? readFileSync(marks, "utf8") : "");
  for (let i = 0; i < 200 && !read().includes("cancelled"); i++) await sleep(50);
  assert.equal(read(), "started\ncancelled\n");
  // A run that has ended is answered as it is.
  assert.equal((await c.cancelRun(acc.run_id)).status, "cancelled");
});

test("runs: persistentMemory without userId is refused before any request", () => {
  const noRequest = (() => assert.fail("no request may be sent")) as any;
  assert.throws(() => new RunAgentClient({ agentId, entrypointTag: "remember", baseUrl, apiKey, persistentMemory: true, fetch: noRequest }),
    (e: unknown) => isCode(e, "VALIDATION_ERROR") && /userId/.test((e as Error).message));
});

test("runs: userId and persistentMemory reach the server from run, runStream, startRun and runStreamResumable", { timeout: 60_000 }, async () => {
  const ana = { userId: "ana@example.com", persistentMemory: true };
  assert.deepStrictEqual(await client("remember", ana).run({ kwargs: { note: "run" } }), ["run"]);
  const bg = client("remember", ana);
  const acc = await bg.startRun({ kwargs: { note: "background" } });
  const done = await bg.waitRun(acc.run_id, 30);
  assert.equal(done.status, "completed");
  assert.deepStrictEqual(done.output_data, ["run", "background"]);
  assert.equal(done.user_id, "ana@example.com");
  const ws = await collect(await client("remember_stream", ana).runStream({ kwargs: { note: "websocket" } }));
  assert.deepStrictEqual(ws, { out: ["run", "background", "websocket"], err: undefined });
  const sse = await collect(client("remember_stream", ana).runStreamResumable({ kwargs: { note: "sse" } }));
  assert.deepStrictEqual(sse, { out: ["run", "background", "websocket", "sse"], err: undefined });
  // Another user, no user, and the user without persistent memory see none of it.
  assert.deepStrictEqual(await client("remember", { userId: "bob", persistentMemory: true }).run(), []);
  assert.deepStrictEqual(await client("remember").run(), []);
  assert.deepStrictEqual(await client("remember", { userId: "ana@example.com" }).run(), []);
});

test("runStreamResumable: through a proxy cutting every connection after 2 KB, exactly the chunks of an uninterrupted stream", { timeout: 60_000 }, async (t) => {
  const kwargs = { n: 600, delay: 0.002 };
  const direct = client("count_stream").runStreamResumable({ kwargs });
  const want = await collect(direct);
  assert.equal(want.err, undefined);
  assert.deepStrictEqual(want.out, Array.from({ length: 600 }, (_, i) => ({ i })));
  assert.equal(direct.reconnects, 0);

  const proxy = new CuttingProxy(apiPort, 2000);
  await proxy.listen();
  try {
    const c = client("count_stream", { baseUrl: `http://127.0.0.1:${proxy.port}`, retry: { maxAttempts: 5, initialBackoffMs: 10, maxBackoffMs: 50 } });
    const st = c.runStreamResumable({ kwargs });
    const got = await collect(st);
    assert.equal(got.err, undefined, String(got.err));
    assert.deepStrictEqual(got.out, want.out);
    assert.equal(st.totalChunks, 600);
    t.diagnostic(`${proxy.cuts} cuts, ${st.reconnects} re-joins`);
    assert.ok(proxy.cuts >= 10, `the proxy cut the stream ${proxy.cuts} times: the test would prove nothing`);
    assert.ok(st.reconnects >= proxy.cuts - 1, `${st.reconnects} re-joins for ${proxy.cuts} cuts`);
    assert.equal((await client("count_stream").getRun(st.runId!)).status, "completed");
  } finally {
    await proxy.close();
  }
});

test("runStreamResumable: an agent error ends it with its code after the chunks before it", { timeout: 60_000 }, async () => {
  const { out, err } = await collect(client("fail_stream").runStreamResumable({ kwargs: { after: 2 } }));
  assert.deepStrictEqual(out, ["chunk 0", "chunk 1"]);
  assert.ok(isCode(err, "INTERNAL_ERROR") && /failed after 2 chunks/.test((err as Error).message), String(err));
});

test("runStreamResumable: a stream left by break is re-joined with joinStream; cancelRun ends one with CANCELLED", { timeout: 60_000 }, async () => {
  const c = client("count_stream");
  const first = c.runStreamResumable({ kwargs: { n: 50, delay: 0.005 } });
  const head = await collect(first, 5);
  assert.equal(head.err, undefined);
  assert.equal(first.lastEventId, "4");
  const rest = await collect(c.joinStream(first.runId!, { lastEventId: first.lastEventId }));
  assert.equal(rest.err, undefined);
  assert.deepStrictEqual([...head.out, ...rest.out], Array.from({ length: 50 }, (_, i) => ({ i })));
  // From the first event, without an id.
  assert.equal((await collect(c.joinStream(first.runId!))).out.length, 50);

  const ticks = client("tick_stream");
  const st = ticks.runStreamResumable({ kwargs: { n: 1000, interval: 0.02 } });
  const got: unknown[] = [];
  let err: unknown;
  try {
    for await (const v of st) {
      got.push(v);
      if (got.length === 1) {
        const r = await ticks.cancelRun(st.runId!);
        assert.equal(r.run_id, st.runId);
      }
    }
  } catch (e) {
    err = e;
  }
  assert.ok(isCode(err, "CANCELLED"), `the stream ended with ${err} after ${got.length} chunks`);
  assert.deepStrictEqual(got[0], { tick: 0 });
  assert.equal((await pollRun(ticks, st.runId!, isRunEnded)).status, "cancelled");
});
