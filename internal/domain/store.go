package domain

import (
	"context"
	"encoding/json"
	"time"
)

// The stores: what each caller keeps, as interfaces, so that PostgreSQL can
// stand beside SQLite (internal/store). Every implementation passes
// storetest. A method returns ErrNotFound (code NOT_FOUND) for a record that
// does not exist, ErrOtherTenant (PERMISSION_ERROR) for an agent id of
// another tenant, ctx's error when ctx ends, and otherwise an error of its
// own (INTERNAL_ERROR to callers).

// History keeps invocation records: the wire's history routes read it.
type History interface {
	// Start records a call as pending and Finish its outcome; neither
	// waits for the write (the record is readable at once: reads see
	// every Start and Finish made before them).
	Start(Invocation)
	Finish(Invocation)
	// FinishDurable is Finish that returns once the record is durable:
	// a server answers the call only after it.
	FinishDurable(ctx context.Context, inv Invocation) error
	// Get returns one invocation, or ErrNotFound.
	Get(ctx context.Context, id string) (Invocation, error)
	// List returns an agent's invocations ("" for every agent), newest
	// first, of one status ("" for any), at most limit (<= 0: 50).
	List(ctx context.Context, agentID string, status Status, limit int) ([]Invocation, error)
	// ListForAgents is List over a set of agents.
	ListForAgents(ctx context.Context, agentIDs []string, status Status, limit int) ([]Invocation, error)
	// Stats sums up an agent's invocations ("" for every agent).
	Stats(ctx context.Context, agentID string) (Stats, error)
	// FailAbandoned marks failed the pending invocations that are not
	// queued async ones (their server stopped before they finished) and
	// says how many. A server calls it at start-up.
	FailAbandoned(ctx context.Context, at time.Time) (int64, error)
	// FailStale is FailAbandoned for the ones requested before before: on
	// a cluster, where other servers' calls are running, those older than
	// any call may last had a server that stopped.
	FailStale(ctx context.Context, before, at time.Time) (int64, error)
}

// Agents keeps the platform's agents and their versions.
type Agents interface {
	// PlatformAgent returns one agent, or ErrNotFound.
	PlatformAgent(ctx context.Context, id string) (DeployedAgent, error)
	// PlatformAgents returns every agent, oldest first.
	PlatformAgents(ctx context.Context) ([]DeployedAgent, error)
	// PutAgentMetadata records a metadata upload, creating the agent for
	// tenant if it is new (ErrOtherTenant if it is another tenant's); it
	// says whether the agent existed.
	PutAgentMetadata(ctx context.Context, id, tenant, name, framework string, meta json.RawMessage) (existed bool, err error)
	// AddVersion records v as the agent's next version (creating the
	// agent for tenant if it is new; ErrOtherTenant) and returns its
	// number, 1 for the first.
	AddVersion(ctx context.Context, tenant, name, framework string, v Version) (int, error)
	// Version returns one version, or ErrNotFound; Versions every one of
	// an agent, newest first.
	Version(ctx context.Context, agentID string, version int) (Version, error)
	Versions(ctx context.Context, agentID string) ([]Version, error)
	// SetVersionStatus records a version's status and error ("" for
	// none); ErrNotFound for a version that does not exist.
	SetVersionStatus(ctx context.Context, agentID string, version int, status VersionStatus, errText string) error
	// ActivateVersion makes version the one serving the agent; the one
	// before it becomes retired. ErrNotFound (and no change) for a
	// version that does not exist.
	ActivateVersion(ctx context.Context, agentID string, version int) error
	// DeleteVersion removes a version (ErrNotFound).
	DeleteVersion(ctx context.Context, agentID string, version int) error
	// DeletePlatformAgent removes an agent with its versions, logs and
	// queued async invocations; its invocation history stays, and the
	// queued invocations that never started end failed there
	// (CodeNotFound in their error).
	DeletePlatformAgent(ctx context.Context, id string) error
}

// Keys keeps API keys (their hash, never their secret).
type Keys interface {
	InsertAPIKey(ctx context.Context, k Key) error
	// APIKeys returns every key, revoked ones too, oldest first.
	APIKeys(ctx context.Context) ([]Key, error)
	// RevokeAPIKey marks a key revoked (ErrNotFound); a second revoke
	// keeps the first time.
	RevokeAPIKey(ctx context.Context, id string, at time.Time) error
}

// Logs keeps what agent instances printed.
type Logs interface {
	// AppendLogs stores lines and fills in their Seq, which grows.
	AppendLogs(ctx context.Context, lines []LogLine) error
	// Logs returns an agent's lines with seq > after, oldest first, at
	// most limit (<= 0: 1000); invocationID "" means all.
	Logs(ctx context.Context, agentID, invocationID string, after int64, limit int) ([]LogLine, error)
	// PruneLogs keeps the newest keep lines of every agent and says how
	// many it removed.
	PruneLogs(ctx context.Context, keep int) (int64, error)
}

