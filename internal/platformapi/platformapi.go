// Package platformapi is the platform API of `runagent server`
// (docs/platform-api.md) as Go types: the request and the answer (the
// envelope's "data") of every platform route. The server
// (internal/platform) fills them in, the CLI's client
// (internal/platformclient) decodes into them; there is no other
// definition of the contract.
//
// The server used to build its answers as maps, which encoding/json writes
// with their keys sorted, and clients (the official SDKs, the e2e tests)
// read that JSON. So the fields of every answer that was a map are declared
// in the alphabetical order of their JSON keys: keep them so, or the JSON
// changes. Records that were structs (log lines, instances, the wire
// invocation record) keep their own order.
//
// Timestamps are strings as the server sends them (ISO 8601 without a zone
// for UTC, like wire.IsoFormat, or RFC 3339 in log lines). Fields whose JSON
// type the contract leaves open are Text, which decodes leniently.
//
// The package imports only domain and the standard library.
package platformapi

import (
	"encoding/json"
	"strconv"

	"github.com/runagent-go/runagent/internal/domain"
)

// TokenInfo is the answer of POST /api/v1/tokens/validate. The user_* and
// default_project_* fields are the original cloud's; the server fills them
// from the key's tenant. Agents is null for a key without an agent list.
type TokenInfo struct {
	Agents             []string `json:"agents"`
	DefaultProjectID   Text     `json:"default_project_id"`
	DefaultProjectName Text     `json:"default_project_name"`
	KeyID              string   `json:"key_id"`
	Name               string   `json:"name"`
	Scopes             []string `json:"scopes"`
	Tenant             string   `json:"tenant"`
	UserEmail          *Text    `json:"user_email"` // always null from runagent server
	UserID             Text     `json:"user_id"`
	UserTier           Text     `json:"user_tier"`
	Valid              bool     `json:"valid"`
}

// MetadataRequest is the body of POST /api/v1/agents/metadata-upload (the
// original CLI's first deploy step). The server reads agent_id, config and
// overwrite; agent_metadata and project_id are kept as sent.
type MetadataRequest struct {
	AgentID       string          `json:"agent_id"`
	AgentMetadata json.RawMessage `json:"agent_metadata,omitempty"`
	Config        map[string]any  `json:"config"`
	ProjectID     json.RawMessage `json:"project_id,omitempty"`
	Overwrite     bool            `json:"overwrite"`
}

// Metadata is the answer of POST /api/v1/agents/metadata-upload:
// EntrypointIDs are the tags of the config's entrypoints (never null).
type Metadata struct {
	AgentID            string   `json:"agent_id"`
	EntrypointIDs      []string `json:"entrypoint_ids"`
	EntrypointsCreated int      `json:"entrypoints_created"`
}

// Upload is the answer of POST /api/v1/agents/upload (multipart: the zip in
// the form field "file", optionally "agent_id" before it).
type Upload struct {
	AgentID  string `json:"agent_id"`
	FileName string `json:"file_name"`
	FileSize int64  `json:"file_size"`
	Status   string `json:"status"` // "uploaded"
	Version  int    `json:"version"`
}

// Deployment is the answer of POST /api/v1/agents/{id}/start.
type Deployment struct {
	AgentID  string `json:"agent_id"`
	Endpoint string `json:"endpoint"` // "/agents/{id}"
	Status   string `json:"status"`   // "deployed"
	URL      string `json:"url"`      // "/api/v1/agents/{id}"
	Version  int    `json:"version"`
}

// Instances counts an agent's instances by state.
type Instances struct {
	Draining int `json:"draining"`
	Ready    int `json:"ready"`
	Starting int `json:"starting"`
}

// Agent statuses.
const (
	AgentRegistered = "registered" // metadata only, nothing uploaded
	AgentUploaded   = "uploaded"   // uploaded, no version serving
	AgentDeployed   = "deployed"   // a version takes the traffic
)

