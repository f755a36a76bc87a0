package server

import "testing"

func TestPayloadOfFastPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"type": "object", "payload": "{\"i\": 1}"}`, `{"i": 1}`},
		{`{"type": "integer", "payload": "42"}`, `42`},
		{`{"type": "string", "payload": "\"h\\u00e9 \\\"x\\\"\""}`, `"h\u00e9 \"x\""`},
		{`{"type":"object","payload":"{\"a\":[1,2]}"}`, `{"a":[1,2]}`}, // another spacing: the general path
		{`{"payload": "[1]", "type": "array"}`, `[1]`},
		{`{"type": "object", "payload": "{not json"}`, ``},
		{`not json`, ``},
	} {
		got := payloadOf([]byte(tc.in))
		if string(got) != tc.want || (tc.want == "") != (got == nil) {
			t.Errorf("payloadOf(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
