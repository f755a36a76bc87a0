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

  constructor(o: RunAgentClientOptions) {
    if (!o || !o.agentId) throw validation("agentId is required");
    if (!o.entrypointTag) throw validation("entrypointTag is required");
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

  private url(path: string): string {
    return `${this.baseUrl}/api/v1/agents/${encodeURIComponent(this.agentId)}${path}`;
  }

  private requestBody(input: RunInput | undefined, timeoutSeconds?: number): string {
    const args = input?.args ?? [];
    const kwargs = input?.kwargs ?? {};
    if (!Array.isArray(args)) throw validation("args must be an array");
    if (kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs)) throw validation("kwargs must be an object");
    const req: Record<string, unknown> = { entrypoint_tag: this.entrypointTag, input_args: args, input_kwargs: kwargs };
    if (timeoutSeconds) req.timeout_seconds = timeoutSeconds;
    return stringifyJSON(req);
  }

  /**
   * Calls the (non-streaming) entrypoint with fn(*args, **kwargs) and
   * resolves to the decoded result. Throws RunAgentError.
   */
  async run(input: RunInput = {}, opts: CallOptions = {}): Promise<unknown> {
    if (this.entrypointTag.endsWith("_stream")) {
      throw validation(`entrypoint ${JSON.stringify(this.entrypointTag)} is a streaming entrypoint: use runStream`);
    }
    const body = this.requestBody(input, Math.max(1, Math.ceil(this.timeoutMs / 1000)));
    const scope = new CallScope(opts.signal, this.timeoutMs, this.clock);
    const r = new Retrier(this.retry, this.clock, scope.deadline);
    const doFetch = this.fetchFn ?? globalThis.fetch;
    const headers: Record<string, string> = { "Content-Type": "application/json", Accept: "application/json" };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    try {
      for (;;) {
        if (scope.signal.aborted) throw scope.error();
        let err: RunAgentError;
        try {
          const res = await doFetch(this.url("/run"), { method: "POST", headers, body, signal: scope.signal });
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
            return parseRunResponse(res.status, text);
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
  if (e.success) return decodeData(e.data);
  throw failedEnvelopeError(status, e);
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
