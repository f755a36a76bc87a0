/** Error codes of the RunAgent wire protocol (docs/sdk-contract.md). */
export const ErrorCode = {
  AUTHENTICATION: "AUTHENTICATION_ERROR",
  PERMISSION: "PERMISSION_ERROR",
  VALIDATION: "VALIDATION_ERROR",
  NOT_FOUND: "NOT_FOUND",
  RATE_LIMIT: "RATE_LIMIT_EXCEEDED",
  TIMEOUT: "TIMEOUT",
  CONNECTION: "CONNECTION_ERROR",
  AGENT_CRASHED: "AGENT_CRASHED",
  OVERLOADED: "OVERLOADED",
  INTERNAL: "INTERNAL_ERROR",
  CANCELLED: "CANCELLED",
} as const;

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface RunAgentErrorInit {
  code: string;
  message: string;
  status?: number;
  retryAfterMs?: number;
  requestId?: string;
  details?: unknown;
  field?: string;
  cause?: unknown;
  retryable?: boolean;
  chunkError?: boolean;
}

/** The one error type thrown by the SDK. Check `code` (or use `isCode`). */
export class RunAgentError extends Error {
  /** One of ErrorCode, or any other code a server sent. */
  readonly code: string;
  /** HTTP status, 0 when there was no HTTP response. */
  readonly status: number;
  /** The server's Retry-After in milliseconds, 0 when none. */
  retryAfterMs: number;
  /** The envelope's request_id, when there was one. */
  readonly requestId?: string;
  /** The envelope's error.details (or FastAPI's detail list). */
  readonly details?: unknown;
  /** The envelope's error.field. */
  readonly field?: string;
  /** True for a per-chunk stream error ("Chunk serialization failed", an undecodable chunk). */
  readonly chunkError: boolean;
  /** @internal whether the retry policy may retry this failure. */
  readonly retryable: boolean;
  readonly cause?: unknown;

  constructor(init: RunAgentErrorInit) {
    super(init.message);
    this.name = "RunAgentError";
    this.code = init.code;
    this.status = init.status ?? 0;
    this.retryAfterMs = init.retryAfterMs ?? 0;
    this.requestId = init.requestId;
    this.details = init.details;
    this.field = init.field;
    this.cause = init.cause;
    this.retryable = init.retryable ?? false;
    this.chunkError = init.chunkError ?? false;
  }

  override toString(): string {
    const st = this.status >= 300 ? ` (HTTP ${this.status})` : "";
    return `RunAgentError: ${this.code}${st}: ${this.message}`;
  }
}

/** Whether err is a RunAgentError with the given code. */
export function isCode(err: unknown, code: string): boolean {
  return err instanceof RunAgentError && err.code === code;
}

/** The code of err: "" for null/undefined, INTERNAL_ERROR for a foreign error. */
export function codeOf(err: unknown): string {
  if (err === null || err === undefined) return "";
  return err instanceof RunAgentError ? err.code : ErrorCode.INTERNAL;
}

/** Whether err is a per-chunk stream error, after which the stream goes on. */
export function isChunkError(err: unknown): boolean {
  return err instanceof RunAgentError && err.chunkError;
}

/** Maps an HTTP status without an envelope code to a code. */
export function codeForStatus(status: number): string {
  switch (status) {
    case 401: return ErrorCode.AUTHENTICATION;
    case 403: return ErrorCode.PERMISSION;
    case 404: return ErrorCode.NOT_FOUND;
    case 400: case 413: case 422: return ErrorCode.VALIDATION;
    case 429: return ErrorCode.RATE_LIMIT;
    case 503: return ErrorCode.OVERLOADED;
    case 504: return ErrorCode.TIMEOUT;
    default: return ErrorCode.INTERNAL;
  }
}

export function retryableStatus(status: number): boolean {
  return status === 429 || status === 503;
}

/** Parses Retry-After (delay-seconds or an HTTP date) into milliseconds. */
export function parseRetryAfter(v: string | null | undefined, nowMs: number = Date.now()): number {
  if (!v) return 0;
  const s = v.trim();
  if (s === "") return 0;
  if (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) {
    const secs = Number(s);
    if (!(secs > 0)) return 0;
    return Math.round(Math.min(secs, 365 * 24 * 3600) * 1000);
  }
  const t = Date.parse(s);
  if (!Number.isNaN(t) && t > nowMs) return t - nowMs;
  return 0;
}

