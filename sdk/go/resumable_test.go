package runagent_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

// sseServer answers POST /run-stream and GET /runs/{id}/stream with
// script(n, w, r), n counting requests from 0, and records them.
type sseServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []sseRequest
}

type sseRequest struct {
	Method, Path, LastEventID, Accept string
}

func newSSEServer(t *testing.T, script func(n int, w http.ResponseWriter, r *http.Request)) *sseServer {
	t.Helper()
	s := &sseServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		s.mu.Lock()
		n := len(s.reqs)
		s.reqs = append(s.reqs, sseRequest{Method: r.Method, Path: r.URL.EscapedPath(), LastEventID: r.Header.Get("Last-Event-ID"), Accept: r.Header.Get("Accept")})
		s.mu.Unlock()
		script(n, w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *sseServer) requests() []sseRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sseRequest(nil), s.reqs...)
}

// sse answers 200 with the event-stream text, naming run (if not "") in
// Content-Location; cut aborts the connection after it, before the end of
// the chunked body.
func sse(w http.ResponseWriter, run, text string, cut bool) {
	w.Header().Set("Content-Type", "text/event-stream")
	if run != "" {
		w.Header().Set("Content-Location", "/api/v1/runs/"+run)
	}
	w.WriteHeader(200)
	io.WriteString(w, text)
	http.NewResponseController(w).Flush()
	if cut {
		panic(http.ErrAbortHandler)
	}
}

const sseStart = "event: start\ndata: {\"run_id\":\"run/1\",\"invocation_id\":\"run/1\",\"agent_id\":\"a\"}\n\n"

// collectResumable reads a resumable stream to its end: values, per-chunk
// errors as "ERR:<code>".
func collectResumable(st *runagent.ResumableStream) []any {
	got := []any{}
	for st.Next() {
		if err := st.ChunkErr(); err != nil {
			got = append(got, "ERR:"+runagent.CodeOf(err))
			continue
		}
		got = append(got, st.Value())
	}
	return got
}

func counts(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = map[string]any{"i": int64(i)}
	}
	return out
}

