import { ErrorCode, RunAgentError, failedEnvelopeError, frameError, httpError, malformed } from "./errors.js";
import { decodeData, parseJSON, stringifyJSON } from "./json.js";
import { Clock, Retrier, RetryOptions, defaultClock, normalizeRetry, NormalizedRetry } from "./retry.js";

export const DEFAULT_BASE_URL = "https://backend.run-agent.ai";
export const DEFAULT_LOCAL_HOST = "127.0.0.1";
export const DEFAULT_LOCAL_PORT = 8450;
export const DEFAULT_TIMEOUT_MS = 300_000;

/** A WebSocket constructor with the standard (browser) API; `ws` fits. */
export type WebSocketCtor = new (url: string, protocols?: any, options?: any) => any;

export interface RunAgentClientOptions {
  agentId: string;
  entrypointTag: string;
  /** Talk to a local `runagent serve` (env RUNAGENT_LOCAL=true). */
  local?: boolean;
  /** Local host (env RUNAGENT_HOST, default 127.0.0.1). No registry lookup is done. */
  host?: string;
  /** Local port (env RUNAGENT_PORT, default 8450). */
  port?: number;
  /** Remote base URL (env RUNAGENT_BASE_URL, default https://backend.run-agent.ai). */
  baseUrl?: string;
  /** API key (env RUNAGENT_API_KEY): `Authorization: Bearer KEY`, and `?token=KEY` on WebSockets. */
  apiKey?: string;
  /** Bound of `run` including retries, sent as timeout_seconds (env RUNAGENT_TIMEOUT in seconds, default 300 s). */
  timeoutMs?: number;
  /** Retry policy, or false to disable retries. */
  retry?: RetryOptions | false;
  /** Custom fetch (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** Custom WebSocket constructor (default: globalThis.WebSocket, else the `ws` package). */
  WebSocket?: WebSocketCtor;
  /** Time source of the retry loop (tests). */
  clock?: Partial<Clock>;
  /**
   * The user the runs are for: sent in every run, stream and background-run
   * body as `user_id` (with `persistent_memory`). The server shows it on the
   * run record and, with `persistentMemory`, runs the call on an instance of
   * that user's own.
   */
  userId?: string;
  /**
   * Run the calls on an instance that sees `userId`'s persistent folders
   * (the agent's `persistent_folders`, kept per user between runs). Needs
   * `userId`: without one the constructor throws VALIDATION_ERROR.
   */
  persistentMemory?: boolean;
}

/** What the agent function is called with: fn(*args, **kwargs). */
export interface RunInput {
  args?: unknown[];
  kwargs?: Record<string, unknown>;
}

export interface CallOptions {
  /** Cancels the call (CANCELLED); for streams it closes the WebSocket at once. */
  signal?: AbortSignal;
}

export interface StreamOptions extends CallOptions {
  /** Called for each per-chunk error ("Chunk serialization failed", an undecodable chunk); the stream goes on. */
  onChunkError?: (err: RunAgentError) => void;
}

export interface JoinStreamOptions extends StreamOptions {
  /** Re-join after this event (a ResumableStream's lastEventId); absent: from the first event. */
  lastEventId?: string;
}

/** A background run's options beside its input (runagent server). */
export interface RunOptions extends CallOptions {
  /**
   * Makes the create safe to repeat: the server answers the run it already
   * has for this key (same input), or 409 RESOURCE_ALREADY_EXISTS for
   * another input. Printable ASCII, at most 255 characters. Without one the
   * client makes one per call (crypto.randomUUID), so that its own retries
   * never create a second run.
   */
  idempotencyKey?: string;
  /** An http(s) URL the run's outcome is POSTed to, signed, once it has ended. */
  webhook?: string;
  /** A conversation's id (1 to 128 printable ASCII characters): the runs of a thread run one at a time, in order. */
  threadId?: string;
  /** With threadId: "reject" (the server's default) refuses a create while a run of the thread is queued or running; "enqueue" runs it after them. */
  multitask?: "reject" | "enqueue";
}

/** The status of a run; the last four are final (see RUN_ENDED_STATUSES). */
export type RunStatus = "pending" | "running" | "completed" | "failed" | "cancelled" | "timeout";

/** The statuses of a run that has ended. */
export const RUN_ENDED_STATUSES: readonly RunStatus[] = ["completed", "failed", "cancelled", "timeout"];

/** Whether a run's status is final (completed, failed, cancelled, timeout). */
export function isRunEnded(status: unknown): boolean {
  return typeof status === "string" && (RUN_ENDED_STATUSES as readonly string[]).includes(status);
}

/**
 * A run as the server shows it (GET /api/v1/runs/{id}), keys as on the
 * wire. `output_data` is the result, decoded as `run()` decodes results
 * (integers beyond ±2^53−1 as BigInt); null until the run has completed.
 * Timestamps are ISO 8601 in UTC without a zone.
 */
export interface Run {
  run_id: string;
  invocation_id: string;
  agent_id: string;
  /** pending, running, completed, failed, cancelled or timeout. */
  status: RunStatus | (string & {});
  entrypoint_tag: string;
  input_data: { input_args: unknown[]; input_kwargs: Record<string, unknown> };
  output_data: unknown;
  /** Why it failed (`CANCELLED: ...`, `TIMEOUT: ...`, the agent's error), else null. */
  error_detail: string | null;
  request_timestamp: string;
  started_at: string | null;
  response_timestamp: string | null;
  execution_time_ms: number | null;
  /** Times it was started (a run the server stopped under may run again if its entrypoint is idempotent). */
  attempts: number;
  /** False for a sync or streamed call read as a run. */
  background: boolean;
  idempotency_key: string | null;
  webhook: string | null;
  thread_id: string | null;
  /** The user of a run with persistent memory, else null. */
  user_id: string | null;
  sdk_type: string;
  client_info: unknown;
  [key: string]: unknown;
}

