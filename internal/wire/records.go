package wire

import (
	"encoding/json"
	"math"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// InvocationJSON is the original's invocation record, keys in its order:
// what InvocationRecord marshals to, and what a client decodes (nullable
// fields are pointers or raw JSON, so that a record prints back as it came).
type InvocationJSON struct {
	InvocationID      string          `json:"invocation_id"`
	AgentID           string          `json:"agent_id"`
	InputData         InputData       `json:"input_data"`
	OutputData        json.RawMessage `json:"output_data"`
	ErrorDetail       *string         `json:"error_detail"`
	RequestTimestamp  string          `json:"request_timestamp"`
	ResponseTimestamp *string         `json:"response_timestamp"`
	ExecutionTimeMS   *float64        `json:"execution_time_ms"`
	Status            string          `json:"status"`
	EntrypointTag     string          `json:"entrypoint_tag"`
	SDKType           string          `json:"sdk_type"`
	ClientInfo        json.RawMessage `json:"client_info"`
}

// InputData is an invocation's inputs.
type InputData struct {
	InputArgs   json.RawMessage `json:"input_args"`
	InputKwargs json.RawMessage `json:"input_kwargs"`
}

// InvocationRecord is an invocation as the history endpoints show it (the
// original's record, keys in its order).
type InvocationRecord domain.Invocation

// InvocationRecords converts a list for the history endpoints (never nil).
func InvocationRecords(invs []domain.Invocation) []InvocationRecord {
	out := make([]InvocationRecord, len(invs))
	for i, inv := range invs {
		out[i] = InvocationRecord(inv)
	}
	return out
}

// MarshalJSON gives the record as the original's history endpoints do:
// timestamps like Python's datetime.isoformat() of a naive UTC time, null
// for what is not known yet (response time, execution time) or absent.
func (inv InvocationRecord) MarshalJSON() ([]byte, error) {
	return json.Marshal(invocationJSON(domain.Invocation(inv)))
}

func invocationJSON(inv domain.Invocation) InvocationJSON {
	v := InvocationJSON{
		InvocationID:     inv.ID,
		AgentID:          inv.AgentID,
		InputData:        InputData{InputArgs: jsonValue(inv.InputArgs, "[]"), InputKwargs: jsonValue(inv.InputKwargs, "{}")},
		OutputData:       jsonValue(inv.Output, ""),
		RequestTimestamp: IsoFormat(inv.RequestTime),
		Status:           string(inv.Status),
		EntrypointTag:    inv.EntrypointTag,
		SDKType:          inv.SDKType,
		ClientInfo:       jsonValue(inv.ClientInfo, ""),
	}
	if inv.ErrorDetail != "" {
		v.ErrorDetail = &inv.ErrorDetail
	}
	if !inv.ResponseTime.IsZero() {
		ts := IsoFormat(inv.ResponseTime)
		v.ResponseTimestamp = &ts
		if !math.IsNaN(inv.ExecutionMS) && !math.IsInf(inv.ExecutionMS, 0) {
			v.ExecutionTimeMS = &inv.ExecutionMS
		}
	}
	return v
}

// jsonValue returns raw if it is valid JSON, def (null when "") if it is
// absent, and raw as a JSON string otherwise, so that one damaged row can't
// break a whole listing.
func jsonValue(raw json.RawMessage, def string) json.RawMessage {
	if len(raw) == 0 {
		if def == "" {
			return nil
		}
		return json.RawMessage(def)
	}
	if json.Valid(raw) {
		return raw
	}
	b, _ := json.Marshal(string(raw))
	return b
}

// IsoFormat formats t in UTC the way Python's naive datetime.isoformat()
// does: 2025-06-25T13:42:03.123456, without the fraction when it is zero.
func IsoFormat(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05")
	}
	return t.Format("2006-01-02T15:04:05.000000")
}

// statsJSON is the original's get_invocation_stats answer, keys in its order.
type statsJSON struct {
	Total       int      `json:"total_invocations"`
	Completed   int      `json:"completed_invocations"`
	Failed      int      `json:"failed_invocations"`
	Pending     int      `json:"pending_invocations"`
	SuccessRate float64  `json:"success_rate"`
	AvgExecMS   *float64 `json:"avg_execution_time_ms"`
	AgentID     *string  `json:"agent_id"`
}

// StatsRecord is invocation stats as the original shows them.
type StatsRecord domain.Stats

// MarshalJSON gives the stats as the original does (agent_id null for the
// stats of all agents).
func (s StatsRecord) MarshalJSON() ([]byte, error) {
	v := statsJSON{
		Total: s.Total, Completed: s.Completed, Failed: s.Failed, Pending: s.Pending,
		SuccessRate: s.SuccessRate, AvgExecMS: s.AvgExecutionMS,
	}
	if s.AgentID != "" {
		v.AgentID = &s.AgentID
	}
	return json.Marshal(v)
}

// RunJSON is a run as the runs API shows it: the invocation record's keys,
// its status the run's (pending, running, completed, failed, cancelled or
// timeout), then the run's own.
type RunJSON struct {
	RunID string `json:"run_id"`
	InvocationJSON
	Background     bool    `json:"background"`
	Attempts       int     `json:"attempts"`
	StartedAt      *string `json:"started_at"`
	IdempotencyKey *string `json:"idempotency_key"`
	Webhook        *string `json:"webhook"`
	ThreadID       *string `json:"thread_id"`
	UserID         *string `json:"user_id"`
}

// RunRecord is a run as the runs API shows it.
type RunRecord domain.Run

// MarshalJSON gives the run as RunJSON.
func (r RunRecord) MarshalJSON() ([]byte, error) {
	v := RunJSON{RunID: r.ID, InvocationJSON: invocationJSON(r.Invocation), Background: r.Background, Attempts: r.Attempts}
	v.Status = string(domain.Run(r).Status())
	if !r.StartedAt.IsZero() {
		ts := IsoFormat(r.StartedAt)
		v.StartedAt = &ts
	}
	if r.IdempotencyKey != "" {
		v.IdempotencyKey = &r.IdempotencyKey
	}
	if r.Webhook != "" {
		v.Webhook = &r.Webhook
	}
	if r.UserID != "" {
		v.UserID = &r.UserID
	}
	if r.ThreadID != "" {
		v.ThreadID = &r.ThreadID
	}
	return json.Marshal(v)
}
