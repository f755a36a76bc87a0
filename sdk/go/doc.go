// Package runagent is a Go client for RunAgent servers: it calls the Python
// agents that a RunAgent server (the original or RunAgent in Go) serves, over
// the RunAgent wire protocol v1.
//
// A Client is bound to one entrypoint of one agent:
//
//	c, err := runagent.New(runagent.Config{
//		AgentID:       "841debad-7433-46ae-a0ec-0540d0df7314",
//		EntrypointTag: "minimal",
//		Local:         true, // host and port from the local registry
//	})
//	out, err := c.Run(ctx, runagent.Kwargs(map[string]any{"message": "hi"}))
//
// Run posts to /api/v1/agents/{id}/run; RunStream opens the WebSocket
// /api/v1/agents/{id}/run-stream for entrypoints whose tag ends in "_stream"
// and returns a Stream to read chunk by chunk. Results and chunks arrive as
// "structured strings", decoded by DecodeStructured.
//
// # Background runs and re-joinable streams
//
// Against runagent server (the platform), StartRun creates a background run
// of a plain entrypoint (POST /api/v1/agents/{id}/runs, with an
// Idempotency-Key so that retries never create a second run) and GetRun,
// WaitRun and CancelRun follow it by its id; RunStreamResumable streams a
// streaming entrypoint over Server-Sent Events with "on_disconnect":
// "continue" and re-joins the run after a dropped connection from the last
// event received, each chunk yielded once. Config.UserID and
// Config.PersistentMemory make every run of a client the user's, on an
// instance that sees the user's persistent folders.
//
// # Errors
//
// Every error is an *Error with a wire code (CodeNotFound, CodeInternal, ...),
// the server's message (for an agent exception, its text), the HTTP status
// and the server's Retry-After. Use IsCode, CodeOf or errors.As.
//
// # Retries
//
// Connection failures before any response, HTTP 429 and 503 are retried with
// exponential backoff and full jitter, honouring Retry-After, bounded by
// Config.Retry (4 attempts and 30s by default) and by the context. A stream
// is retried only before its first data frame.
//
// # Concurrency and performance
//
// A Client is safe for concurrent use and cheap per call: it shares one
// tuned http.Transport (keep-alive, 512 idle connections per host) across
// clients and reuses request and response buffers.
package runagent