// Agent is one entry of GET /api/v1/agents ({"agents": [...]}).
type Agent struct {
	ActiveVersion int       `json:"active_version"` // 0: none
	AgentID       string    `json:"agent_id"`
	CreatedAt     string    `json:"created_at"`
	Framework     string    `json:"framework"`
	Instances     Instances `json:"instances"`
	LatestVersion int       `json:"latest_version"`
	Name          string    `json:"name"`
	Status        string    `json:"status"`
	Tenant        string    `json:"tenant"`
	UpdatedAt     string    `json:"updated_at"`
}

// AgentList is the answer of GET /api/v1/agents.
type AgentList struct {
	Agents []Agent `json:"agents"`
}

// AgentStatus is the answer of GET /api/v1/agents/{id}/status: the list
// entry plus the error of the newest version when it failed (else null).
type AgentStatus struct {
	ActiveVersion int       `json:"active_version"`
	AgentID       string    `json:"agent_id"`
	CreatedAt     string    `json:"created_at"`
	Error         *Text     `json:"error"`
	Framework     string    `json:"framework"`
	Instances     Instances `json:"instances"`
	LatestVersion int       `json:"latest_version"`
	Name          string    `json:"name"`
	Status        string    `json:"status"`
	Tenant        string    `json:"tenant"`
	UpdatedAt     string    `json:"updated_at"`
}

// AgentDetail is the answer of GET /api/v1/agents/{id}: the list entry plus
// its versions (newest first) and pool, and, while a version serves, its
// entrypoints and limits (both absent otherwise).
type AgentDetail struct {
	ActiveVersion int          `json:"active_version"`
	AgentID       string       `json:"agent_id"`
	CreatedAt     string       `json:"created_at"`
	Entrypoints   []Entrypoint `json:"entrypoints,omitzero"` // nil: absent; empty: []
	Framework     string       `json:"framework"`
	Instances     Instances    `json:"instances"`
	LatestVersion int          `json:"latest_version"`
	Limits        *Limits      `json:"limits,omitempty"`
	Name          string       `json:"name"`
	Pool          Pool         `json:"pool"`
	Status        string       `json:"status"`
	Tenant        string       `json:"tenant"`
	UpdatedAt     string       `json:"updated_at"`
	Versions      []Version    `json:"versions"`
}

// Version is one uploaded version of an agent. Error is "" unless it failed.
type Version struct {
	Error      Text   `json:"error"`
	FileSize   int64  `json:"file_size"`
	SHA256     string `json:"sha256"`
	Status     string `json:"status"` // uploaded, active, retired, failed
	UploadedAt string `json:"uploaded_at"`
	Version    int    `json:"version"`
}

// Limits are the deployment settings the serving version runs with (the
// config's deployment section under the server's flags).
type Limits struct {
	CallTimeoutSeconds float64 `json:"call_timeout_seconds"`
	CPUSeconds         float64 `json:"cpu_seconds"`
	IdleTimeoutSeconds float64 `json:"idle_timeout_seconds"`
	MaxConcurrency     int     `json:"max_concurrency"`
	MaxInstances       int     `json:"max_instances"`
	MaxPids            int     `json:"max_pids"`
	MaxQueue           int     `json:"max_queue"`
	MemoryMB           int     `json:"memory_mb"`
	MinInstances       int     `json:"min_instances"`
	Network            bool    `json:"network"`
	OpenFiles          int     `json:"open_files"`
	Sandbox            string  `json:"sandbox"`
	TargetConcurrency  float64 `json:"target_concurrency"`
	WorkDirMB          int     `json:"work_dir_mb"`
}

// Pool is the state of an agent's instances. Instances and
// RetiringVersions are null when there are none.
type Pool struct {
	InFlight         int        `json:"in_flight"`
	Instances        []Instance `json:"instances"`
	Queued           int        `json:"queued"`
	RetiringVersions []int      `json:"retiring_versions"`
}

// Instance is one instance of the serving version.
type Instance struct {
	ID            string               `json:"id"`
	State         domain.InstanceState `json:"state"`
	PID           int                  `json:"pid,omitempty"`
	InFlight      int                  `json:"in_flight"`
	RSSBytes      int64                `json:"rss_bytes"`
	CPUSeconds    float64              `json:"cpu_seconds"`
	Tasks         int                  `json:"tasks"`
	UptimeSeconds float64              `json:"uptime_seconds"`
}

