package runagent_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

// collect reads a stream to its end: values, per-chunk errors as "ERR:<code>".
func collect(t *testing.T, st *runagent.Stream) []any {
	t.Helper()
	var got []any
	for st.Next() {
		if err := st.ChunkErr(); err != nil {
			got = append(got, "ERR:"+runagent.CodeOf(err))
			continue
		}
		got = append(got, st.Value())
	}
	return got
}

func TestStreamHappyPath(t *testing.T) {
	srv := newWSServer(t, nil, func(_ int, conn *websocket.Conn) {
		send(conn, started())
		send(conn, dataFrame(structured("integer", "1")))
		send(conn, dataFrame(structured("string", `"two"`)))
		send(conn, dataFrame(structured("object", `{"k": [1.5, null]}`)))
		send(conn, completed(3))
		closeNormally(conn)
	})
	c := newClient(t, srv.URL, "minimal_stream", nil)
	st, err := c.RunStream(context.Background(), runagent.Args("x").With("k", 1))
	if err != nil {
		t.Fatalf("RunStream: %v", err)
	}
	defer st.Close()
	got := collect(t, st)
	want := []any{int64(1), "two", map[string]any{"k": []any{1.5, nil}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("chunks = %#v, want %#v", got, want)
	}
	if err := st.Err(); err != nil {
		t.Fatalf("Err = %v", err)
	}
	if st.InvocationID() != "inv-1" {
		t.Fatalf("InvocationID = %q", st.InvocationID())
	}
	if st.Next() {
		t.Fatal("Next after the end = true")
	}
	reqs := srv.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	r := reqs[0]
	if r.RawBody != `{"entrypoint_tag":"minimal_stream","input_args":["x"],"input_kwargs":{"k":1}}` {
		t.Errorf("request frame = %s", r.RawBody)
	}
	if r.Token != "secret-key" || r.Auth != "Bearer secret-key" {
		t.Errorf("token = %q, Authorization = %q", r.Token, r.Auth)
	}
}

func TestStreamEmptyInputAndNoKey(t *testing.T) {
	srv := newWSServer(t, nil, func(_ int, conn *websocket.Conn) {
		send(conn, started())
		send(conn, completed(0))
	})
	c := newClient(t, srv.URL, "minimal_stream", nil, func(cfg *runagent.Config) { cfg.APIKey = "" })
	st, err := c.RunStream(context.Background(), runagent.Input{})
	if err != nil {
		t.Fatal(err)
	}
	if got := collect(t, st); len(got) != 0 || st.Err() != nil {
		t.Fatalf("chunks = %v, err = %v", got, st.Err())
	}
	r := srv.requests()[0]
	if r.RawBody != `{"entrypoint_tag":"minimal_stream","input_args":[],"input_kwargs":{}}` || r.Token != "" || r.Auth != "" {
		t.Fatalf("request = %+v", r)
	}
}

func TestStreamChunksIterator(t *testing.T) {
	srv := newWSServer(t, nil, func(_ int, conn *websocket.Conn) {
		send(conn, started())
		for _, p := range []string{`"a"`, `"b"`, `"c"`} {
			send(conn, dataFrame(structured("string", p)))
		}
		send(conn, completed(3))
	})
	c := newClient(t, srv.URL, "minimal_stream", nil)
	st, err := c.RunStream(context.Background(), runagent.Input{})
	if err != nil {
		t.Fatal(err)
	}
	var got []any
	for v, err := range st.Chunks() {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, v)
	}
	if !reflect.DeepEqual(got, []any{"a", "b", "c"}) {
		t.Fatalf("chunks = %v", got)
	}

	// Breaking out of the loop closes the stream.
	st, err = c.RunStream(context.Background(), runagent.Input{})
	if err != nil {
		t.Fatal(err)
	}
	for range st.Chunks() {
		break
	}
	if st.Next() {
		t.Fatal("Next after break = true")
	}
}

