package runagent_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

func BenchmarkRun(b *testing.B) {
	body := []byte(okEnvelope(structured("string", `"Hello from the mock agent"`)))
	srv := newRESTServer(b, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	clearEnv(b)
	c, err := runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", BaseURL: srv.URL, APIKey: "k"})
	if err != nil {
		b.Fatal(err)
	}
	in := runagent.Kwargs(map[string]any{"message": "hi", "role": "user"})
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Run(context.Background(), in); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// cannedTransport answers every request with the same body, without a
// network, to measure the client alone.
type cannedTransport struct{ body []byte }

func (t cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(t.body)), ContentLength: int64(len(t.body)), Request: r}, nil
}

func BenchmarkRunClientOnly(b *testing.B) {
	clearEnv(b)
	body := []byte(okEnvelope(structured("string", `"Hello from the mock agent"`)))
	c, err := runagent.New(runagent.Config{AgentID: testAgent, EntrypointTag: "minimal", BaseURL: "http://unused.invalid", APIKey: "k",
		HTTPClient: &http.Client{Transport: cannedTransport{body}}})
	if err != nil {
		b.Fatal(err)
	}
	in := runagent.Kwargs(map[string]any{"message": "hi", "role": "user"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Run(context.Background(), in); err != nil {
			b.Fatal(err)
		}
	}
}
