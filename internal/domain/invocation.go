package domain

import (
	"encoding/json"
	"time"
)

// Status is where an invocation is.
type Status string

// Invocation statuses.
const (
	StatusPending   Status = "pending"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
)

// Invocation is one call of an entrypoint, as its history keeps it. The
// stores keep the RawMessage slices: don't modify them afterwards.
type Invocation struct {
	ID, AgentID, EntrypointTag, SDKType string
	InputArgs, InputKwargs              json.RawMessage // as received (nil: [] and {})
	Output                              json.RawMessage // JSON value recorded as output_data, nil if none
	ErrorDetail                         string          // "" if none
	Status                              Status
	RequestTime, ResponseTime           time.Time       // ResponseTime is zero while pending
	ExecutionMS                         float64         // meaningful once ResponseTime is set
	ClientInfo                          json.RawMessage // nil if none
}

// Stats sums up the invocations of one agent (all agents for AgentID "").
type Stats struct {
	Total, Completed, Failed, Pending int
	SuccessRate                       float64  // completed/total in percent, rounded to 2 decimals
	AvgExecutionMS                    *float64 // over completed invocations, 2 decimals; nil if none
	AgentID                           string
}