func TestResumableStream(t *testing.T) {
	postPath := "/api/v1/agents/" + testAgent + "/run-stream"
	getPath := "/api/v1/runs/run%2F1/stream"
	tests := []struct {
		name     string
		retry    runagent.RetryPolicy
		script   func(n int, w http.ResponseWriter, r *http.Request)
		startErr string // RunStreamResumable's error code
		want     []any
		errCode  string // Err's code
		errHas   string
		reqs     []sseRequest // Method, Path, LastEventID
	}{
		{
			name: "re-joins after each drop, each chunk once",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				switch n {
				case 0: // cut in the middle of event 2
					sse(w, "run%2F1", sseStart+"id: 0\nevent: chunk\ndata: 0\n\nid: 1\nevent: chunk\ndata: \"one\"\n\nid: 2\nevent: chu", true)
				case 1: // a chunk again (skipped), CRLF lines, data on two lines, a heartbeat, a chunk error, then a lost event log
					sse(w, "run%2F1", sseStart+"id: 1\nevent: chunk\ndata: \"one\"\n\n"+
						"id: 2\r\nevent: chunk\r\ndata: {\"a\":\r\ndata: [1, 2]}\r\n\r\n: heartbeat\n\n"+
						"id: 3\nevent: chunk_error\ndata: {\"message\":\"Chunk serialization failed: bytes\"}\n\n"+
						"event: error\ndata: {\"code\":\"CONNECTION_ERROR\",\"message\":\"the event log could not be read; re-join with the last event id\"}\n\n", false)
				default:
					sse(w, "run%2F1", sseStart+"id: 4\nevent: chunk\ndata: NaN\n\nid: 5\nevent: done\ndata: {\"total_chunks\":5,\"invocation_id\":\"inv\"}\n\n", false)
				}
			},
			want: []any{int64(0), "one", map[string]any{"a": []any{int64(1), int64(2)}}, "ERR:INTERNAL_ERROR", nil},
			reqs: []sseRequest{{Method: "POST", Path: postPath}, {Method: "GET", Path: getPath, LastEventID: "1"}, {Method: "GET", Path: getPath, LastEventID: "3"}},
		},
		{
			name: "the run id from the start event",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 0 {
					sse(w, "", sseStart+"id: 0\nevent: chunk\ndata: 0\n\n", true)
				} else {
					sse(w, "", sseStart+"id: 1\nevent: chunk\ndata: 1\n\nid: 2\nevent: done\ndata: {}\n\n", false)
				}
			},
			want: []any{int64(0), int64(1)},
			reqs: []sseRequest{{Method: "POST", Path: postPath}, {Method: "GET", Path: getPath, LastEventID: "0"}},
		},
		{
			name: "chunks longer than the read buffer, one cut in the middle",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				big := "id: 0\nevent: chunk\ndata: \"" + strings.Repeat("x", 100_000) + "\"\n\n"
				if n == 0 {
					sse(w, "run%2F1", sseStart+big[:50_000], true)
				} else {
					sse(w, "run%2F1", sseStart+big+"id: 1\nevent: done\ndata: {}\n\n", false)
				}
			},
			want: []any{strings.Repeat("x", 100_000)},
			reqs: []sseRequest{{Method: "POST", Path: postPath}, {Method: "GET", Path: getPath}},
		},
		{
			name: "no run to re-join: not posted again",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				sse(w, "", "id: 0\nevent: chunk\ndata: 0\n\n", true)
			},
			want: []any{int64(0)}, errCode: runagent.CodeInternal, errHas: "no run to re-join",
			reqs: []sseRequest{{Method: "POST", Path: postPath}},
		},
		{
			name:  "gives up after the retry budget",
			retry: runagent.RetryPolicy{MaxAttempts: 3},
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 0 {
					sse(w, "run%2F1", sseStart+"id: 0\nevent: chunk\ndata: 0\n\n", true)
					return
				}
				w.Header().Set("Retry-After", "0")
				writeJSON(w, 503, errEnvelope("OVERLOADED", "busy"))
			},
			want: []any{int64(0)}, errCode: runagent.CodeOverloaded, errHas: "busy",
			reqs: []sseRequest{{Method: "POST", Path: postPath}, {Method: "GET", Path: getPath, LastEventID: "0"}, {Method: "GET", Path: getPath, LastEventID: "0"}},
		},
		{
			name: "re-join refused",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 0 {
					sse(w, "run%2F1", sseStart, true)
					return
				}
				writeJSON(w, 404, errEnvelope("NOT_FOUND", "run run/1 has no event log"))
			},
			want: []any{}, errCode: runagent.CodeNotFound, errHas: "no event log",
			reqs: []sseRequest{{Method: "POST", Path: postPath}, {Method: "GET", Path: getPath}},
		},
		{
			name: "an error event in the log ends the stream",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				sse(w, "run%2F1", sseStart+"id: 0\nevent: chunk\ndata: 0\n\nid: 1\nevent: error\ndata: {\"code\":\"INTERNAL_ERROR\",\"message\":\"Streaming error: boom\"}\n\n", false)
			},
			want: []any{int64(0)}, errCode: runagent.CodeInternal, errHas: "Streaming error: boom",
			reqs: []sseRequest{{Method: "POST", Path: postPath}},
		},
		{
			name: "an error event without a code",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				sse(w, "run%2F1", sseStart+"id: 0\nevent: error\ndata: {\"message\":\"the run was cancelled\"}\n\n", false)
			},
			want: []any{}, errCode: runagent.CodeInternal, errHas: "cancelled",
			reqs: []sseRequest{{Method: "POST", Path: postPath}},
		},
		{
			name: "the start retried on 503",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 0 {
					writeJSON(w, 503, errEnvelope("OVERLOADED", "busy"))
					return
				}
				sse(w, "run%2F1", sseStart+"id: 0\nevent: chunk\ndata: 0\n\nevent: done\ndata: {}\n\n", false)
			},
			want: []any{int64(0)},
			reqs: []sseRequest{{Method: "POST", Path: postPath}, {Method: "POST", Path: postPath}},
		},
		{
			name: "an error before the start",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				writeJSON(w, 404, errEnvelope("NOT_FOUND", "Entrypoint minimal_stream not found"))
			},
			startErr: runagent.CodeNotFound,
			reqs:     []sseRequest{{Method: "POST", Path: postPath}},
		},
		{
			name: "not an event stream",
			script: func(n int, w http.ResponseWriter, r *http.Request) {
				writeJSON(w, 200, okEnvelope(structured("null", "null")))
			},
			startErr: runagent.CodeInternal,
			reqs:     []sseRequest{{Method: "POST", Path: postPath}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newSSEServer(t, tt.script)
			c := newClient(t, srv.URL, "minimal_stream", newFakeClock(), func(cfg *runagent.Config) { cfg.Retry = tt.retry })
			st, err := c.RunStreamResumable(context.Background(), runagent.Input{})
			if tt.startErr != "" {
				wantCode(t, err, tt.startErr)
			} else {
				if err != nil {
					t.Fatalf("RunStreamResumable: %v", err)
				}
				got := collectResumable(st)
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("items = %#v, want %#v", got, tt.want)
				}
				if tt.errCode == "" {
					if err := st.Err(); err != nil {
						t.Errorf("Err = %v", err)
					}
				} else if e := wantCode(t, st.Err(), tt.errCode); !strings.Contains(e.Message, tt.errHas) {
					t.Errorf("Err = %v; want it to say %q", e, tt.errHas)
				}
				if st.Next() {
					t.Error("Next after the end = true")
				}
			}
			reqs := srv.requests()
			for i := range reqs {
				if reqs[i].Accept != "text/event-stream" {
					t.Errorf("request %d: Accept %q", i, reqs[i].Accept)
				}
				reqs[i].Accept = ""
			}
			if !reflect.DeepEqual(reqs, tt.reqs) {
				t.Errorf("requests\n got %+v\nwant %+v", reqs, tt.reqs)
			}
		})
	}
}

