package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	neturl "net/url"
	"time"

	"github.com/gorilla/websocket"
)

// StreamRequest is the first text frame of /run-stream.
func StreamRequest(tag string, kwargs map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"entrypoint_tag": tag, "input_args": []any{}, "input_kwargs": kwargs})
	return b
}

// StreamResult is one stream as the client saw it.
type StreamResult struct {
	Chunks      int           // data frames received
	TotalChunks int           // total_chunks of stream_completed (-1 if none came)
	Elapsed     time.Duration // request frame sent -> stream_completed received
	FirstChunk  time.Duration // request frame sent -> first data frame received
	FirstData   []byte        // the first data frame, as sent
	Err         error
}

// Completed is true when the stream ended with stream_completed and the
// number of data frames matched its total_chunks.
func (r StreamResult) Completed() bool {
	return r.Err == nil && r.TotalChunks >= 0 && r.TotalChunks == r.Chunks
}

var dataMarker = []byte(`"type":"data"`)

type frame struct {
	Type        string `json:"type"`
	Status      string `json:"status"`
	TotalChunks *int   `json:"total_chunks"`
	Error       any    `json:"error"`
	Detail      any    `json:"detail"`
}

// Stream opens ws://addr/api/v1/agents/{agentID}/run-stream, sends req and
// reads frames until stream_completed, an error frame, or the timeout (which
// bounds the whole stream, dial included). A token ("" for none) goes in the
// query as ?token=, the way the official SDKs send it.
func Stream(ctx context.Context, addr, agentID, token string, req []byte, timeout time.Duration) (res StreamResult) {
	res.TotalChunks = -1
	if err := CheckLoopback(addr); err != nil {
		res.Err = err
		return res
	}
	deadline := time.Now().Add(timeout)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	d := websocket.Dialer{
		HandshakeTimeout: timeout,
		ReadBufferSize:   64 << 10,
		WriteBufferSize:  4 << 10,
		NetDialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			if err := CheckLoopback(a); err != nil {
				return nil, err
			}
			var nd net.Dialer
			return nd.DialContext(ctx, network, a)
		},
	}
	url := fmt.Sprintf("ws://%s/api/v1/agents/%s/run-stream", addr, agentID)
	if token != "" {
		url += "?token=" + neturl.QueryEscape(token)
	}
	conn, _, err := d.DialContext(dctx, url, nil)
	if err != nil {
		res.Err = fmt.Errorf("dial: %w", err)
		return res
	}
	defer conn.Close()
	conn.SetReadLimit(64 << 20)
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // Ctrl+C unblocks the read
	defer stop()
	conn.SetWriteDeadline(deadline)
	conn.SetReadDeadline(deadline)

	t0 := time.Now()
	if err := conn.WriteMessage(websocket.TextMessage, req); err != nil {
		res.Err = fmt.Errorf("send request: %w", err)
		return res
	}
	var buf bytes.Buffer
	buf.Grow(4 << 10)
	for {
		_, r, err := conn.NextReader()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			res.Err = fmt.Errorf("after %d chunks: %w", res.Chunks, err)
			return res
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil && !errors.Is(err, io.EOF) {
			res.Err = fmt.Errorf("after %d chunks: %w", res.Chunks, err)
			return res
		}
		msg := buf.Bytes()
		if bytes.Contains(msg, dataMarker) {
			// Inside "content" every quote is escaped, so an unescaped
			// "type":"data" can only be the frame's own type.
			if res.Chunks == 0 {
				res.FirstChunk = time.Since(t0)
				res.FirstData = bytes.Clone(msg)
			}
			res.Chunks++
			continue
		}
		var f frame
		if err := json.Unmarshal(msg, &f); err != nil {
			res.Err = fmt.Errorf("bad frame %q: %w", clip(msg), err)
			return res
		}
		switch {
		case f.Type == "data":
			if res.Chunks == 0 {
				res.FirstChunk = time.Since(t0)
				res.FirstData = bytes.Clone(msg)
			}
			res.Chunks++
		case f.Type == "status" && f.Status == "stream_started":
		case f.Type == "status" && f.Status == "stream_completed":
			res.Elapsed = time.Since(t0)
			if f.TotalChunks != nil {
				res.TotalChunks = *f.TotalChunks
			}
			if res.TotalChunks != res.Chunks {
				res.Err = fmt.Errorf("stream_completed says %d chunks, received %d", res.TotalChunks, res.Chunks)
			}
			return res
		case f.Type == "error":
			res.Err = fmt.Errorf("error frame after %d chunks: %s", res.Chunks, clip(msg))
			return res
		default:
			res.Err = fmt.Errorf("unexpected frame %s", clip(msg))
			return res
		}
	}
}

func clip(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}