// Deleted is the answer of DELETE /api/v1/agents/{id}.
type Deleted struct {
	AgentID string `json:"agent_id"`
	Deleted bool   `json:"deleted"`
}

// LogPage is the answer of GET /api/v1/agents/{id}/logs: Logs (null when
// the agent has none after the cursor; otherwise oldest first) and the
// cursor to read on from (the last line's seq, else the request's after).
type LogPage struct {
	AgentID   string    `json:"agent_id"`
	Logs      []LogLine `json:"logs"`
	NextAfter int64     `json:"next_after"`
}

// LogLine is one line an agent's instance wrote, or a system event about
// it (stream "system", instance "-"): an entry of LogPage, and one NDJSON
// line of GET /api/v1/agents/{id}/logs?follow=true.
type LogLine struct {
	Seq          int64  `json:"seq"`
	Time         string `json:"time"` // RFC 3339 with nanoseconds
	AgentID      string `json:"agent_id"`
	Version      int    `json:"version"`
	Instance     Text   `json:"instance"`
	InvocationID Text   `json:"invocation_id,omitempty"`
	Stream       string `json:"stream"`
	Line         string `json:"line"`
}

// InvocationList is the answer of GET /api/v1/invocations (newest first;
// TotalCount is the number listed). Its items are wire invocation records:
// the server lists wire.InvocationRecord, which renders the record
// (wire-v1.md), and a client reads Invocation, its decoded shape.
type InvocationList[Record any] struct {
	Invocations []Record `json:"invocations"`
	TotalCount  int      `json:"total_count"`
}

// RunList is GET /api/v1/runs: background runs, newest first (Record is
// wire.RunRecord on the server, wire.RunJSON in a client).
type RunList[Record any] struct {
	Runs       []Record `json:"runs"`
	TotalCount int      `json:"total_count"`
}

// KeyRequest is the body of POST /api/v1/keys (admin). Tenant "" is the
// server's default tenant; a nil or 0 limit is the server's default; Agents
// empty allows every agent of the tenant. Unknown fields are refused.
type KeyRequest struct {
	Name           string   `json:"name"`
	Tenant         string   `json:"tenant,omitempty"`
	Scopes         []string `json:"scopes"`
	Agents         []string `json:"agents"`
	RatePerSecond  *float64 `json:"rate_per_second,omitempty"`
	Burst          *int     `json:"burst,omitempty"`
	MaxConcurrency *int     `json:"max_concurrency,omitempty"`
}

// Key is an API key record: an entry of GET /api/v1/keys, and with Key (the
// whole key, shown only then) the answer of POST /api/v1/keys. A limit of 0
// is the server's default; RevokedAt is null while the key works.
type Key struct {
	Agents         []string `json:"agents"` // never null
	Burst          int      `json:"burst"`
	CreatedAt      string   `json:"created_at"`
	ID             string   `json:"id"`
	Key            string   `json:"key,omitempty"`
	MaxConcurrency int      `json:"max_concurrency"`
	Name           string   `json:"name"`
	RatePerSecond  float64  `json:"rate_per_second"`
	RevokedAt      *string  `json:"revoked_at"`
	Scopes         []string `json:"scopes"`
	Tenant         string   `json:"tenant"`
}

// KeyList is the answer of GET /api/v1/keys.
type KeyList struct {
	Keys []Key `json:"keys"`
}

// Revoked is the answer of DELETE /api/v1/keys/{id}.
type Revoked struct {
	ID      string `json:"id"`
	Revoked bool   `json:"revoked"`
}

// Health is GET /api/v1/health (plain JSON, no envelope).
type Health struct {
	Agents         int     `json:"agents"`
	InstancesReady int     `json:"instances_ready"`
	Server         string  `json:"server"`
	Status         string  `json:"status"` // "healthy"
	Timestamp      string  `json:"timestamp"`
	UptimeSeconds  float64 `json:"uptime_seconds"`
	Version        string  `json:"version"`
}

