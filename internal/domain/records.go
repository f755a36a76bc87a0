package domain

import (
	"encoding/json"
	"time"
)

// ErrOtherTenant is returned when an agent id is taken by another tenant.
var ErrOtherTenant = &Error{Code: CodePermission,
	Message: "this agent id is taken by another tenant; give your agent a new id (runagent init or a fresh UUID in agent_id)"}

// VersionStatus is where an uploaded version of an agent is.
type VersionStatus string

// Version statuses.
const (
	VersionUploaded VersionStatus = "uploaded"
	VersionStarting VersionStatus = "starting"
	VersionActive   VersionStatus = "active"
	VersionFailed   VersionStatus = "failed"
	VersionRetired  VersionStatus = "retired"
)

// DeployedAgent is an agent of the platform: its tenant, names and versions.
type DeployedAgent struct {
	ID, Tenant, Name, Framework  string
	ActiveVersion, LatestVersion int
	Metadata                     json.RawMessage // the last metadata-upload body, nil if none
	CreatedAt, UpdatedAt         time.Time
}

// Version is one uploaded bundle of an agent.
type Version struct {
	AgentID     string
	Version     int
	Status      VersionStatus
	Dir         string
	FileName    string
	FileSize    int64
	SHA256      string
	Error       string
	UploadedAt  time.Time
	ActivatedAt time.Time // zero if never active
}

// LogLine is one line an agent instance printed, or a system event about it.
type LogLine struct {
	Seq          int64     `json:"seq"`
	At           time.Time `json:"time"`
	AgentID      string    `json:"agent_id"`
	Version      int       `json:"version"`
	Instance     string    `json:"instance"`
	InvocationID string    `json:"invocation_id,omitempty"`
	Stream       string    `json:"stream"`
	Line         string    `json:"line"`
}

// AsyncJob is an accepted async invocation that has not finished.
type AsyncJob struct {
	Invocation
	Tenant         string
	TimeoutSeconds float64
	// IdempotencyKey is the key a background run was created with ("":
	// none); the store keeps one run per agent and key.
	IdempotencyKey string
	// Webhook is the URL the run's outcome is POSTed to ("": none).
	Webhook string
	// CancelRequested: a client cancelled the run (RequestCancel); whoever
	// picks it up next ends it cancelled instead of running it.
	CancelRequested bool
	// ThreadID orders the runs of one conversation ("": none): they run
	// one at a time, in the order they were created. With ThreadReject,
	// EnqueueAsync refuses a run while another of its thread is queued or
	// running (ErrThreadBusy).
	ThreadID     string
	ThreadReject bool
	// UserID is the user whose persistent folders the run sees ("": none).
	UserID string
	// Attempts counts the times it was started (StartAsync); StartedAt is
	// when the last one began (zero: not started since it was queued). A
	// job still queued after it started was interrupted: the server
	// stopped while it ran.
	Attempts  int
	StartedAt time.Time
	// EnqueuedAt is when it was accepted (the accepting server's clock).
	EnqueuedAt time.Time
}
