package platformapi

import (
	"encoding/json"
	"testing"

	"github.com/runagent-go/runagent/internal/wire"
)

// The answers encode exactly as the server's maps did (keys sorted, the
// same nulls and absent keys): the official SDKs and the e2e tests read
// this JSON.
func TestAnswersEncodeAsBefore(t *testing.T) {
	rev := "2026-11-24T12:00:00"
	ms := 12.5
	for _, tt := range []struct {
		name string
		v    any
		want string
	}{
		{"validate", TokenInfo{Valid: true, KeyID: "k", Name: "n", Tenant: "t", Scopes: []string{"admin"}, UserID: "t", UserTier: "self-hosted",
			DefaultProjectID: "t", DefaultProjectName: "t"},
			`{"agents":null,"default_project_id":"t","default_project_name":"t","key_id":"k","name":"n","scopes":["admin"],"tenant":"t","user_email":null,"user_id":"t","user_tier":"self-hosted","valid":true}`},
		{"metadata", Metadata{AgentID: "a", EntrypointIDs: []string{}}, `{"agent_id":"a","entrypoint_ids":[],"entrypoints_created":0}`},
		{"upload", Upload{AgentID: "a", FileName: "f.zip", FileSize: 3, Status: "uploaded", Version: 2},
			`{"agent_id":"a","file_name":"f.zip","file_size":3,"status":"uploaded","version":2}`},
		{"start", Deployment{AgentID: "a", Endpoint: "/agents/a", Status: "deployed", URL: "/api/v1/agents/a", Version: 2},
			`{"agent_id":"a","endpoint":"/agents/a","status":"deployed","url":"/api/v1/agents/a","version":2}`},
		{"status", AgentStatus{AgentID: "a", Status: "uploaded", Instances: Instances{Ready: 1}},
			`{"active_version":0,"agent_id":"a","created_at":"","error":null,"framework":"","instances":{"draining":0,"ready":1,"starting":0},"latest_version":0,"name":"","status":"uploaded","tenant":"","updated_at":""}`},
		{"status failed", AgentStatus{Error: TextPtr("boom")}, `{"active_version":0,"agent_id":"","created_at":"","error":"boom",` +
			`"framework":"","instances":{"draining":0,"ready":0,"starting":0},"latest_version":0,"name":"","status":"","tenant":"","updated_at":""}`},
		{"list", AgentList{Agents: []Agent{{AgentID: "a", ActiveVersion: 1}}},
			`{"agents":[{"active_version":1,"agent_id":"a","created_at":"","framework":"","instances":{"draining":0,"ready":0,"starting":0},"latest_version":0,"name":"","status":"","tenant":"","updated_at":""}]}`},
		{"detail without a serving version", AgentDetail{AgentID: "a", Versions: []Version{{Version: 1, Status: "failed", Error: "x"}}},
			`{"active_version":0,"agent_id":"a","created_at":"","framework":"","instances":{"draining":0,"ready":0,"starting":0},"latest_version":0,"name":"",` +
				`"pool":{"in_flight":0,"instances":null,"queued":0,"retiring_versions":null},"status":"","tenant":"","updated_at":"",` +
				`"versions":[{"error":"x","file_size":0,"sha256":"","status":"failed","uploaded_at":"","version":1}]}`},
		{"detail serving", AgentDetail{Entrypoints: []Entrypoint{Entrypoint(`{"file":"m.py","module":"f","tag":"t","extractor":{"z":"$.z","a":"$.a"}}`)},
			Limits: &Limits{MaxInstances: 4, CallTimeoutSeconds: 300, Sandbox: "process"},
			Pool:   Pool{Instances: []Instance{{ID: "v1-1", State: "ready", InFlight: 1, UptimeSeconds: 1.5}}, RetiringVersions: []int{1}}, Versions: []Version{}},
			`{"active_version":0,"agent_id":"","created_at":"","entrypoints":[{"file":"m.py","module":"f","tag":"t","extractor":{"z":"$.z","a":"$.a"}}],"framework":"",` +
				`"instances":{"draining":0,"ready":0,"starting":0},"latest_version":0,` +
				`"limits":{"call_timeout_seconds":300,"cpu_seconds":0,"idle_timeout_seconds":0,"max_concurrency":0,"max_instances":4,"max_pids":0,"max_queue":0,"memory_mb":0,"min_instances":0,"network":false,"open_files":0,"sandbox":"process","target_concurrency":0,"work_dir_mb":0},` +
				`"name":"","pool":{"in_flight":0,"instances":[{"id":"v1-1","state":"ready","in_flight":1,"rss_bytes":0,"cpu_seconds":0,"tasks":0,"uptime_seconds":1.5}],"queued":0,"retiring_versions":[1]},` +
				`"status":"","tenant":"","updated_at":"","versions":[]}`},
		{"detail serving no entrypoints", AgentDetail{Entrypoints: []Entrypoint{}, Versions: []Version{}},
			`{"active_version":0,"agent_id":"","created_at":"","entrypoints":[],"framework":"","instances":{"draining":0,"ready":0,"starting":0},"latest_version":0,"name":"",` +
				`"pool":{"in_flight":0,"instances":null,"queued":0,"retiring_versions":null},"status":"","tenant":"","updated_at":"","versions":[]}`},
		{"delete", Deleted{AgentID: "a", Deleted: true}, `{"agent_id":"a","deleted":true}`},
		{"logs", LogPage{AgentID: "a", Logs: []LogLine{{Seq: 1, Time: "t", AgentID: "a", Version: 1, Instance: "-", Stream: "system", Line: "x"},
			{Seq: 2, InvocationID: "i", Instance: "v1-1", Line: "<y>"}}, NextAfter: 2},
			`{"agent_id":"a","logs":[{"seq":1,"time":"t","agent_id":"a","version":1,"instance":"-","stream":"system","line":"x"},` +
				`{"seq":2,"time":"","agent_id":"","version":0,"instance":"v1-1","invocation_id":"i","stream":"","line":"\u003cy\u003e"}],"next_after":2}`},
		{"invocations", InvocationList[wire.InvocationJSON]{Invocations: []wire.InvocationJSON{{InvocationID: "i", InputData: wire.InputData{InputArgs: json.RawMessage(`[]`),
			InputKwargs: json.RawMessage(`{}`)}, ExecutionTimeMS: &ms}}, TotalCount: 1},
			`{"invocations":[{"invocation_id":"i","agent_id":"","input_data":{"input_args":[],"input_kwargs":{}},"output_data":null,"error_detail":null,` +
				`"request_timestamp":"","response_timestamp":null,"execution_time_ms":12.5,"status":"","entrypoint_tag":"","sdk_type":"","client_info":null}],"total_count":1}`},
		{"created key", Key{ID: "k", Key: "ra_k_s", Name: "n", Tenant: "t", Scopes: []string{"run"}, Agents: []string{}, RatePerSecond: 2.5, CreatedAt: "c"},
			`{"agents":[],"burst":0,"created_at":"c","id":"k","key":"ra_k_s","max_concurrency":0,"name":"n","rate_per_second":2.5,"revoked_at":null,"scopes":["run"],"tenant":"t"}`},
		{"keys", KeyList{Keys: []Key{{ID: "k", Agents: []string{"a"}, RevokedAt: &rev}}},
			`{"keys":[{"agents":["a"],"burst":0,"created_at":"","id":"k","max_concurrency":0,"name":"","rate_per_second":0,"revoked_at":"2026-11-24T12:00:00","scopes":null,"tenant":""}]}`},
		{"revoke", Revoked{ID: "k", Revoked: true}, `{"id":"k","revoked":true}`},
		{"info", Info{Docs: "d", Host: "h", Message: "m", Port: 1, Version: "v"}, `{"docs":"d","host":"h","message":"m","port":1,"version":"v"}`},
		{"health", Health{Status: "healthy"}, `{"agents":0,"instances_ready":0,"server":"","status":"healthy","timestamp":"","uptime_seconds":0,"version":""}`},
	} {
		b, err := json.Marshal(tt.v)
		if err != nil || string(b) != tt.want {
			t.Errorf("%s:\n got %s (%v)\nwant %s", tt.name, b, err, tt.want)
		}
	}
}

