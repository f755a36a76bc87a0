package runagent_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

func TestDecodeStructured(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want any
	}{
		{"python spacing", `{"type": "string", "payload": "\"hi\""}`, "hi"},
		{"compact", `{"type":"integer","payload":"7"}`, int64(7)},
		{"int64 bounds", `{"type":"integer","payload":"-9223372036854775808"}`, int64(math.MinInt64)},
		{"beyond int64", `{"type":"integer","payload":"9223372036854775808"}`, new(big.Int).Lsh(big.NewInt(1), 63)},
		{"float", `{"type":"number","payload":"0.1"}`, 0.1},
		{"negative zero float", `{"type":"number","payload":"-0.0"}`, math.Copysign(0, -1)},
		{"Infinity", `{"type":"number","payload":"Infinity"}`, math.Inf(1)},
		{"-Infinity in array", `{"type":"array","payload":"[1, -Infinity, \"NaN\"]"}`, []any{int64(1), math.Inf(-1), "NaN"}},
		{"NaN", `{"type":"number","payload":"NaN"}`, nil},
		{"null payload", `{"type":"null","payload":"null"}`, nil},
		{"missing payload", `{"type":"null"}`, nil},
		{"payload not a string", `{"type":"array","payload":[1,2]}`, []any{int64(1), int64(2)}},
		{"string payload not JSON-encoded", `{"type":"string","payload":"plain text"}`, "plain text"},
		{"unknown type tag", `{"type":"tuple","payload":"[1]"}`, []any{int64(1)}},
		{"non-ASCII kept", `{"type": "string", "payload": "\"日本語 ✓\""}`, "日本語 ✓"},
		{"escaped unicode", `{"type": "string", "payload": "\"\\u00e9\\ud83c\\udf89\""}`, "é🎉"},
		{"nested", `{"type":"object","payload":"{\"a\": {\"b\": [{\"c\": 1e3}]}}"}`, map[string]any{"a": map[string]any{"b": []any{map[string]any{"c": 1000.0}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := runagent.DecodeStructured(tt.in)
			if err != nil {
				t.Fatalf("DecodeStructured: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestDecodeStructuredMalformed(t *testing.T) {
	for _, in := range []string{
		``, `null`, `42`, `"x"`, `[]`, `{}`, `{"type":`, `{"type":"integer","payload":"4 2"}`,
		`{"type":"object","payload":"{\"a\":"}`, `{"type":"integer","payload":"NaNa"}`,
		`{"type":"number","payload":"Infinityx"}`, `not json`,
	} {
		_, err := runagent.DecodeStructured(in)
		if err == nil {
			t.Errorf("DecodeStructured(%q) succeeded", in)
			continue
		}
		if !errors.Is(err, runagent.ErrMalformed) || runagent.CodeOf(err) != runagent.CodeInternal {
			t.Errorf("DecodeStructured(%q) = %v, want INTERNAL_ERROR wrapping ErrMalformed", in, err)
		}
	}
}

func TestDecodeStructuredInto(t *testing.T) {
	var v struct {
		N []float64 `json:"n"`
	}
	if err := runagent.DecodeStructuredInto(`{"type":"object","payload":"{\"n\": [1, 2.5]}"}`, &v); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v.N, []float64{1, 2.5}) {
		t.Fatalf("got %v", v.N)
	}
	var s string
	err := runagent.DecodeStructuredInto(`{"type":"integer","payload":"1"}`, &s)
	wantCode(t, err, runagent.CodeValidation)
	err = runagent.DecodeStructuredInto(`{"type":"integer","payload":"1"}`, nil)
	wantCode(t, err, runagent.CodeValidation)
}

// vectorsPath is the serializer test vectors shared with the server.
var vectorsPath = filepath.Join("..", "..", "testdata", "serializer", "vectors.json")

// TestSerializerVectors decodes every vector's structured string and
// compares it with the vector's decoded value, numbers compared by value.
func TestSerializerVectors(t *testing.T) {
	path := vectorsPath
	if p := os.Getenv("RUNAGENT_SERIALIZER_VECTORS"); p != "" {
		path = p // another vectors file
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var vectors []struct {
		Name       string          `json:"name"`
		Mode       string          `json:"mode"`
		Python     string          `json:"python"`
		Structured json.RawMessage `json:"structured"`
		Decoded    json.RawMessage `json:"decoded"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&vectors); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	if len(vectors) == 0 {
		t.Fatalf("%s holds no vectors", path)
	}
	for i, v := range vectors {
		name := v.Name
		if name == "" {
			name = "vector"
		}
		if v.Mode != "" {
			name += "/" + v.Mode
		}
		t.Run(name, func(t *testing.T) {
			// structured is normally the string; accept an object too.
			s := string(v.Structured)
			var str string
			if json.Unmarshal(v.Structured, &str) == nil {
				s = str
			}
			got, err := runagent.DecodeStructured(s)
			if err != nil {
				t.Fatalf("vector %d (python %s): DecodeStructured(%q): %v", i, v.Python, s, err)
			}
			wdec := json.NewDecoder(bytes.NewReader(v.Decoded))
			wdec.UseNumber()
			var want any
			if len(v.Decoded) > 0 {
				if err := wdec.Decode(&want); err != nil {
					t.Fatalf("vector %d: bad decoded: %v", i, err)
				}
			}
			if path, ok := sameValue(got, want, "$"); !ok {
				t.Fatalf("vector %d (python %s): at %s\n got %#v\nwant %s", i, v.Python, path, got, v.Decoded)
			}
		})
	}
}

// sameValue compares a decoded Go value with a JSON value decoded with
// UseNumber: numbers by value (integers exactly, floats with a relative
// tolerance), everything else exactly. It returns where they differ.
func sameValue(got, want any, path string) (string, bool) {
	if wn, ok := want.(json.Number); ok {
		return path, sameNumber(got, string(wn))
	}
	switch w := want.(type) {
	case nil:
		if got == nil {
			return "", true
		}
		if f, ok := got.(float64); ok && math.IsNaN(f) {
			return "", true
		}
		return path, false
	case bool, string:
		return path, got == want
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return path, false
		}
		for i := range w {
			if p, ok := sameValue(g[i], w[i], path+"["+strconv.Itoa(i)+"]"); !ok {
				return p, false
			}
		}
		return "", true
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(w) {
			return path, false
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				return path + "." + k, false
			}
			if p, ok := sameValue(gv, wv, path+"."+k); !ok {
				return p, false
			}
		}
		return "", true
	}
	return path, false
}

func sameNumber(got any, want string) bool {
	wf, _, err := big.ParseFloat(want, 10, 256, big.ToNearestEven)
	if err != nil {
		return false
	}
	var gf *big.Float
	switch g := got.(type) {
	case int64:
		gf = new(big.Float).SetPrec(256).SetInt64(g)
	case *big.Int:
		gf = new(big.Float).SetPrec(256).SetInt(g)
	case float64:
		if math.IsInf(g, 0) || math.IsNaN(g) {
			return false
		}
		w, _ := wf.Float64()
		return g == w || math.Abs(g-w) <= 1e-12*math.Max(math.Abs(g), math.Abs(w))
	default:
		return false
	}
	return gf.Cmp(wf) == 0
}

func FuzzDecodeStructured(f *testing.F) {
	for _, s := range []string{
		`{"type": "string", "payload": "\"hi\""}`,
		`{"type": "integer", "payload": "123456789012345678901234567890"}`,
		`{"type": "number", "payload": "NaN"}`,
		`{"type": "array", "payload": "[1, -Infinity, {\"a\": null}]"}`,
		`{"type": "object", "payload": "{\"error\": \"Serialization Error: x\", \"original_type\": \"T\"}"}`,
		`{"type":"string","payload":"not json"}`,
		`{"payload":[1,{"x":2}]}`,
		`{"type":"null"}`,
		`[`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := runagent.DecodeStructured(s)
		if err != nil {
			if !errors.Is(err, runagent.ErrMalformed) {
				t.Fatalf("error without ErrMalformed: %v", err)
			}
			// Differential check: what encoding/json reads as a structured
			// string with a valid JSON payload must decode.
			var o struct {
				Payload *string `json:"payload"`
			}
			if json.Unmarshal([]byte(s), &o) == nil && o.Payload != nil && json.Valid([]byte(*o.Payload)) {
				t.Fatalf("DecodeStructured(%q) failed on a valid payload: %v", s, err)
			}
			return
		}
		// A decoded value is plain data: it re-encodes unless it holds ±Inf.
		if _, merr := json.Marshal(v); merr != nil && !strings.Contains(merr.Error(), "unsupported value") {
			t.Fatalf("decoded %#v does not re-encode: %v", v, merr)
		}
		if !utf8.ValidString(s) {
			return
		}
		var into any
		_ = runagent.DecodeStructuredInto(s, &into)
	})
}

func FuzzParseRunResponse(f *testing.F) {
	for _, tt := range []struct {
		status int
		body   string
	}{
		{200, okEnvelope(structured("string", `"hi"`))},
		{200, errEnvelope("INTERNAL_ERROR", "Agent execution failed: boom")},
		{404, errEnvelope("NOT_FOUND", "Entrypoint x not found")},
		{422, `{"detail":[{"loc":["body"],"msg":"field required","type":"missing"}]}`},
		{429, `{"detail":"slow down"}`},
		{200, `{"success":true,"data":{"type":"integer","payload":"1"}}`},
		{200, `{"success":"yes","error":5,"detail":{"x":1},"request_id":[]}`},
		{500, `<html></html>`},
		{200, ``},
	} {
		f.Add(tt.status, []byte(tt.body))
	}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		v, err := runagent.ParseRunResponse(status, body)
		if err == nil {
			if status < 200 || status > 299 {
				t.Fatalf("status %d parsed as success: %#v", status, v)
			}
			return
		}
		var e *runagent.Error
		if !errors.As(err, &e) || e.Code == "" {
			t.Fatalf("error without a code: %v", err)
		}
		_ = e.Error()
	})
}

func FuzzParseFrame(f *testing.F) {
	for _, s := range []string{
		started(), completed(3), dataFrame(structured("string", `"a"`)),
		`{"type":"error","error":"Streaming error: boom"}`,
		`{"type":"error","detail":"Entrypoint x not found"}`,
		`{"type":"error","error":"Chunk serialization failed: x"}`,
		`{"type":"error","error":"x","code":"OVERLOADED"}`,
		`{"type":"error","detail":[{"msg":"x"}],"code":7}`,
		`{"type":5,"content":{"type":"null"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, err := runagent.ParseFrame(b)
		if typ == "error" {
			var e *runagent.Error
			if !errors.As(err, &e) || e.Code == "" || e.Message == "" {
				t.Fatalf("error frame without code or message: %v", err)
			}
		}
	})
}

func BenchmarkDecodeStructured(b *testing.B) {
	s := structured("object", `{"content": "Hello there, how can I help?", "usage": {"tokens": 12, "cost": 0.0003}, "tags": ["a", "b"]}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := runagent.DecodeStructured(s); err != nil {
			b.Fatal(err)
		}
	}
}