/** The answer to startRun: the run is on the server's disk, queued. */
export interface RunAccepted {
  run_id: string;
  invocation_id: string;
  agent_id: string;
  status: RunStatus | (string & {});
  /** The run's path (/api/v1/runs/RUN_ID). */
  status_url: string;
  /** The Idempotency-Key the create was sent with (given, or made by the client). */
  idempotency_key: string;
  /** True when the server answered a run it already had for this key (Idempotent-Replayed). */
  replayed: boolean;
  [key: string]: unknown;
}

function env(name: string): string | undefined {
  const p = (globalThis as any).process;
  const v = p?.env?.[name];
  return typeof v === "string" && v !== "" ? v : undefined;
}

function validation(message: string): RunAgentError {
  return new RunAgentError({ code: ErrorCode.VALIDATION, message });
}

/** Classifies a fetch / WebSocket failure before any response arrived. */
export function transportError(err: unknown): RunAgentError {
  const cause = (err as any)?.cause ?? err;
  const code: string = cause?.code ?? "";
  const text = String((cause as any)?.message ?? (err as any)?.message ?? err);
  let retryable = true;
  if (code === "ENOTFOUND" || /CERT|SSL|TLS|SELF_SIGNED/i.test(code)) retryable = false;
  return new RunAgentError({ code: ErrorCode.CONNECTION, message: "connection failed: " + (code && !text.includes(code) ? code + " " : "") + text, cause: err, retryable });
}

let wsModule: Promise<WebSocketCtor> | undefined;
async function loadWebSocket(): Promise<WebSocketCtor> {
  const g = (globalThis as any).WebSocket;
  if (typeof g === "function") return g;
  if (!wsModule) {
    const name = "ws";
    wsModule = import(name).then((m: any) => (m.WebSocket ?? m.default) as WebSocketCtor);
  }
  return wsModule;
}

/** A call's cancellation: the caller's signal and an optional deadline. */
class CallScope {
  readonly ctl = new AbortController();
  timedOut = false;
  private timer: any;
  private onAbort?: () => void;
  constructor(readonly user: AbortSignal | undefined, timeoutMs: number | undefined, clock: Clock) {
    if (user) {
      if (user.aborted) this.ctl.abort(user.reason);
      else {
        this.onAbort = () => this.ctl.abort(user.reason);
        user.addEventListener("abort", this.onAbort, { once: true });
      }
    }
    if (timeoutMs !== undefined && timeoutMs > 0) {
      this.deadline = clock.now() + timeoutMs;
      this.timer = setTimeout(() => {
        this.timedOut = true;
        this.ctl.abort(new Error("deadline exceeded"));
      }, timeoutMs);
    }
  }
  deadline?: number;
  get signal(): AbortSignal {
    return this.ctl.signal;
  }
  error(): RunAgentError {
    if (this.timedOut && !this.user?.aborted) return new RunAgentError({ code: ErrorCode.TIMEOUT, message: "deadline exceeded" });
    return new RunAgentError({ code: ErrorCode.CANCELLED, message: "request cancelled", cause: this.user?.reason });
  }
  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.onAbort) this.user?.removeEventListener("abort", this.onAbort);
  }
}

/**
 * A client for one (agent id, entrypoint tag).
 *
 *   const c = new RunAgentClient({ agentId, entrypointTag: "add", local: true, port: 8450 });
 *   const v = await c.run({ args: [40, 2] });
 */
export class RunAgentClient {
  readonly agentId: string;
  readonly entrypointTag: string;
  readonly baseUrl: string;
  readonly timeoutMs: number;
  private readonly apiKey?: string;
  private readonly retry: NormalizedRetry;
  private readonly clock: Clock;
  private readonly fetchFn?: typeof fetch;
  private readonly wsCtor?: WebSocketCtor;
  /** user_id and persistent_memory, sent in every run body; undefined without a userId. */
  private readonly user?: { user_id: string; persistent_memory: boolean };

