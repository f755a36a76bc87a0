// The shared SDK conformance suite (testdata/conformance/cases.json) against
// a real `runagent serve` of the showcase template; mirrors
// e2e/conformance_test.go. With RUNAGENT_CONFORMANCE_BASE_URL,
// RUNAGENT_CONFORMANCE_AGENT_ID and RUNAGENT_CONFORMANCE_API_KEY the cases
// run against that deployed agent instead (the Go end-to-end suite runs
// them so through a cluster's gateway).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { RunAgentClient, RunAgentError, isCode, parseJSON, stringifyJSON } from "../src/index.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
const suite = parseJSON(readFileSync(path.join(root, "testdata/conformance/cases.json"), "utf8")) as any;

let tmp = "";
let server: ChildProcess | undefined;
let logs = "";
let agentId = "";
let port = 0;
const remote = process.env.RUNAGENT_CONFORMANCE_BASE_URL;
const remoteKey = process.env.RUNAGENT_CONFORMANCE_API_KEY;

// clientFor calls the suite's agent: the local server, or the deployed one.
function clientFor(entrypointTag: string, extra: Record<string, unknown> = {}): RunAgentClient {
  if (remote) return new RunAgentClient({ agentId, entrypointTag, baseUrl: remote, apiKey: remoteKey, ...extra });
  return new RunAgentClient({ agentId, entrypointTag, local: true, host: "127.0.0.1", port, ...extra });
}

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

before(async () => {
  if (remote) {
    agentId = process.env.RUNAGENT_CONFORMANCE_AGENT_ID ?? "";
    if (!agentId || !remoteKey) {
      throw new Error("RUNAGENT_CONFORMANCE_BASE_URL needs RUNAGENT_CONFORMANCE_AGENT_ID and RUNAGENT_CONFORMANCE_API_KEY");
    }
    return;
  }
  tmp = mkdtempSync(path.join(tmpdir(), "runagent-js-"));
  let bin = path.join(root, "bin/runagent");
  if (!existsSync(bin)) {
    bin = path.join(tmp, "runagent");
    execFileSync("go", ["build", "-o", bin, "./cmd/runagent"], { cwd: root, env: { ...process.env, CGO_ENABLED: "0" }, stdio: "inherit" });
  }
  const cache = path.join(tmp, "cache");
  const env = { ...process.env, RUNAGENT_CACHE_DIR: cache };
  const dir = path.join(tmp, "agent");
  const out = execFileSync(bin, ["init", dir, "--template", suite.template, "--json"], { env, encoding: "utf8" });
  agentId = (JSON.parse(out) as any).agent_id;
  assert.ok(agentId, `init printed ${out}`);
  port = await freePort();
  serveCmd = { bin, dir, env };
  server = await startServer();
});

let serveCmd: { bin: string; dir: string; env: NodeJS.ProcessEnv } | undefined;

// startServer runs `runagent serve` of the suite's agent on `port` and waits
// until it is healthy.
async function startServer(): Promise<ChildProcess> {
  const { bin, dir, env } = serveCmd!;
  const proc = spawn(bin, ["serve", dir, "--port", String(port), ...suite.serve_args], { env, stdio: ["ignore", "pipe", "pipe"] });
  proc.stdout!.on("data", (d) => (logs += d));
  proc.stderr!.on("data", (d) => (logs += d));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error("runagent serve exited during start-up:\n" + logs);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/api/v1/health`);
      if (r.status === 200) return proc;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error("runagent serve not healthy after 60 s:\n" + logs);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function stopServer(proc: ChildProcess | undefined): Promise<void> {
  if (proc && proc.exitCode === null) {
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGINT");
    const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  }
}

after(async () => {
  await stopServer(server);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

function generated(spec: any): unknown {
  if (spec.repeat !== undefined) return String(spec.repeat).repeat(Number(spec.count));
  if (spec.nest !== undefined) {
    let v: unknown = "core";
    for (let i = 0; i < Number(spec.nest); i++) v = [v];
    return v;
  }
  throw new Error("unknown generate spec " + JSON.stringify(spec));
}

// canonical makes values compare by value: numbers (number or BigInt) by their integer/float text.
function canonical(v: unknown): unknown {
  return parseJSON(stringifyJSON(v));
}

for (const c of suite.cases as any[]) {
  test(`conformance: ${c.name}`, { timeout: 120_000 }, async () => {
    let args: unknown[] | undefined = c.args;
    if (c.generate?.args) args = (c.generate.args as any[]).map(generated);
    const kwargs = c.kwargs ?? {};
    const client = clientFor(c.tag);
    const call = c.call || (c.tag.endsWith("_stream") ? "run_stream" : "run");
    const signal = AbortSignal.timeout(60_000);
    let value: unknown;
    const chunks: unknown[] = [];
    let err: unknown;
    try {
      if (call === "run") value = await client.run({ args, kwargs }, { signal });
      else {
        const st = await client.runStream({ args, kwargs }, { signal });
        for await (const ch of st) chunks.push(ch);
      }
    } catch (e) {
      err = e;
    }
    const e = c.expect;
    if (e.error) {
      assert.ok(isCode(err, e.error.code) && (err as RunAgentError).message.includes(e.error.message_contains ?? ""),
        `error = ${err}, want code ${e.error.code} containing ${JSON.stringify(e.error.message_contains ?? "")}`);
    } else if (err) {
      assert.fail(`unexpected error: ${err}`);
    }
    if ("value" in e) assert.deepStrictEqual(canonical(value), canonical(e.value));
    else if (e.echo_args) {
      const want = { args: args ?? [], kwargs };
      const same = stringifyJSON(canonical(value)) === stringifyJSON(canonical(want));
      assert.ok(same, `echo came back different (${stringifyJSON(want).length} chars sent)`);
      assert.deepStrictEqual(canonical(value), canonical(want));
    }
    if (e.chunks) assert.deepStrictEqual(canonical(chunks), canonical(e.chunks));
    if (e.chunk_count !== undefined) assert.equal(chunks.length, e.chunk_count);
  });
}

// A call made while the server is down is retried until it comes back.
test("retries across a server restart", { skip: remote && "the suite does not restart a deployed agent's server" }, async () => {
  await stopServer(server);
  const client = clientFor("echo", {
    retry: { maxAttempts: 30, initialBackoffMs: 100, maxBackoffMs: 500, maxElapsedMs: 45_000 },
  });
  const call = client.run({ args: ["are you back?"] });
  let settled = false;
  call.then(() => (settled = true), () => (settled = true));
  await new Promise((r) => setTimeout(r, 1000)); // retrying against a closed port now
  assert.equal(settled, false, "the call ended while the server was down");
  server = await startServer();
  const v = (await call) as any;
  assert.deepEqual(v.args, ["are you back?"]);
});