func TestStreamDecode(t *testing.T) {
	srv := newWSServer(t, nil, func(_ int, conn *websocket.Conn) {
		send(conn, started())
		send(conn, dataFrame(structured("object", `{"content": "hi", "index": 2}`)))
		send(conn, completed(1))
	})
	c := newClient(t, srv.URL, "minimal_stream", nil)
	st, err := c.RunStream(context.Background(), runagent.Input{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !st.Next() {
		t.Fatalf("Next = false: %v", st.Err())
	}
	var chunk struct {
		Content string `json:"content"`
		Index   int    `json:"index"`
	}
	if err := st.Decode(&chunk); err != nil || chunk.Content != "hi" || chunk.Index != 2 {
		t.Fatalf("Decode = %+v, %v", chunk, err)
	}
	if string(st.RawJSON()) != `{"content": "hi", "index": 2}` {
		t.Fatalf("RawJSON = %s", st.RawJSON())
	}
}

func TestStreamErrors(t *testing.T) {
	tests := []struct {
		name      string
		script    func(conn *websocket.Conn)
		startCode string // error code from RunStream, "" when it succeeds
		chunks    []any
		endCode   string // Err's code, "" for a completed stream
		message   string
	}{
		{
			name: "agent raised mid-stream",
			script: func(conn *websocket.Conn) {
				send(conn, started())
				send(conn, dataFrame(structured("string", `"a"`)))
				send(conn, `{"type":"error","error":"Streaming error: ValueError: boom"}`)
			},
			chunks: []any{"a"}, endCode: runagent.CodeInternal, message: "ValueError: boom",
		},
		{
			name: "unknown tag before start",
			script: func(conn *websocket.Conn) {
				send(conn, `{"type":"error","detail":"Entrypoint minimal_stream not found"}`)
				_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseUnsupportedData, ""), time.Now().Add(time.Second))
			},
			startCode: runagent.CodeNotFound, message: "not found",
		},
		{
			name: "bad request before start",
			script: func(conn *websocket.Conn) {
				send(conn, `{"type":"error","detail":"Invalid JSON"}`)
			},
			startCode: runagent.CodeValidation, message: "Invalid JSON",
		},
		{
			name: "error frame with a code",
			script: func(conn *websocket.Conn) {
				send(conn, started())
				send(conn, dataFrame(structured("string", `"a"`)))
				send(conn, `{"type":"error","error":"agent process exited","code":"AGENT_CRASHED"}`)
			},
			chunks: []any{"a"}, endCode: runagent.CodeAgentCrashed, message: "exited",
		},
		{
			name: "chunk serialization failure does not end the stream",
			script: func(conn *websocket.Conn) {
				send(conn, started())
				send(conn, dataFrame(structured("integer", "1")))
				send(conn, `{"type":"error","error":"Chunk serialization failed: cannot encode Foo"}`)
				send(conn, dataFrame(structured("integer", "3")))
				send(conn, completed(3))
			},
			chunks: []any{int64(1), "ERR:INTERNAL_ERROR", int64(3)},
		},
		{
			name: "undecodable chunk does not end the stream",
			script: func(conn *websocket.Conn) {
				send(conn, started())
				send(conn, `{"type":"data","content":"not structured"}`)
				send(conn, dataFrame(structured("integer", "2")))
				send(conn, completed(2))
			},
			chunks: []any{"ERR:INTERNAL_ERROR", int64(2)},
		},
		{
			name: "normal close before completion",
			script: func(conn *websocket.Conn) {
				send(conn, started())
				send(conn, dataFrame(structured("string", `"a"`)))
				closeNormally(conn)
			},
			chunks: []any{"a"}, endCode: runagent.CodeConnection, message: "stream closed before completion",
		},
		{
			name: "connection dropped before completion",
			script: func(conn *websocket.Conn) {
				send(conn, started())
				send(conn, dataFrame(structured("string", `"a"`)))
				conn.UnderlyingConn().Close()
			},
			chunks: []any{"a"}, endCode: runagent.CodeConnection, message: "stream closed before completion",
		},
		{
			name: "malformed frame",
			script: func(conn *websocket.Conn) {
				send(conn, started())
				send(conn, `{"type":`)
			},
			endCode: runagent.CodeInternal, message: "malformed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newWSServer(t, nil, func(_ int, conn *websocket.Conn) { tt.script(conn) })
			clk := newFakeClock()
			c := newClient(t, srv.URL, "minimal_stream", clk)
			st, err := c.RunStream(context.Background(), runagent.Input{})
			if tt.startCode != "" {
				e := wantCode(t, err, tt.startCode)
				if !strings.Contains(e.Message, tt.message) {
					t.Errorf("Message = %q, want it to contain %q", e.Message, tt.message)
				}
				if n := srv.hits.Load(); n != 1 {
					t.Errorf("%d connections, want 1", n)
				}
				return
			}
			if err != nil {
				t.Fatalf("RunStream: %v", err)
			}
			defer st.Close()
			got := collect(t, st)
			if !reflect.DeepEqual(got, tt.chunks) && !(len(got) == 0 && len(tt.chunks) == 0) {
				t.Errorf("chunks = %#v, want %#v", got, tt.chunks)
			}
			if tt.endCode == "" {
				if err := st.Err(); err != nil {
					t.Fatalf("Err = %v", err)
				}
			} else {
				e := wantCode(t, st.Err(), tt.endCode)
				if !strings.Contains(e.Message, tt.message) {
					t.Errorf("Message = %q, want it to contain %q", e.Message, tt.message)
				}
			}
			if n := srv.hits.Load(); n != 1 {
				t.Errorf("%d connections, want 1 (no retry after data)", n)
			}
		})
	}
}