  constructor(o: RunAgentClientOptions) {
    if (!o || !o.agentId) throw validation("agentId is required");
    if (!o.entrypointTag) throw validation("entrypointTag is required");
    if (o.userId !== undefined && typeof o.userId !== "string") throw validation("userId must be a string");
    if (o.persistentMemory && !o.userId) {
      throw validation("persistentMemory needs a userId: the user whose persistent folders the agent's runs see");
    }
    if (o.userId) this.user = { user_id: o.userId, persistent_memory: !!o.persistentMemory };
    this.agentId = o.agentId;
    this.entrypointTag = o.entrypointTag;
    this.apiKey = o.apiKey ?? env("RUNAGENT_API_KEY");
    const local = o.local ?? env("RUNAGENT_LOCAL")?.toLowerCase() === "true";
    if (local) {
      const host = o.host ?? env("RUNAGENT_HOST") ?? DEFAULT_LOCAL_HOST;
      const port = o.port ?? (env("RUNAGENT_PORT") !== undefined ? Number(env("RUNAGENT_PORT")) : DEFAULT_LOCAL_PORT);
      if (!Number.isInteger(port) || port <= 0 || port > 65535) throw validation(`invalid port ${port}`);
      this.baseUrl = `http://${host.includes(":") && !host.startsWith("[") ? `[${host}]` : host}:${port}`;
    } else {
      const b = o.baseUrl ?? env("RUNAGENT_BASE_URL") ?? DEFAULT_BASE_URL;
      if (!/^https?:\/\//i.test(b)) throw validation(`invalid base URL ${JSON.stringify(b)}: want http:// or https://`);
      this.baseUrl = b.replace(/\/+$/, "").replace(/\/api\/v1$/, "");
    }
    let t = o.timeoutMs;
    if (t === undefined && env("RUNAGENT_TIMEOUT") !== undefined) t = Number(env("RUNAGENT_TIMEOUT")) * 1000;
    this.timeoutMs = t !== undefined && Number.isFinite(t) && t > 0 ? t : DEFAULT_TIMEOUT_MS;
    this.retry = normalizeRetry(o.retry);
    this.clock = { ...defaultClock, ...(o.clock ?? {}) };
    this.fetchFn = o.fetch;
    this.wsCtor = o.WebSocket;
  }

  /** The user the runs are for (the `userId` option), if any. */
  get userId(): string | undefined {
    return this.user?.user_id;
  }

  /** Whether the runs see the user's persistent folders (the `persistentMemory` option). */
  get persistentMemory(): boolean {
    return this.user?.persistent_memory ?? false;
  }

  private url(path: string): string {
    return `${this.baseUrl}/api/v1/agents/${encodeURIComponent(this.agentId)}${path}`;
  }

  private runUrl(runId: string, tail = ""): string {
    if (typeof runId !== "string" || runId === "") throw validation("a run id is required");
    return `${this.baseUrl}/api/v1/runs/${encodeURIComponent(runId)}${tail}`;
  }

  /** The wire /run body as an object: input, timeout_seconds, the user's fields. */
  private requestObject(input: RunInput | undefined, timeoutSeconds?: number): Record<string, unknown> {
    const args = input?.args ?? [];
    const kwargs = input?.kwargs ?? {};
    if (!Array.isArray(args)) throw validation("args must be an array");
    if (kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs)) throw validation("kwargs must be an object");
    const req: Record<string, unknown> = { entrypoint_tag: this.entrypointTag, input_args: args, input_kwargs: kwargs };
    if (timeoutSeconds) req.timeout_seconds = timeoutSeconds;
    if (this.user) Object.assign(req, this.user);
    return req;
  }

  private requestBody(input: RunInput | undefined, timeoutSeconds?: number): string {
    return stringifyJSON(this.requestObject(input, timeoutSeconds));
  }

  private timeoutSeconds(): number {
    return Math.max(1, Math.ceil(this.timeoutMs / 1000));
  }

  /**
   * One REST call under the retry policy: connection failures, 429 and 503
   * are retried; another non-2xx answer throws its error; a 2xx answer goes
   * to handle. Bounded by timeoutMs (retries included) and the signal.
   */
  private async request<T>(
    method: string, url: string, body: string | undefined,
    handle: (status: number, text: string, headers: Headers) => T,
    o: { signal?: AbortSignal; timeoutMs?: number; headers?: Record<string, string> } = {},
  ): Promise<T> {
    const scope = new CallScope(o.signal, o.timeoutMs ?? this.timeoutMs, this.clock);
    const r = new Retrier(this.retry, this.clock, scope.deadline);
    const doFetch = this.fetchFn ?? globalThis.fetch;
    const headers: Record<string, string> = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    Object.assign(headers, o.headers);
    try {
      for (;;) {
        if (scope.signal.aborted) throw scope.error();
        let err: RunAgentError;
        try {
          const res = await doFetch(url, { method, headers, body, signal: scope.signal });
          let text: string;
          try {
            text = await res.text();
          } catch (e) {
            if (scope.signal.aborted) throw scope.error();
            throw new RunAgentError({ code: ErrorCode.CONNECTION, message: "reading the response failed: " + String((e as any)?.message ?? e), status: res.status, cause: e });
          }
          if (res.status < 200 || res.status > 299) {
            err = httpError(res.status, text, res.headers.get("retry-after"));
          } else {
            return handle(res.status, text, res.headers);
          }
        } catch (e) {
          if (e instanceof RunAgentError) throw e;
          if (scope.signal.aborted) throw scope.error();
          err = transportError(e);
        }
        await r.wait(err, scope.signal, () => scope.error());
      }
    } finally {
      scope.dispose();
    }
  }

  /**
   * Calls the (non-streaming) entrypoint with fn(*args, **kwargs) and
   * resolves to the decoded result. Throws RunAgentError.
   */
  async run(input: RunInput = {}, opts: CallOptions = {}): Promise<unknown> {
    if (this.entrypointTag.endsWith("_stream")) {
      throw validation(`entrypoint ${JSON.stringify(this.entrypointTag)} is a streaming entrypoint: use runStream`);
    }
    const body = this.requestBody(input, this.timeoutSeconds());
    return this.request("POST", this.url("/run"), body, parseRunResponse, { signal: opts.signal });
  }