/** Derives a code from a WebSocket error frame without one. */
export function classifyMessage(msg: string): string {
  const l = msg.toLowerCase();
  const has = (...w: string[]) => w.some((x) => l.includes(x));
  const t = l.trimStart();
  if (t.startsWith("streaming error") || t.startsWith("agent execution failed")) return ErrorCode.INTERNAL;
  if (has("not found")) return ErrorCode.NOT_FOUND;
  if (has("unauthorized", "authentication", "invalid token", "invalid api key", "api key required")) return ErrorCode.AUTHENTICATION;
  if (has("permission", "forbidden")) return ErrorCode.PERMISSION;
  if (has("rate limit")) return ErrorCode.RATE_LIMIT;
  if (has("overloaded")) return ErrorCode.OVERLOADED;
  if (has("timed out", "timeout")) return ErrorCode.TIMEOUT;
  if (has("crashed")) return ErrorCode.AGENT_CRASHED;
  if (has("invalid", "missing", "required", "must ", "not a stream", "non-stream", "json")) return ErrorCode.VALIDATION;
  return ErrorCode.INTERNAL;
}

function str(v: unknown): string | undefined {
  return typeof v === "string" ? v : undefined;
}

/** Builds the error of an envelope / FastAPI error body (already parsed). */
function envelopeFields(env: Record<string, unknown>): { code?: string; message?: string; details?: unknown; field?: string; requestId?: string } {
  const out: { code?: string; message?: string; details?: unknown; field?: string; requestId?: string } = {};
  out.requestId = str(env.request_id);
  const err = env.error;
  if (typeof err === "string") out.message = err;
  else if (err && typeof err === "object" && !Array.isArray(err)) {
    const e = err as Record<string, unknown>;
    out.code = str(e.code) || undefined;
    out.message = str(e.message) || undefined;
    out.field = str(e.field) || undefined;
    out.details = e.details ?? undefined;
  }
  const detail = env.detail;
  if (detail !== undefined && detail !== null) {
    if (typeof detail === "string") {
      if (!out.message) out.message = detail;
    } else {
      if (!out.message && Array.isArray(detail)) {
        const msgs: string[] = [];
        for (const it of detail) {
          if (it && typeof it === "object" && typeof (it as any).msg === "string") {
            const loc = (it as any).loc;
            msgs.push((Array.isArray(loc) && loc.length ? JSON.stringify(loc) + ": " : "") + (it as any).msg);
          }
        }
        if (msgs.length) out.message = msgs.join("; ");
      }
      if (out.details === undefined) out.details = detail;
    }
  }
  if (!out.message) out.message = str(env.message) || undefined;
  return out;
}

const statusText: Record<number, string> = {
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 413: "Request Entity Too Large",
  422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
  503: "Service Unavailable", 504: "Gateway Timeout",
};

function statusMessage(status: number, body?: string): string {
  let msg = statusText[status] ?? "unexpected HTTP status";
  const b = (body ?? "").trim();
  if (b && b.length <= 512 && !/[<\u0000]/.test(b)) msg += ": " + b;
  return msg;
}

function tryParseObject(body: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(body);
    return v && typeof v === "object" && !Array.isArray(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** The error for a non-2xx HTTP response. */
export function httpError(status: number, body: string, retryAfter?: string | null): RunAgentError {
  const env = tryParseObject(body);
  let f: ReturnType<typeof envelopeFields> = {};
  if (env && ("success" in env || "error" in env || "detail" in env)) f = envelopeFields(env);
  else f.message = statusMessage(status, body);
  return new RunAgentError({
    code: f.code || codeForStatus(status),
    message: f.message || statusMessage(status),
    status,
    requestId: f.requestId,
    details: f.details,
    field: f.field,
    retryAfterMs: parseRetryAfter(retryAfter),
    retryable: retryableStatus(status),
  });
}

/** The error of a 2xx envelope with success:false. */
export function failedEnvelopeError(status: number, env: Record<string, unknown>): RunAgentError {
  const f = envelopeFields(env);
  return new RunAgentError({
    code: f.code || ErrorCode.INTERNAL,
    message: f.message || "agent execution failed",
    status,
    requestId: f.requestId,
    details: f.details,
    field: f.field,
  });
}

/** The error of a WebSocket error frame: its code wins, else the message is classified. */
export function frameError(fr: Record<string, unknown>): RunAgentError {
  let msg = str(fr.error) ?? str(fr.detail);
  if (msg === undefined) {
    if (fr.detail !== undefined && fr.detail !== null) msg = JSON.stringify(fr.detail);
    else if (fr.error !== undefined && fr.error !== null) msg = JSON.stringify(fr.error);
    else msg = "stream failed";
  }
  if (msg.trim() === "") msg = "stream failed";
  let code = str(fr.code) ?? "";
  if (msg.trim().startsWith("Chunk serialization failed")) {
    return new RunAgentError({ code: code || ErrorCode.INTERNAL, message: msg, chunkError: true });
  }
  if (!code) code = classifyMessage(msg);
  return new RunAgentError({ code, message: msg, retryable: code === ErrorCode.RATE_LIMIT || code === ErrorCode.OVERLOADED });
}

export function malformed(message: string, status = 0): RunAgentError {
  return new RunAgentError({ code: ErrorCode.INTERNAL, message, status });
}