func TestStreamChunkErrorAccessors(t *testing.T) {
	srv := newWSServer(t, nil, func(_ int, conn *websocket.Conn) {
		send(conn, started())
		send(conn, `{"type":"error","error":"Chunk serialization failed: x"}`)
		send(conn, completed(1))
	})
	c := newClient(t, srv.URL, "minimal_stream", nil)
	st, err := c.RunStream(context.Background(), runagent.Input{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !st.Next() {
		t.Fatal("Next = false")
	}
	if !runagent.IsChunkError(st.ChunkErr()) || st.Value() != nil || st.RawJSON() != nil {
		t.Fatalf("ChunkErr = %v, Value = %v", st.ChunkErr(), st.Value())
	}
	var v any
	if err := st.Decode(&v); !runagent.IsChunkError(err) {
		t.Fatalf("Decode = %v", err)
	}
	var chunkErrs int
	st2, err := c.RunStream(context.Background(), runagent.Input{})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range st2.Chunks() {
		if runagent.IsChunkError(err) {
			chunkErrs++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if chunkErrs != 1 {
		t.Fatalf("Chunks yielded %d chunk errors", chunkErrs)
	}
}

func TestStreamRetries(t *testing.T) {
	full := func(conn *websocket.Conn) {
		send(conn, started())
		send(conn, dataFrame(structured("string", `"a"`)))
		send(conn, completed(1))
	}
	tests := []struct {
		name   string
		pre    func(attempt int, w http.ResponseWriter) bool
		script func(attempt int, conn *websocket.Conn)
		hits   int32
		chunks []any
		code   string // error code from RunStream or Err
		sleeps int
	}{
		{
			name: "closed after start, before the first data: retried",
			script: func(a int, conn *websocket.Conn) {
				if a == 1 {
					send(conn, started())
					conn.UnderlyingConn().Close()
					return
				}
				full(conn)
			},
			hits: 2, chunks: []any{"a"}, sleeps: 1,
		},
		{
			name: "closed before start: retried",
			script: func(a int, conn *websocket.Conn) {
				if a <= 2 {
					closeNormally(conn)
					return
				}
				full(conn)
			},
			hits: 3, chunks: []any{"a"}, sleeps: 2,
		},
		{
			name: "handshake 503 then success",
			pre: func(a int, w http.ResponseWriter) bool {
				if a == 1 {
					w.Header().Set("Retry-After", "1")
					writeJSON(w, 503, errEnvelope("OVERLOADED", "busy"))
					return true
				}
				return false
			},
			script: func(_ int, conn *websocket.Conn) { full(conn) },
			hits:   2, chunks: []any{"a"}, sleeps: 1,
		},
		{
			name: "rate limit error frame (code) before data: retried",
			script: func(a int, conn *websocket.Conn) {
				if a == 1 {
					send(conn, `{"type":"error","error":"slow down","code":"RATE_LIMIT_EXCEEDED"}`)
					return
				}
				full(conn)
			},
			hits: 2, chunks: []any{"a"}, sleeps: 1,
		},
		{
			name: "handshake 401: not retried",
			pre: func(_ int, w http.ResponseWriter) bool {
				writeJSON(w, 401, errEnvelope("AUTHENTICATION_ERROR", "bad key"))
				return true
			},
			hits: 1, code: runagent.CodeAuthentication,
		},
		{
			name: "closed after data: not retried",
			script: func(_ int, conn *websocket.Conn) {
				send(conn, started())
				send(conn, dataFrame(structured("string", `"a"`)))
				conn.UnderlyingConn().Close()
			},
			hits: 1, chunks: []any{"a"}, code: runagent.CodeConnection,
		},
		{
			name: "always closed: attempts exhausted",
			script: func(_ int, conn *websocket.Conn) {
				conn.UnderlyingConn().Close()
			},
			hits: 4, code: runagent.CodeConnection, sleeps: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			script := tt.script
			if script == nil {
				script = func(int, *websocket.Conn) {}
			}
			srv := newWSServer(t, tt.pre, script)
			clk := newFakeClock()
			c := newClient(t, srv.URL, "minimal_stream", clk)
			st, err := c.RunStream(context.Background(), runagent.Input{})
			var got []any
			if err == nil {
				got = collect(t, st)
				err = st.Err()
				st.Close()
			}
			if tt.code == "" && err != nil {
				t.Fatalf("stream failed: %v", err)
			}
			if tt.code != "" {
				wantCode(t, err, tt.code)
			}
			if !reflect.DeepEqual(got, tt.chunks) {
				t.Errorf("chunks = %#v, want %#v", got, tt.chunks)
			}
			if n := srv.hits.Load(); n != tt.hits {
				t.Errorf("%d connections, want %d", n, tt.hits)
			}
			if n := len(clk.Sleeps()); n != tt.sleeps {
				t.Errorf("%d waits, want %d", n, tt.sleeps)
			}
			if strings.HasPrefix(tt.name, "handshake 503") && clk.Sleeps()[0] < time.Second {
				t.Errorf("wait %v shorter than Retry-After", clk.Sleeps()[0])
			}
		})
	}
}

func TestStreamConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	clk := newFakeClock()
	c := newClient(t, "http://"+addr, "minimal_stream", clk)
	_, err = c.RunStream(context.Background(), runagent.Input{})
	wantCode(t, err, runagent.CodeConnection)
	if n := len(clk.Sleeps()); n != 3 {
		t.Fatalf("%d waits, want 3", n)
	}
}

// TestStreamCancel checks that cancelling the context, or calling Close,
// mid-stream closes the socket promptly and the server sees it.
func TestStreamCancel(t *testing.T) {
	for _, viaClose := range []bool{false, true} {
		name := "context"
		if viaClose {
			name = "Close"
		}
		t.Run(name, func(t *testing.T) {
			serverSaw := make(chan error, 1)
			srv := newWSServer(t, nil, func(_ int, conn *websocket.Conn) {
				send(conn, started())
				send(conn, dataFrame(structured("string", `"first"`)))
				// Block like a slow generator until the client goes away.
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, _, err := conn.ReadMessage()
				serverSaw <- err
			})
			c := newClient(t, srv.URL, "minimal_stream", nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := c.RunStream(ctx, runagent.Input{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if !st.Next() || st.Value() != "first" {
				t.Fatalf("first chunk: %v %v", st.Value(), st.Err())
			}
			start := time.Now()
			nextDone := make(chan bool, 1)
			go func() { nextDone <- st.Next() }()
			time.Sleep(50 * time.Millisecond)
			if viaClose {
				st.Close()
			} else {
				cancel()
			}
			select {
			case more := <-nextDone:
				if more {
					t.Fatal("Next after cancel = true")
				}
			case <-time.After(3 * time.Second):
				t.Fatal("Next did not return after cancel")
			}
			if viaClose {
				wantCode(t, st.Err(), runagent.CodeCancelled)
			} else {
				wantCode(t, st.Err(), runagent.CodeCancelled)
				if !errors.Is(st.Err(), context.Canceled) {
					t.Fatalf("errors.Is(Err, context.Canceled) = false: %v", st.Err())
				}
			}
			select {
			case err := <-serverSaw:
				var ce *websocket.CloseError
				if !errors.As(err, &ce) {
					t.Logf("server read error: %v (no close frame)", err)
				}
				if d := time.Since(start); d > 3*time.Second {
					t.Fatalf("server saw the close after %v", d)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("server did not see the client go away")
			}
		})
	}
}

func TestStreamContextAlreadyDone(t *testing.T) {
	srv := newWSServer(t, nil, func(_ int, conn *websocket.Conn) {})
	c := newClient(t, srv.URL, "minimal_stream", nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.RunStream(ctx, runagent.Input{})
	wantCode(t, err, runagent.CodeCancelled)
}