  /**
   * Creates a background run of fn(*args, **kwargs) (runagent server) and
   * resolves once the server has it on disk, queued: `{ run_id, status:
   * "pending", ... }`. Read it with getRun, wait for it with waitRun. The
   * create carries an Idempotency-Key (opts.idempotencyKey, else a fresh
   * UUID), so a retried create never makes a second run.
   */
  async startRun(input: RunInput = {}, opts: RunOptions = {}): Promise<RunAccepted> {
    if (this.entrypointTag.endsWith("_stream")) {
      throw validation(`entrypoint ${JSON.stringify(this.entrypointTag)} is a streaming entrypoint: a background run calls a plain one (use runStreamResumable)`);
    }
    const req = this.requestObject(input, this.timeoutSeconds());
    if (opts.webhook !== undefined) req.webhook = opts.webhook;
    if (opts.threadId !== undefined) req.thread_id = opts.threadId;
    if (opts.multitask !== undefined) req.multitask = opts.multitask;
    let key = opts.idempotencyKey;
    if (key === undefined || key === "") key = await newIdempotencyKey();
    else if (typeof key !== "string" || key.length > 255 || !/^[\x20-\x7e]+$/.test(key)) {
      throw validation("idempotencyKey must be 1 to 255 printable ASCII characters (a UUID is a good key)");
    }
    const idempotencyKey = key;
    return this.request("POST", this.url("/runs"), stringifyJSON(req), (status, text, headers) => {
      const data = parseEnvelopeData(status, text) as Record<string, unknown>;
      return { ...data, idempotency_key: idempotencyKey, replayed: headers.get("idempotent-replayed") === "true" } as RunAccepted;
    }, { signal: opts.signal, headers: { "Idempotency-Key": idempotencyKey } });
  }

  /**
   * The run with this id, as it is now: `status` (pending, running,
   * completed, failed, cancelled, timeout), `output_data`, `error_detail`,
   * `attempts`, ... Any invocation's id works.
   */
  async getRun(runId: string, opts: CallOptions = {}): Promise<Run> {
    return this.request("GET", this.runUrl(runId), undefined, parseRunRecord, { signal: opts.signal });
  }

  /**
   * The run once it has ended (completed, failed, cancelled, timeout), or
   * as it is after timeoutSeconds (default 30): check `status`. Waits on
   * the server (GET .../wait, at most 300 s a request, again until then).
   */
  async waitRun(runId: string, timeoutSeconds = 30, opts: CallOptions = {}): Promise<Run> {
    if (typeof timeoutSeconds !== "number" || !(timeoutSeconds >= 0) || !Number.isFinite(timeoutSeconds)) {
      throw validation(`timeoutSeconds must be a non-negative number of seconds, got ${String(timeoutSeconds)}`);
    }
    this.runUrl(runId); // checks the id
    const end = this.clock.now() + timeoutSeconds * 1000;
    for (;;) {
      const waitMs = Math.min(Math.max(0, end - this.clock.now()), MAX_RUN_WAIT_MS);
      const url = this.runUrl(runId, `/wait?timeout_seconds=${(waitMs / 1000).toFixed(3)}`);
      // The server holds the request for waitMs: the client's bound is on top of it.
      const run = await this.request("GET", url, undefined, parseRunRecord, { signal: opts.signal, timeoutMs: this.timeoutMs + waitMs });
      if (isRunEnded(run.status) || this.clock.now() >= end) return run;
    }
  }

  /**
   * Cancels a run: resolves to the run once it has ended (`cancelled`, or
   * as it had ended before); if the cancel is still on its way after the
   * server's 5 s, to the run as it is then (waitRun for its end).
   */
  async cancelRun(runId: string, opts: CallOptions = {}): Promise<Run> {
    return this.request("POST", this.runUrl(runId, "/cancel"), undefined, parseRunRecord, { signal: opts.signal });
  }

  /**
   * Streams the streaming entrypoint (tag ending in `_stream`) over
   * Server-Sent Events with `"on_disconnect": "continue"` (runagent
   * server): the stream runs on while the client is away, and after a
   * dropped connection the client re-joins it (GET /api/v1/runs/ID/stream,
   * Last-Event-ID) under the retry policy, so that every chunk is yielded
   * exactly once. The request is made at the first iteration.
   * Breaking out or close() ends the iteration, not the run: cancel it with
   * cancelRun(stream.runId).
   */
  runStreamResumable(input: RunInput = {}, opts: StreamOptions = {}): ResumableStream {
    if (!this.entrypointTag.endsWith("_stream")) {
      throw validation(`entrypoint ${JSON.stringify(this.entrypointTag)} is not a streaming entrypoint (its tag does not end in _stream): use run or startRun`);
    }
    const req = this.requestObject(input);
    req.on_disconnect = "continue";
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    return new ResumableStream({
      fetch: this.fetchFn ?? ((...a: Parameters<typeof fetch>) => globalThis.fetch(...a)),
      createUrl: this.url("/run-stream"),
      runUrl: (id) => this.runUrl(id, "/stream"),
      body: stringifyJSON(req),
      headers,
      retry: this.retry,
      clock: this.clock,
      signal: opts.signal,
      onChunkError: opts.onChunkError,
    });
  }

  /**
   * Re-joins the stream of a run begun with runStreamResumable (by this
   * process or another): the events after opts.lastEventId (all without
   * it), then the live ones, as runStreamResumable yields them. Only
   * streams begun with "on_disconnect": "continue" can be re-joined, while
   * the server keeps their log (NOT_FOUND otherwise).
   */
  joinStream(runId: string, opts: JoinStreamOptions = {}): ResumableStream {
    const url = this.runUrl(runId, "/stream");
    if (opts.lastEventId !== undefined && !/^-?\d+$/.test(opts.lastEventId)) {
      throw validation(`lastEventId must be an event id (a whole number), got ${JSON.stringify(opts.lastEventId)}`);
    }
    const headers: Record<string, string> = { Accept: "text/event-stream" };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    return new ResumableStream({
      fetch: this.fetchFn ?? ((...a: Parameters<typeof fetch>) => globalThis.fetch(...a)),
      createUrl: url,
      runUrl: () => url,
      body: "",
      headers,
      retry: this.retry,
      clock: this.clock,
      signal: opts.signal,
      onChunkError: opts.onChunkError,
      runId,
      lastEventId: opts.lastEventId,
    });
  }