func TestResumableStreamAccessors(t *testing.T) {
	srv := newSSEServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
		sse(w, "run%2F1", sseStart+"id: 7\nevent: chunk\ndata: {\"k\": [1.5]}\n\nid: 8\nevent: chunk_error\ndata: {\"message\":\"Chunk serialization failed\"}\n\nid: 9\nevent: done\ndata: {\"invocation_id\":\"inv\"}\n\n", false)
	})
	c := newClient(t, srv.URL, "minimal_stream", nil)
	st, err := c.ResumeRunStream(context.Background(), "run/1", "6")
	if err != nil {
		t.Fatalf("ResumeRunStream: %v", err)
	}
	if r := srv.requests(); len(r) != 1 || r[0].Method != "GET" || r[0].Path != "/api/v1/runs/run%2F1/stream" || r[0].LastEventID != "6" {
		t.Fatalf("requests = %+v", r)
	}
	if st.RunID() != "run/1" || st.LastEventID() != "6" {
		t.Fatalf("RunID %q, LastEventID %q", st.RunID(), st.LastEventID())
	}
	if !st.Next() || st.ChunkErr() != nil || string(st.RawJSON()) != `{"k": [1.5]}` || st.LastEventID() != "7" {
		t.Fatalf("first item: %s, %v, last id %q", st.RawJSON(), st.ChunkErr(), st.LastEventID())
	}
	if st.InvocationID() != "run/1" { // from the start event
		t.Fatalf("InvocationID %q", st.InvocationID())
	}
	var v struct{ K []float64 }
	if err := st.Decode(&v); err != nil || len(v.K) != 1 || v.K[0] != 1.5 {
		t.Fatalf("Decode = %+v, %v", v, err)
	}
	if !st.Next() || !runagent.IsChunkError(st.ChunkErr()) || st.Value() != nil || st.RawJSON() != nil || st.LastEventID() != "8" {
		t.Fatalf("second item: %v, %v", st.Value(), st.ChunkErr())
	}
	if err := st.Decode(&v); !runagent.IsChunkError(err) {
		t.Fatalf("Decode of a chunk error = %v", err)
	}
	if st.Next() || st.Err() != nil || st.InvocationID() != "inv" {
		t.Fatalf("end: %v, invocation %q", st.Err(), st.InvocationID())
	}
	if _, err := c.ResumeRunStream(context.Background(), "", ""); !runagent.IsCode(err, runagent.CodeValidation) {
		t.Fatalf("ResumeRunStream without a run id: %v", err)
	}
	if _, err := c.WithEntrypoint("minimal").RunStreamResumable(context.Background(), runagent.Input{}); !runagent.IsCode(err, runagent.CodeValidation) {
		t.Fatalf("RunStreamResumable of a plain tag: %v", err)
	}
	if _, err := c.StartRun(context.Background(), runagent.Input{}, nil); !runagent.IsCode(err, runagent.CodeValidation) {
		t.Fatalf("StartRun of a streaming tag: %v", err)
	}
	if n := len(srv.requests()); n != 1 {
		t.Fatalf("%d requests; the refused calls made some", n)
	}
}

// A stream waiting for its next event ends at once when its context is
// cancelled or it is closed, and the chunks iterator closes it.
func TestResumableStreamCancel(t *testing.T) {
	srv := newSSEServer(t, func(n int, w http.ResponseWriter, r *http.Request) {
		sse(w, "run%2F1", sseStart+"id: 0\nevent: chunk\ndata: 0\n\n", false)
		<-r.Context().Done()
	})
	c := newClient(t, srv.URL, "minimal_stream", nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.RunStreamResumable(ctx, runagent.Input{})
	if err != nil {
		t.Fatalf("RunStreamResumable: %v", err)
	}
	if !st.Next() {
		t.Fatalf("no first chunk: %v", st.Err())
	}
	cancel()
	if st.Next() {
		t.Fatal("Next after cancel = true")
	}
	if e := wantCode(t, st.Err(), runagent.CodeCancelled); !errors.Is(e, context.Canceled) {
		t.Fatalf("Err = %v", e)
	}

	st, err = c.RunStreamResumable(context.Background(), runagent.Input{})
	if err != nil {
		t.Fatalf("RunStreamResumable: %v", err)
	}
	next := make(chan bool)
	go func() {
		st.Next() // the first chunk
		next <- st.Next()
	}()
	st.Close() // while, or before, Next waits
	if <-next {
		t.Fatal("Next after Close = true")
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	st, err = c.RunStreamResumable(context.Background(), runagent.Input{})
	if err != nil {
		t.Fatalf("RunStreamResumable: %v", err)
	}
	for v, err := range st.Chunks() {
		if err != nil || v != int64(0) {
			t.Fatalf("chunk %v, %v", v, err)
		}
		break
	}
	if st.Next() {
		t.Fatal("Next after the iterator's break = true")
	}
	if n := len(srv.requests()); n != 3 {
		t.Fatalf("%d requests, want 3 (no retry)", n)
	}
}
