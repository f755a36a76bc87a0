export { RunAgentClient, RunStream, ResumableStream, parseRunResponse, parseEnvelopeData, parseRunRecord, readSSE, isRunEnded, RUN_ENDED_STATUSES, transportError, DEFAULT_BASE_URL, DEFAULT_LOCAL_HOST, DEFAULT_LOCAL_PORT, DEFAULT_TIMEOUT_MS } from "./client.js";
export type { RunAgentClientOptions, RunInput, CallOptions, StreamOptions, JoinStreamOptions, WebSocketCtor, RunOptions, Run, RunAccepted, RunStatus, SSEEvent } from "./client.js";
export { RunAgentError, ErrorCode, isCode, codeOf, isChunkError, codeForStatus, classifyMessage, parseRetryAfter, httpError, frameError } from "./errors.js";
export type { ErrorCodeValue, RunAgentErrorInit } from "./errors.js";
export { parseJSON, stringifyJSON, decodeStructured, decodeData } from "./json.js";
export { Retrier, normalizeRetry, defaultClock } from "./retry.js";
export type { RetryOptions, Clock } from "./retry.js";