  /**
   * Opens a stream of the streaming entrypoint (tag ending in `_stream`) and
   * resolves once the server started it; iterate the result with
   * `for await`. Errors before the stream starts (unknown tag) reject here.
   */
  async runStream(input: RunInput = {}, opts: StreamOptions = {}): Promise<RunStream> {
    if (!this.entrypointTag.endsWith("_stream")) {
      throw validation(`entrypoint ${JSON.stringify(this.entrypointTag)} is not a streaming entrypoint: use run`);
    }
    const body = this.requestBody(input);
    const Ctor = this.wsCtor ?? (await loadWebSocket());
    let url = this.url("/run-stream").replace(/^http/i, "ws");
    if (this.apiKey) url += `?token=${encodeURIComponent(this.apiKey)}`;
    const headers: Record<string, string> = {};
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    const scope = new CallScope(opts.signal, undefined, this.clock);
    const r = new Retrier(this.retry, this.clock);
    const open = () => openConn(Ctor, url, headers, body, scope);
    for (;;) {
      if (scope.signal.aborted) {
        scope.dispose();
        throw scope.error();
      }
      try {
        const conn = await open();
        return new RunStream(conn, open, r, scope, opts.onChunkError);
      } catch (e) {
        const err = e instanceof RunAgentError ? e : transportError(e);
        try {
          await r.wait(err, scope.signal, () => scope.error());
        } catch (final) {
          scope.dispose();
          throw final;
        }
      }
    }
  }
}

/** Parses the body of a 2xx /run response. */
export function parseRunResponse(status: number, text: string): unknown {
  return decodeData(parseEnvelopeData(status, text));
}

/** The `data` of a 2xx envelope (parsed with parseJSON, not decoded further); a failed envelope throws its error. */
export function parseEnvelopeData(status: number, text: string): unknown {
  let env: unknown;
  try {
    env = parseJSON(text);
  } catch (e) {
    throw malformed("malformed response: not a RunAgent envelope: " + (e as Error).message, status);
  }
  if (!env || typeof env !== "object" || Array.isArray(env) || typeof (env as any).success !== "boolean") {
    throw malformed("malformed response: not a RunAgent envelope", status);
  }
  const e = env as Record<string, unknown>;
  if (e.success) return e.data;
  throw failedEnvelopeError(status, e);
}

/** The run of a 2xx runs-route answer. */
export function parseRunRecord(status: number, text: string): Run {
  const data = parseEnvelopeData(status, text);
  if (!data || typeof data !== "object" || Array.isArray(data) || typeof (data as any).run_id !== "string") {
    throw malformed("malformed response: the envelope holds no run", status);
  }
  return data as Run;
}

/** The longest wait of one GET /runs/{id}/wait (the server's bound). */
const MAX_RUN_WAIT_MS = 300_000;

/** A random (version 4) UUID, for an Idempotency-Key. */
async function newIdempotencyKey(): Promise<string> {
  const c = (globalThis as any).crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  let b: Uint8Array;
  if (typeof c?.getRandomValues === "function") {
    b = c.getRandomValues(new Uint8Array(16)); // insecure (http:) browser pages have no randomUUID
  } else {
    const name = "node:crypto"; // Node 18 without the global: not a static import, for browsers' sake
    const m: any = await import(name);
    if (typeof m.randomUUID === "function") return m.randomUUID();
    b = new Uint8Array(m.randomBytes(16));
  }
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

type ConnEvent = { kind: "frame"; data: string } | { kind: "close"; code: number; reason: string } | { kind: "error"; err: RunAgentError };

/** One WebSocket with a queue of its events, in arrival order. */
class Conn {
  private queue: ConnEvent[] = [];
  private waiter?: (ev: ConnEvent) => void;
  ended = false;
  constructor(readonly sock: any) {}
  push(ev: ConnEvent): void {
    if (this.ended) return;
    if (ev.kind !== "frame") this.ended = true;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(ev);
    } else this.queue.push(ev);
  }
  unshift(ev: ConnEvent): void {
    this.queue.unshift(ev);
  }
  next(): Promise<ConnEvent> {
    const ev = this.queue.shift();
    if (ev) return Promise.resolve(ev);
    return new Promise((resolve) => (this.waiter = resolve));
  }
  close(): void {
    try {
      this.sock.close(1000);
    } catch {
      /* already closed */
    }
  }
}

function closeError(code: number, reason: string): RunAgentError {
  return new RunAgentError({
    code: code === 1013 ? ErrorCode.OVERLOADED : ErrorCode.CONNECTION,
    message: `stream closed before completion (close ${code}${reason ? ": " + reason : ""})`,
    retryable: true,
  });
}