// The requests encode as the CLI has always sent them: no tenant or limits
// unless set.
func TestKeyRequestEncoding(t *testing.T) {
	burst := 5
	b, _ := json.Marshal(KeyRequest{Name: "app", Scopes: []string{"run"}, Agents: []string{}, Burst: &burst})
	if string(b) != `{"name":"app","scopes":["run"],"agents":[],"burst":5}` {
		t.Errorf("key request = %s", b)
	}
}

func TestLenientDecoding(t *testing.T) {
	var info TokenInfo
	if err := json.Unmarshal([]byte(`{"user_id":7,"user_email":null,"user_tier":true,"default_project_id":"p"}`), &info); err != nil {
		t.Fatal(err)
	}
	if info.UserID != "7" || info.UserEmail != nil || info.UserTier != "true" || info.DefaultProjectID != "p" {
		t.Errorf("info = %+v", info)
	}
	var l LogLine
	if err := json.Unmarshal([]byte(`{"seq":1,"instance":2,"invocation_id":null}`), &l); err != nil || l.Instance != "2" || l.InvocationID != "" {
		t.Errorf("log line = %+v, %v", l, err)
	}
	var st AgentStatus
	if err := json.Unmarshal([]byte(`{"error":"boom"}`), &st); err != nil || st.Error == nil || *st.Error != "boom" {
		t.Errorf("status = %+v, %v", st, err)
	}
}

func TestEntrypointPassesThrough(t *testing.T) {
	in := `{"entrypoints":[{"webhook_url":"https://x","method":"POST","tag":"hook","timeout":30,"extractor":{"b":"$.b","a":"$.a"}},{"file":"m.py","module":"f","tag":"t","extractor":{}}]}`
	var d struct {
		Entrypoints []Entrypoint `json:"entrypoints"`
	}
	if err := json.Unmarshal([]byte(in), &d); err != nil {
		t.Fatal(err)
	}
	if f := d.Entrypoints[0].Fields(); f.Tag != "hook" || f.WebhookURL != "https://x" || f.Method != "POST" || f.File != "" {
		t.Errorf("webhook fields = %+v", f)
	}
	if f := d.Entrypoints[1].Fields(); f != (EntrypointFields{File: "m.py", Module: "f", Tag: "t"}) {
		t.Errorf("fields = %+v", f)
	}
	if b, _ := json.Marshal(d); string(b) != in {
		t.Errorf("re-encoded:\n%s\nwant\n%s", b, in)
	}
}
