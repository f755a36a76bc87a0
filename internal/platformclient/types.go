package platformclient

import (
	"encoding/json"
	"strconv"
)

// TokenInfo is what POST /api/v1/tokens/validate says about the key.
type TokenInfo struct {
	Valid              bool     `json:"valid"`
	KeyID              string   `json:"key_id"`
	Name               string   `json:"name"`
	Tenant             string   `json:"tenant"`
	Scopes             []string `json:"scopes"`
	Agents             []string `json:"agents"`
	UserID             Text     `json:"user_id"`
	UserEmail          Text     `json:"user_email"`
	UserTier           Text     `json:"user_tier"`
	DefaultProjectID   Text     `json:"default_project_id"`
	DefaultProjectName Text     `json:"default_project_name"`
}

// Upload is the answer of POST /api/v1/agents/upload.
type Upload struct {
	AgentID  string `json:"agent_id"`
	Version  int    `json:"version"`
	Status   string `json:"status"`
	FileSize int64  `json:"file_size"`
	FileName string `json:"file_name"`
}

// Deployment is the answer of POST /api/v1/agents/{id}/start.
type Deployment struct {
	AgentID  string `json:"agent_id"`
	Version  int    `json:"version"`
	Status   string `json:"status"`
	Endpoint string `json:"endpoint"`
	URL      string `json:"url"`
}

// Instances counts an agent's instances by state.
type Instances struct {
	Starting int `json:"starting"`
	Ready    int `json:"ready"`
	Draining int `json:"draining"`
}

// AgentStatus is the answer of GET /api/v1/agents/{id}/status.
type AgentStatus struct {
	AgentID       string    `json:"agent_id"`
	Name          string    `json:"name"`
	Status        string    `json:"status"`
	ActiveVersion int       `json:"active_version"`
	LatestVersion int       `json:"latest_version"`
	Instances     Instances `json:"instances"`
	Error         Text      `json:"error"`
}

// Agent is one entry of GET /api/v1/agents. Times are as the server sends
// them (RFC 3339 or ISO 8601).
type Agent struct {
	AgentID       string `json:"agent_id"`
	Name          string `json:"name"`
	Framework     string `json:"framework"`
	Status        string `json:"status"`
	ActiveVersion int    `json:"active_version"`
	CreatedAt     string `json:"created_at"`
	UpdatedAt     string `json:"updated_at"`
}

// Entrypoint is one entrypoint of a deployed agent.
type Entrypoint struct {
	File      string            `json:"file,omitempty"`
	Module    string            `json:"module,omitempty"`
	Tag       string            `json:"tag"`
	Extractor map[string]string `json:"extractor,omitempty"`
}

// Version is one uploaded version of an agent.
type Version struct {
	Version    int    `json:"version"`
	Status     string `json:"status"`
	UploadedAt string `json:"uploaded_at"`
	Error      Text   `json:"error"`
}

// AgentDetail is the answer of GET /api/v1/agents/{id}.
type AgentDetail struct {
	Agent
	Entrypoints []Entrypoint   `json:"entrypoints"`
	Versions    []Version      `json:"versions"`
	Limits      map[string]any `json:"limits"`
	Pool        map[string]any `json:"pool"`
}

// KeyRequest is the body of POST /api/v1/keys. A nil limit means the
// server's default.
type KeyRequest struct {
	Name           string   `json:"name"`
	Tenant         string   `json:"tenant,omitempty"`
	Scopes         []string `json:"scopes"`
	Agents         []string `json:"agents"`
	RatePerSecond  *float64 `json:"rate_per_second,omitempty"`
	Burst          *int     `json:"burst,omitempty"`
	MaxConcurrency *int     `json:"max_concurrency,omitempty"`
}

// Key is an API key record. Key (the whole key) is set only in the answer
// of CreateKey. Null limits mean the server's defaults.
type Key struct {
	ID             string   `json:"id"`
	Name           string   `json:"name"`
	Tenant         string   `json:"tenant"`
	Scopes         []string `json:"scopes"`
	Agents         []string `json:"agents"`
	RatePerSecond  *float64 `json:"rate_per_second"`
	Burst          *int     `json:"burst"`
	MaxConcurrency *int     `json:"max_concurrency"`
	CreatedAt      string   `json:"created_at"`
	RevokedAt      *string  `json:"revoked_at"`
	LastUsedAt     *string  `json:"last_used_at"`
	Key            string   `json:"key,omitempty"`
}

// InputData is an invocation's inputs.
type InputData struct {
	InputArgs   json.RawMessage `json:"input_args"`
	InputKwargs json.RawMessage `json:"input_kwargs"`
}

// Invocation is the wire invocation record (wire-v1.md). Nullable fields
// are pointers or raw JSON so that the record prints back as it came.
type Invocation struct {
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

// InvocationList is the answer of GET /api/v1/invocations.
type InvocationList struct {
	Invocations []Invocation `json:"invocations"`
	TotalCount  int          `json:"total_count"`
}

// LogLine is one line an agent's instance wrote.
type LogLine struct {
	Seq          int64  `json:"seq"`
	Time         string `json:"time"`
	Version      int    `json:"version"`
	Instance     Text   `json:"instance"`
	InvocationID Text   `json:"invocation_id"`
	Stream       string `json:"stream"`
	Line         string `json:"line"`
}

// LogPage is the answer of GET /api/v1/agents/{id}/logs.
type LogPage struct {
	AgentID   string    `json:"agent_id"`
	Logs      []LogLine `json:"logs"`
	NextAfter int64     `json:"next_after"`
}

// Text is a string that also decodes from a JSON number, a boolean or null
// (""), for fields whose JSON type the contract leaves open (an instance may
// be named "inst-2" or numbered 2).
type Text string

// UnmarshalJSON accepts a string, a number, a boolean or null.
func (t *Text) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*t = Text(s)
		return nil
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case nil:
		*t = ""
	case float64:
		*t = Text(strconv.FormatFloat(v, 'f', -1, 64))
	case bool:
		*t = Text(strconv.FormatBool(v))
	default:
		*t = Text(b)
	}
	return nil
}