/** Opens a socket, sends the request frame and waits for stream_started. */
async function openConn(Ctor: WebSocketCtor, url: string, headers: Record<string, string>, body: string, scope: CallScope): Promise<Conn> {
  const isWs = typeof (Ctor as any).prototype?.on === "function"; // the `ws` package
  const sock = isWs ? new Ctor(url, undefined, { headers, maxPayload: 0, perMessageDeflate: false }) : new Ctor(url);
  const conn = new Conn(sock);
  let opened = false;
  const onAbort = () => {
    conn.push({ kind: "error", err: scope.error() });
    conn.close();
  };
  scope.signal.addEventListener("abort", onAbort, { once: true });
  (conn as any).detach = () => scope.signal.removeEventListener("abort", onAbort);
  if (isWs) {
    sock.on("unexpected-response", (req: any, res: any) => {
      let text = "";
      res.setEncoding?.("utf8");
      res.on("data", (d: string) => {
        if (text.length < 4096) text += d;
      });
      res.on("end", () => {
        conn.push({ kind: "error", err: httpError(res.statusCode, text, res.headers?.["retry-after"]) });
        req.destroy?.();
      });
      res.on("error", () => conn.push({ kind: "error", err: httpError(res.statusCode, text, res.headers?.["retry-after"]) }));
    });
  }
  sock.addEventListener("open", () => {
    opened = true;
    try {
      sock.send(body);
    } catch (e) {
      conn.push({ kind: "error", err: transportError(e) });
    }
  });
  sock.addEventListener("message", (ev: any) => {
    const d = ev.data;
    conn.push({ kind: "frame", data: typeof d === "string" ? d : new TextDecoder().decode(d as ArrayBuffer) });
  });
  sock.addEventListener("error", (ev: any) => {
    if (!opened) conn.push({ kind: "error", err: transportError(ev?.error ?? new Error(ev?.message ?? "WebSocket error")) });
  });
  sock.addEventListener("close", (ev: any) => conn.push({ kind: "close", code: ev?.code ?? 1006, reason: ev?.reason ?? "" }));

  try {
    for (;;) {
      const ev = await conn.next();
      if (ev.kind === "error") throw ev.err;
      if (ev.kind === "close") throw closeError(ev.code, ev.reason);
      const fr = parseFrame(ev.data);
      if (fr.type === "status" && fr.status === "stream_started") {
        (conn as any).invocationId = typeof fr.invocation_id === "string" ? fr.invocation_id : undefined;
        return conn;
      }
      if (fr.type === "error") {
        const err = frameError(fr);
        if (!err.chunkError) throw err;
        conn.unshift(ev); // surfaced by the stream
        return conn;
      }
      if (fr.type === "data" || (fr.type === "status" && fr.status === "stream_completed")) {
        conn.unshift(ev); // no stream_started: begin anyway
        return conn;
      }
    }
  } catch (e) {
    (conn as any).detach();
    conn.close();
    throw e;
  }
}

function parseFrame(data: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = parseJSON(data);
  } catch {
    throw malformed("malformed stream frame: not JSON");
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw malformed("malformed stream frame: not an object");
  return v as Record<string, unknown>;
}

/**
 * A running stream: an async iterable of decoded chunks. It ends after
 * `stream_completed`; a close before that throws CONNECTION_ERROR, an agent
 * error throws its code. Per-chunk errors do not end it (see chunkErrors).
 * Breaking out of `for await`, `close()` or aborting the signal closes the
 * WebSocket at once.
 */
export class RunStream implements AsyncIterable<unknown> {
  /** Per-chunk errors seen so far (the stream went on after each). */
  readonly chunkErrors: RunAgentError[] = [];
  private done = false;
  private started = false;

  constructor(
    private conn: Conn,
    private readonly reopen: () => Promise<Conn>,
    private readonly retrier: Retrier,
    private readonly scope: CallScope,
    private readonly onChunkError?: (err: RunAgentError) => void,
  ) {}

  /** The server's invocation id (from stream_started). */
  get invocationId(): string | undefined {
    return (this.conn as any).invocationId;
  }

  /** Closes the WebSocket; iteration then ends. */
  close(): void {
    this.finish();
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    (this.conn as any).detach?.();
    this.conn.close();
    this.scope.dispose();
  }

  private chunkError(err: RunAgentError): void {
    this.chunkErrors.push(err);
    this.onChunkError?.(err);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<unknown> {
    if (this.started) throw new RunAgentError({ code: ErrorCode.VALIDATION, message: "a RunStream can be iterated once" });
    this.started = true;
    let gotData = false;
    try {
      while (!this.done) {
        const ev = await this.conn.next();
        let err: RunAgentError;
        if (ev.kind === "frame") {
          let fr: Record<string, unknown>;
          try {
            fr = parseFrame(ev.data);
          } catch (e) {
            this.chunkError(new RunAgentError({ code: ErrorCode.INTERNAL, message: (e as Error).message, chunkError: true }));
            continue;
          }
          if (fr.type === "data") {
            gotData = true;
            let v: unknown;
            try {
              v = decodeData(fr.content);
            } catch (e) {
              this.chunkError(new RunAgentError({ code: ErrorCode.INTERNAL, message: "chunk decode failed: " + (e as Error).message, chunkError: true }));
              continue;
            }
            yield v;
            continue;
          }
          if (fr.type === "status") {
            if (fr.status === "stream_completed") {
              this.finish();
              return;
            }
            continue;
          }
          if (fr.type !== "error") continue;
          err = frameError(fr);
          if (err.chunkError) {
            this.chunkError(err);
            continue;
          }
        } else if (ev.kind === "error") {
          err = ev.err;
        } else {
          err = closeError(ev.code, ev.reason);
        }
        if (this.done) return;
        if (gotData || this.scope.signal.aborted) throw err;
        // No data yet: the stream may be re-sent.
        (this.conn as any).detach?.();
        this.conn.close();
        for (;;) {
          await this.retrier.wait(err, this.scope.signal, () => this.scope.error());
          try {
            this.conn = await this.reopen();
            break;
          } catch (e) {
            err = e instanceof RunAgentError ? e : transportError(e);
          }
        }
      }
    } finally {
      this.finish();
    }
  }
}

/** One Server-Sent Event (comments and retry fields dropped). */
export interface SSEEvent {
  /** The event type ("message" when the event named none). */
  event: string;
  /** The data lines, joined with "\n". */
  data: string;
  /** The event's id field, when it had one. */
  id?: string;
}

/**
 * Parses a text/event-stream body into events, as the EventSource
 * algorithm does. An event cut off by the end of the body (no blank line
 * after it) is dropped, never half-delivered. A failed read throws it as
 * it came (the caller classifies it). An abort of signal ends the body (a
 * pending read too): the events end there.
 */
export async function* readSSE(body: ReadableStream<Uint8Array>, signal?: AbortSignal): AsyncGenerator<SSEEvent> {
  const reader = body.getReader();
  const onAbort = () => reader.cancel(signal?.reason).catch(() => {});
  if (signal?.aborted) onAbort();
  signal?.addEventListener("abort", onAbort, { once: true });
  const dec = new TextDecoder();
  let buf = "";
  let first = true;
  let event = "";
  let id: string | undefined;
  let data: string[] = [];
  let seen = false;
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) buf += dec.decode();
      else buf += dec.decode(r.value, { stream: true });
      if (first && buf.length > 0) {
        if (buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1);
        first = false;
      }
      let pos = 0;
      for (;;) {
        let i = pos;
        while (i < buf.length && buf.charCodeAt(i) !== 10 && buf.charCodeAt(i) !== 13) i++;
        if (i >= buf.length) break;
        // A CR at the end of what arrived may be the first half of a CRLF.
        if (buf.charCodeAt(i) === 13 && i + 1 >= buf.length && !r.done) break;
        const line = buf.slice(pos, i);
        pos = i + (buf.charCodeAt(i) === 13 && buf.charCodeAt(i + 1) === 10 ? 2 : 1);
        if (line === "") {
          if (seen) yield { event: event || "message", data: data.join("\n"), ...(id !== undefined ? { id } : {}) };
          event = "";
          id = undefined;
          data = [];
          seen = false;
          continue;
        }
        if (line.charCodeAt(0) === 58 /* : */) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.charCodeAt(0) === 32) value = value.slice(1);
        if (name === "data") data.push(value);
        else if (name === "event") event = value;
        else if (name === "id") {
          if (!value.includes("\u0000")) id = value;
        } else continue;
        seen = true;
      }
      buf = buf.slice(pos);
      if (r.done) return;
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.cancel().catch(() => {});
    try {
      reader.releaseLock();
    } catch {
      /* a read is pending */
    }
  }
}