// Info is GET /api/v1 (plain JSON, no envelope).
type Info struct {
	Docs    string `json:"docs"`
	Host    string `json:"host"`
	Message string `json:"message"`
	Port    int    `json:"port"`
	Version string `json:"version"`
}

// Entrypoint is one entrypoint of a deployed agent exactly as the wire's
// GET /api/v1/agents/{id}/architecture lists it ({file, module, tag,
// extractor}, or for a webhook {webhook_url, method, tag, timeout,
// extractor}). It is the encoded JSON, passed through: internal/server
// renders it, keeping the extractor's keys in the config's order, which a
// struct could not. Fields decodes what a client shows.
type Entrypoint json.RawMessage

// MarshalJSON writes the entrypoint as it was encoded (null if empty).
func (e Entrypoint) MarshalJSON() ([]byte, error) {
	if len(e) == 0 {
		return []byte("null"), nil
	}
	return e, nil
}

// UnmarshalJSON keeps a copy of the encoded entrypoint.
func (e *Entrypoint) UnmarshalJSON(b []byte) error {
	*e = append((*e)[:0], b...)
	return nil
}

// EntrypointFields are the fields of an Entrypoint a client shows.
type EntrypointFields struct {
	File       string `json:"file"`
	Module     string `json:"module"`
	Tag        string `json:"tag"`
	WebhookURL string `json:"webhook_url"`
	Method     string `json:"method"`
}

// Fields decodes the entrypoint's file, module, tag and webhook (what is
// missing or not a string stays "").
func (e Entrypoint) Fields() EntrypointFields {
	var raw map[string]json.RawMessage
	json.Unmarshal(e, &raw)
	str := func(k string) string {
		var s string
		json.Unmarshal(raw[k], &s)
		return s
	}
	return EntrypointFields{File: str("file"), Module: str("module"), Tag: str("tag"), WebhookURL: str("webhook_url"), Method: str("method")}
}

// Text is a string that also decodes from a JSON number, a boolean or null
// (""), for fields whose JSON type the contract leaves open (an instance may
// be named "v1-2" or numbered 2; the original cloud's user ids are numbers).
// It encodes as a JSON string.
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

// TextPtr returns a pointer to s as Text, for the nullable Text fields.
func TextPtr(s string) *Text {
	t := Text(s)
	return &t
}

// Node is one node of a cluster as it advertises itself (GET
// /api/v1/nodes, admin): its capacity, what it runs, its last heartbeat.
type Node struct {
	ID                   string      `json:"id"`
	Addr                 string      `json:"addr"` // its health and metrics listener
	Version              string      `json:"version"`
	StartedAt            string      `json:"started_at"`
	HeartbeatAt          string      `json:"heartbeat_at"`
	HeartbeatAgeSeconds  float64     `json:"heartbeat_age_seconds"`
	Draining             bool        `json:"draining"`
	CPUs                 int         `json:"cpus"`
	MemoryBytes          int64       `json:"memory_bytes"`
	MemoryAvailableBytes int64       `json:"memory_available_bytes"`
	Instances            int         `json:"instances"` // ready or starting
	InFlight             int         `json:"in_flight"`
	Drivers              []string    `json:"drivers"` // the sandboxes it can run
	Agents               []NodeAgent `json:"agents"`
}

// NodeAgent is one agent version a node serves.
type NodeAgent struct {
	AgentID      string `json:"agent_id"`
	Version      int    `json:"version"`
	Ready        int    `json:"ready"`
	Starting     int    `json:"starting"`
	InFlight     int    `json:"in_flight"`
	Queued       int    `json:"queued"`
	Calls        int64  `json:"calls"` // taken since the version came up here
	MaxInstances int    `json:"max_instances"`
}

// NodeList is GET /api/v1/nodes.
type NodeList struct {
	Nodes     []Node `json:"nodes"`
	Scheduler string `json:"scheduler"` // the gateway placing versions now ("" during an election)
}

// NodeAction is the answer of POST /api/v1/nodes/{id}/drain and /resume.
type NodeAction struct {
	ID     string `json:"id"`
	Action string `json:"action"`
}
