package wire_test

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/wire"
)

func TestAppendStringMatchesJSON(t *testing.T) {
	tests := []struct{ in, want string }{
		{"hello", `"hello"`},
		{"", `""`},
		{`a"b\c`, `"a\"b\\c"`},
		{"line\nnext\ttab\r", `"line\nnext\ttab\r"`},
		{"\x00\x1f\b\f", `"\u0000\u001f\b\f"`},
		{"héllo 世界 🎉", `"héllo 世界 🎉"`},
		{"bad\xffutf8", `"bad\ufffdutf8"`},
		{"<html>&", `"<html>&"`},
	}
	for _, tt := range tests {
		got := string(wire.AppendString(nil, tt.in))
		if got != tt.want {
			t.Errorf("AppendString(%q) = %s, want %s", tt.in, got, tt.want)
		}
		var back string
		if err := json.Unmarshal([]byte(got), &back); err != nil {
			t.Errorf("AppendString(%q) is not valid JSON: %v", tt.in, err)
		}
	}
}

func TestAppendFloatLikePython(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{1, "1.0"}, {0.5, "0.5"}, {-3, "-3.0"}, {1e21, "1e+21"}, {123.456, "123.456"}, {math.MaxFloat64, "1.7976931348623157e+308"},
	}
	for _, tt := range tests {
		if got := string(wire.AppendFloat(nil, tt.in)); got != tt.want {
			t.Errorf("AppendFloat(%v) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestEnvelope(t *testing.T) {
	ts := time.Date(2025, 6, 25, 13, 42, 3, 123456000, time.Local)
	data := wire.AppendString(nil, `{"type": "string", "payload": "\"hi\""}`)
	got := string(wire.AppendEnvelope(nil, &wire.Envelope{Success: true, Data: data, Message: wire.MessageRunOK, Timestamp: ts, RequestID: "rid"}))
	want := `{"success":true,"data":"{\"type\": \"string\", \"payload\": \"\\\"hi\\\"\"}","message":"Agent execution completed successfully","error":null,"timestamp":"2025-06-25T13:42:03.123456","request_id":"rid"}`
	if got != want {
		t.Fatalf("success envelope\n got %s\nwant %s", got, want)
	}
	got = string(wire.AppendEnvelope(nil, &wire.Envelope{Error: &domain.Error{Code: domain.CodeNotFound, Message: "Entrypoint x not found"}, Timestamp: ts.Truncate(time.Second), RequestID: "r"}))
	want = `{"success":false,"data":null,"message":null,"error":{"code":"NOT_FOUND","message":"Entrypoint x not found","details":null,"field":null},"timestamp":"2025-06-25T13:42:03","request_id":"r"}`
	if got != want {
		t.Fatalf("error envelope\n got %s\nwant %s", got, want)
	}
}

func TestHTTPStatus(t *testing.T) {
	for code, want := range map[domain.Code]int{
		domain.CodeValidation: 400, domain.CodeAuthentication: 401, domain.CodePermission: 403, domain.CodeNotFound: 404,
		domain.CodeRateLimit: 429, domain.CodeTimeout: 504, domain.CodeAgentCrashed: 502, domain.CodeOverloaded: 503, domain.CodeConnection: 503,
		domain.CodeInternal: 500, "SOMETHING_NEW": 500,
	} {
		if got := wire.HTTPStatus(code); got != want {
			t.Errorf("HTTPStatus(%s) = %d, want %d", code, got, want)
		}
	}
}

func TestIsoFormat(t *testing.T) {
	tests := []struct {
		t    time.Time
		want string
	}{
		{time.Date(2025, 6, 25, 13, 42, 3, 123456000, time.UTC), "2025-06-25T13:42:03.123456"},
		{time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), "2025-01-02T03:04:05"},
		{time.Date(2025, 1, 2, 3, 4, 5, 999, time.UTC), "2025-01-02T03:04:05"}, // below a microsecond
		{time.Date(2025, 1, 2, 3, 4, 5, 1000, time.UTC), "2025-01-02T03:04:05.000001"},
		{time.Date(2025, 1, 2, 5, 4, 5, 500000000, time.FixedZone("x", 2*3600)), "2025-01-02T03:04:05.500000"},
	}
	for _, tt := range tests {
		if got := wire.IsoFormat(tt.t); got != tt.want {
			t.Errorf("IsoFormat(%v) = %q, want %q", tt.t, got, tt.want)
		}
	}
}