interface ResumableInit {
  fetch: typeof fetch;
  createUrl: string;
  runUrl: (runId: string) => string;
  body: string;
  headers: Record<string, string>;
  retry: NormalizedRetry;
  clock: Clock;
  signal?: AbortSignal;
  onChunkError?: (err: RunAgentError) => void;
  /** joinStream: the run to re-join (no create is sent), after lastEventId. */
  runId?: string;
  lastEventId?: string;
}

const RUNS_PATH = "/api/v1/runs/";

/**
 * A stream that outlives its connections (runStreamResumable): an async
 * iterable of decoded chunks, each exactly once, in order. A dropped
 * connection is re-joined from the last event received (Last-Event-ID)
 * under the client's retry policy, whose attempts start afresh after each
 * connection that brought chunks. It ends after the `done` event; an
 * `error` event throws its code (CANCELLED once the run was cancelled).
 * Per-chunk errors (`chunk_error`, an undecodable chunk) do not end it:
 * they go to onChunkError / chunkErrors. close(), break or the signal end
 * the iteration (the signal with CANCELLED); the run goes on on the server.
 */
export class ResumableStream implements AsyncIterable<unknown> {
  /** Per-chunk errors seen so far (the stream went on after each). */
  readonly chunkErrors: RunAgentError[] = [];
  private id?: string;
  private last?: string;
  private total?: number;
  private joins = 0;
  private started = false;
  private closed = false;
  private readonly scope: CallScope;

  constructor(private readonly o: ResumableInit) {
    this.scope = new CallScope(o.signal, undefined, o.clock);
    this.id = o.runId;
    this.last = o.lastEventId;
  }

  /** The run's id, once the server named it (Content-Location, or the start event). */
  get runId(): string | undefined {
    return this.id;
  }

  /** The id of the last event received, which a re-join starts after. */
  get lastEventId(): string | undefined {
    return this.last;
  }

  /** The number of chunks the server said it sent, once the stream is done. */
  get totalChunks(): number | undefined {
    return this.total;
  }

  /** How many times the stream was re-joined after a lost connection. */
  get reconnects(): number {
    return this.joins;
  }

