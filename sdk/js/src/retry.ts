import { ErrorCode, RunAgentError } from "./errors.js";

/** Retry policy (docs/sdk-contract.md, "Retries"). Zero/absent fields take the defaults. */
export interface RetryOptions {
  /** Attempts including the first; default 4. 1 disables retries. */
  maxAttempts?: number;
  /** Cap of the first wait; default 200 ms. */
  initialBackoffMs?: number;
  /** Cap of every wait except a server's Retry-After; default 5000 ms. */
  maxBackoffMs?: number;
  /** Budget from the first attempt to the start of the last one; default 30000 ms; < 0 means none. */
  maxElapsedMs?: number;
}

/** Time source of the retry loop; replace it in tests. */
export interface Clock {
  now(): number;
  /** Waits ms milliseconds; rejects (with anything) when signal aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /** Uniform in [0, 1). */
  random(): number;
}

export const defaultClock: Clock = {
  now: () => Date.now(),
  random: () => Math.random(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const t = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }, Math.max(0, ms));
      const onAbort = () => {
        clearTimeout(t);
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
    }),
};

export interface NormalizedRetry {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  maxElapsedMs: number;
}

export function normalizeRetry(r: RetryOptions | false | undefined): NormalizedRetry {
  if (r === false) return { maxAttempts: 1, initialBackoffMs: 200, maxBackoffMs: 5000, maxElapsedMs: 30000 };
  const p = r ?? {};
  let maxAttempts = p.maxAttempts ?? 0;
  if (maxAttempts === 0) maxAttempts = 4;
  else if (maxAttempts < 0) maxAttempts = 1;
  const initialBackoffMs = p.initialBackoffMs && p.initialBackoffMs > 0 ? p.initialBackoffMs : 200;
  let maxBackoffMs = p.maxBackoffMs && p.maxBackoffMs > 0 ? p.maxBackoffMs : 5000;
  if (maxBackoffMs < initialBackoffMs) maxBackoffMs = initialBackoffMs;
  const maxElapsedMs = p.maxElapsedMs === undefined || p.maxElapsedMs === 0 ? 30000 : p.maxElapsedMs;
  return { maxAttempts, initialBackoffMs, maxBackoffMs, maxElapsedMs };
}

/** Tracks the attempts of one call. */
export class Retrier {
  attempts = 0;
  readonly start: number;
  constructor(readonly p: NormalizedRetry, readonly clock: Clock, readonly deadline?: number) {
    this.start = clock.now();
  }

  /** The cap of the wait after this.attempts attempts. */
  cap(): number {
    let c = this.p.initialBackoffMs;
    for (let i = 1; i < this.attempts && c < this.p.maxBackoffMs; i++) c *= 2;
    return Math.min(c, this.p.maxBackoffMs);
  }

  /**
   * Called after a failed attempt: resolves after waiting when the call may
   * be retried, else throws the error to surface (e itself, or CANCELLED /
   * TIMEOUT when the signal ended the wait).
   */
  async wait(e: RunAgentError, signal?: AbortSignal, abortError?: () => RunAgentError): Promise<void> {
    this.attempts++;
    if (!e.retryable || this.attempts >= this.p.maxAttempts) throw e;
    let d = this.clock.random() * this.cap();
    if (e.retryAfterMs > d) d = e.retryAfterMs;
    const end = this.clock.now() + d;
    if (this.p.maxElapsedMs > 0 && end - this.start > this.p.maxElapsedMs) throw e;
    if (this.deadline !== undefined && end > this.deadline) throw e;
    try {
      await this.clock.sleep(d, signal);
    } catch {
      throw abortError ? abortError() : new RunAgentError({ code: ErrorCode.CANCELLED, message: "request cancelled" });
    }
  }
}
