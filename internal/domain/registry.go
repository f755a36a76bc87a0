package domain

import (
	"context"
	"time"
)

// RegistryAgent is an agent's row in the local registry.
type RegistryAgent struct {
	AgentID   string
	AgentPath string // the agent folder
	Host      string
	Port      int

	// Descriptive columns; "" keeps what the row already has.
	Framework, AgentName, Description, Template, Version string
	Fingerprint, ConfigFingerprint                       string
}

// Registry is the local registry the official SDKs read to find a locally
// served agent by id alone (runagent_local.db, in the original's schema).
type Registry interface {
	// UpsertAgent registers a served agent: it inserts the row, or updates
	// an existing one's path, host, port and description while keeping its
	// counters.
	UpsertAgent(ctx context.Context, a RegistryAgent) error
	// LookupAgent reads a registered agent, or ErrNotFound.
	LookupAgent(ctx context.Context, agentID string) (RegistryAgent, error)
	// RecordRuns adds finished calls to an agent's counters (ErrNotFound
	// when it is not registered).
	RecordRuns(ctx context.Context, agentID string, ok, failed int64, last time.Time) error
}