  /** Ends the iteration and drops the connection; the run goes on (cancelRun stops it). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.scope.ctl.abort(new Error("stream closed"));
    this.scope.dispose();
  }

  private chunkError(err: RunAgentError): void {
    this.chunkErrors.push(err);
    this.o.onChunkError?.(err);
  }

  private open(): Promise<Response> {
    const doFetch = this.o.fetch; // called unbound: a browser's fetch refuses another `this`
    if (this.id === undefined) {
      return doFetch(this.o.createUrl, {
        method: "POST", headers: { ...this.o.headers, "Content-Type": "application/json" }, body: this.o.body, signal: this.scope.signal,
      });
    }
    const headers: Record<string, string> = { ...this.o.headers };
    if (this.last !== undefined) headers["Last-Event-ID"] = this.last;
    return doFetch(this.o.runUrl(this.id), { method: "GET", headers, signal: this.scope.signal });
  }

  async *[Symbol.asyncIterator](): AsyncIterator<unknown> {
    if (this.started) throw new RunAgentError({ code: ErrorCode.VALIDATION, message: "a ResumableStream can be iterated once" });
    this.started = true;
    let retrier = new Retrier(this.o.retry, this.o.clock);
    let created = false; // the create was answered 200: it is never sent again
    try {
      for (;;) {
        if (this.closed) return;
        if (this.scope.signal.aborted) throw this.scope.error();
        let progress = false;
        let opened = false;
        let err: RunAgentError;
        const creating = this.id === undefined;
        try {
          let res: Response;
          try {
            res = await this.open();
          } catch (e) {
            throw this.scope.signal.aborted ? e : transportError(e);
          }
          if (res.status !== 200) {
            const text = await res.text().catch(() => "");
            throw httpError(res.status, text, res.headers.get("retry-after"));
          }
          if (creating) created = true;
          const ctype = res.headers.get("content-type") ?? "";
          if (!/text\/event-stream/i.test(ctype)) {
            const text = await res.text().catch(() => "");
            throw malformed(`the server answered ${ctype || "no content type"}, not text/event-stream: ${text.slice(0, 200)}`, res.status);
          }
          opened = true;
          const loc = res.headers.get("content-location") ?? "";
          const at = loc.indexOf(RUNS_PATH);
          if (this.id === undefined && at >= 0 && loc.length > at + RUNS_PATH.length) {
            try {
              this.id = decodeURIComponent(loc.slice(at + RUNS_PATH.length).replace(/[/?#].*$/, "")) || undefined;
            } catch {
              /* the start event names it */
            }
          }
          if (!res.body) throw malformed("the server answered the stream without a body", res.status);
          const events = readSSE(res.body, this.scope.signal);
          try {
            for (;;) {
              let step: IteratorResult<SSEEvent>;
              try {
                step = await events.next();
              } catch (e) {
                throw this.scope.signal.aborted ? e : transportError(e);
              }
              if (this.closed) return;
              if (this.scope.signal.aborted) throw this.scope.error();
              if (step.done) break;
              const ev = step.value;
              if (ev.event === "chunk" || ev.event === "chunk_error") {
                if (ev.id !== undefined) {
                  if (this.last !== undefined && isAtOrBefore(ev.id, this.last)) continue; // seen before a re-join
                  this.last = ev.id;
                }
                progress = true;
                if (ev.event === "chunk_error") {
                  let msg = "chunk error";
                  try {
                    const d = parseJSON(ev.data) as any;
                    if (typeof d?.message === "string") msg = d.message;
                  } catch {
                    /* keep the default */
                  }
                  this.chunkError(new RunAgentError({ code: ErrorCode.INTERNAL, message: msg, chunkError: true }));
                  continue;
                }
                let v: unknown;
                try {
                  v = parseJSON(ev.data);
                } catch (e) {
                  this.chunkError(new RunAgentError({ code: ErrorCode.INTERNAL, message: "chunk decode failed: " + (e as Error).message, chunkError: true }));
                  continue;
                }
                yield v;
                if (this.closed) return;
              } else if (ev.event === "start") {
                if (this.id === undefined) {
                  try {
                    const d = parseJSON(ev.data) as any;
                    if (typeof d?.run_id === "string" && d.run_id) this.id = d.run_id;
                  } catch {
                    /* Content-Location names it, or the stream cannot be re-joined */
                  }
                }
              } else if (ev.event === "done") {
                try {
                  const d = parseJSON(ev.data) as any;
                  if (typeof d?.total_chunks === "number") this.total = d.total_chunks;
                } catch {
                  /* the end all the same */
                }
                return;
              } else if (ev.event === "error") {
                throw streamEventError(ev.data);
              }
            }
          } finally {
            events.return(undefined).catch(() => {});
          }
          if (this.id === undefined) {
            throw new RunAgentError({ code: ErrorCode.INTERNAL, message: "the stream ended early and the server named no run to re-join (is it runagent server?)" });
          }
          throw new RunAgentError({ code: ErrorCode.CONNECTION, message: "the stream ended before its last event", retryable: true });
        } catch (e) {
          if (this.closed) return;
          if (this.scope.signal.aborted) throw this.scope.error();
          if (!(e instanceof RunAgentError)) throw e; // not the transport's (an onChunkError callback's)
          err = e;
        }
        if (this.id === undefined && created && err.retryable) {
          // Started, but the server named no run: sending it again would start a second one.
          throw new RunAgentError({ code: err.code, message: err.message + " (the stream cannot be re-joined: the server named no run)", status: err.status, cause: err });
        }
        if (progress) retrier = new Retrier(this.o.retry, this.o.clock); // progress: a fresh budget
        else if (opened) {
          // The time a connection was open (a quiet stream may be, for long) is
          // not time spent retrying; its attempt without a chunk still counts.
          const attempts = retrier.attempts;
          retrier = new Retrier(this.o.retry, this.o.clock);
          retrier.attempts = attempts;
        }
        await retrier.wait(err, this.scope.signal, () => this.scope.error());
        if (this.id !== undefined) this.joins++;
      }
    } finally {
      this.close();
    }
  }
}

/** Whether SSE event id a is at or before b (both chunk numbers). */
function isAtOrBefore(a: string, b: string): boolean {
  const x = Number(a);
  const y = Number(b);
  return /^-?\d+$/.test(a) && /^-?\d+$/.test(b) ? x <= y : false;
}

/** The error of an SSE `error` event ({"code", "message"}). */
function streamEventError(data: string): RunAgentError {
  let d: any;
  try {
    d = parseJSON(data);
  } catch {
    d = undefined;
  }
  const code = typeof d?.code === "string" && d.code ? d.code : ErrorCode.INTERNAL;
  const message = typeof d?.message === "string" && d.message ? d.message : typeof data === "string" && data ? data : "stream failed";
  // CONNECTION_ERROR: the server could not read the run's log: re-join.
  return new RunAgentError({ code, message, retryable: code === ErrorCode.CONNECTION });
}