// AsyncQueue keeps accepted async invocations until their outcome is
// written: a restart runs what never started, and decides about what did.
type AsyncQueue interface {
	// EnqueueAsync durably records an accepted invocation (pending in
	// History), its run and its place in the queue, in one step; with an
	// IdempotencyKey an earlier run of the agent has, ErrDuplicate and no
	// change.
	EnqueueAsync(ctx context.Context, j AsyncJob) error
	// StartAsync durably records that it is starting (one more attempt);
	// ErrNotFound if it is not queued.
	StartAsync(ctx context.Context, id string, at time.Time) error
	// RequeueAsync puts an interrupted one back as not started
	// (ErrNotFound if it is not queued).
	RequeueAsync(ctx context.Context, id string) error
	// FinishAsync writes its outcome and takes it off the queue, in one
	// step. An outcome is written once: ErrNotFound (and no change) for an
	// invocation that is unknown or already ended. An invocation whose
	// agent was deleted while it ran is still finished.
	FinishAsync(ctx context.Context, inv Invocation) error
	// PendingAsync returns the queued ones, oldest first.
	PendingAsync(ctx context.Context) ([]AsyncJob, error)
	// UnstartedAsync returns at most limit queued ones enqueued after
	// after and before before, not started since, oldest first (a
	// cluster looks among them for invocations its queue lost).
	UnstartedAsync(ctx context.Context, after, before time.Time, limit int) ([]AsyncJob, error)
	// AsyncJob returns one queued invocation (ErrNotFound if it is not
	// queued: unknown, ended, or its agent deleted).
	AsyncJob(ctx context.Context, id string) (AsyncJob, error)
	// AsyncBacklog counts the queued invocations: all, tenant's and
	// agentID's.
	AsyncBacklog(ctx context.Context, tenant, agentID string) (AsyncBacklog, error)
	// CancelQueuedAsync writes the outcome of a queued invocation that has
	// not started (inv: its cancelled outcome) and takes it off the queue,
	// in one step; ErrNotFound (and no change) if it is not queued or has
	// started.
	CancelQueuedAsync(ctx context.Context, inv Invocation) error
}

// Webhooks keeps the agents' webhook secrets and every delivery attempt.
type Webhooks interface {
	// WebhookSecret returns agentID's secret, storing fresh as it if it
	// has none yet.
	WebhookSecret(ctx context.Context, agentID, fresh string) (string, error)
	// RecordWebhookAttempt records one delivery attempt.
	RecordWebhookAttempt(ctx context.Context, a WebhookAttempt) error
	// WebhookAttempts returns a run's attempts, first first.
	WebhookAttempts(ctx context.Context, runID string) ([]WebhookAttempt, error)
	// UndeliveredWebhooks returns the runs with a webhook, ended at since
	// or later, that no attempt delivered (2xx), the earliest ended first,
	// at most limit: what a server that stopped left to deliver.
	UndeliveredWebhooks(ctx context.Context, since time.Time, limit int) ([]Run, error)
}

// RunEvents keeps the event logs of streams that outlive their client.
type RunEvents interface {
	// AppendRunEvents adds events to their runs' logs (a seq already
	// there is an error).
	AppendRunEvents(ctx context.Context, events []RunEvent) error
	// RunEvents returns at most limit events of a run after seq after
	// (-1: from the first), in order.
	RunEvents(ctx context.Context, runID string, after, limit int) ([]RunEvent, error)
	// PruneRunEvents removes the logs of runs that ended before t; it
	// returns how many events went.
	PruneRunEvents(ctx context.Context, endedBefore time.Time) (int64, error)
}

// Crons keeps the schedules of background runs.
type Crons interface {
	CreateCron(ctx context.Context, c Cron) error
	// Cron returns one (ErrNotFound if there is none).
	Cron(ctx context.Context, id string) (Cron, error)
	// ListCrons returns agentIDs' crons, oldest first.
	ListCrons(ctx context.Context, agentIDs []string) ([]Cron, error)
	// SetCronPaused pauses or resumes one; a resumed one fires next at
	// nextAt. ErrNotFound if there is none.
	SetCronPaused(ctx context.Context, id string, paused bool, nextAt time.Time) error
	// DeleteCron removes one (ErrNotFound if there is none).
	DeleteCron(ctx context.Context, id string) error
	// DueCrons returns at most limit crons not paused whose next tick is
	// at or before now, the most overdue first.
	DueCrons(ctx context.Context, now time.Time, limit int) ([]Cron, error)
	// AdvanceCron moves a cron's next tick from from to to (zero: it has
	// ended) and records its last run, only if its next tick is still
	// from: ErrNotFound (and no change) otherwise, so that of two servers
	// firing one tick only one advances it.
	AdvanceCron(ctx context.Context, id string, from, to time.Time, lastRunID string) error
}

// Runs reads invocations as runs.
type Runs interface {
	// Run returns the run of an invocation (ErrNotFound if unknown).
	Run(ctx context.Context, id string) (Run, error)
	// IdempotentRun returns agentID's background run created with key.
	IdempotentRun(ctx context.Context, agentID, key string) (Run, error)
	// ListRuns returns the background runs of agentIDs, newest first, at
	// most limit, of one status ("": any).
	ListRuns(ctx context.Context, agentIDs []string, status RunStatus, limit int) ([]Run, error)
	// DropIdempotencyKey frees a run's key (it was refused before it
	// could run: a retry with the key creates a new run).
	DropIdempotencyKey(ctx context.Context, runID string) error
	// RequestCancel marks a run to be cancelled wherever it is picked up
	// next (ErrNotFound if it is not a background run).
	RequestCancel(ctx context.Context, runID string) error
	// ThreadAhead says whether a run of j's thread (j.ThreadID) queued
	// before j (by its id) is still queued or running: j waits for it.
	ThreadAhead(ctx context.Context, j AsyncJob) (bool, error)
}

// AsyncBacklog is how many async invocations are queued (waiting or
// running).
type AsyncBacklog struct{ Total, Tenant, Agent int }

// Store is everything the platform server keeps.
type Store interface {
	History
	Agents
	Keys
	Logs
	AsyncQueue
	Runs
	Webhooks
	Crons
	RunEvents
	// Close writes what is pending and releases the store.
	Close() error
}
