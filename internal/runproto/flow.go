package runproto

import (
	"strconv"
)

// Flow bounds the data a runner sends. It goes to the runner in INIT, which
// keeps to it (a result or chunk over its limit becomes a RESOURCE_LIMIT
// error of that call), and the host enforces it: a runner that breaks it
// (only agent code tampering with the runner can) has its connection cut.
//
// A stream may have at most WindowChunks chunks and WindowBytes bytes (plus
// the one chunk that crossed it) sent and not yet taken by the host's
// consumer; past that the runner does not resume the generator until the
// host credits what it took (a CREDIT frame). So a slow consumer costs a
// window of memory on each side and holds nothing but its own call: the
// Conn's reader never waits for it.
type Flow struct {
	MaxResult    int `json:"max_result"`    // bytes of one RESULT body
	MaxChunk     int `json:"max_chunk"`     // bytes of one CHUNK body
	WindowChunks int `json:"window_chunks"` // a stream's chunks in flight
	WindowBytes  int `json:"window_bytes"`  // a stream's bytes in flight
}

// Defaults of Flow's fields left zero.
const (
	DefaultMaxResult    = 16 << 20
	DefaultMaxChunk     = 4 << 20
	DefaultWindowChunks = 256
	DefaultWindowBytes  = 1 << 20
	// MaxControlFrame bounds the other frames: LOGs (the runner splits
	// prints at 64 Ki characters), ERRORs (message and traceback cut at
	// 64 Ki characters each), READY. JSON escapes can make a character 12
	// bytes.
	MaxControlFrame = 2 << 20
)

// WithDefaults fills the fields left zero.
func (f Flow) WithDefaults() Flow {
	if f.MaxResult <= 0 {
		f.MaxResult = DefaultMaxResult
	}
	if f.MaxChunk <= 0 {
		f.MaxChunk = DefaultMaxChunk
	}
	if f.WindowChunks <= 0 {
		f.WindowChunks = DefaultWindowChunks
	}
	if f.WindowBytes <= 0 {
		f.WindowBytes = DefaultWindowBytes
	}
	return f
}

// MaxFrame is the largest frame body a host reads from a runner told f.
func (f Flow) MaxFrame() int { return max(f.MaxResult, f.MaxChunk, MaxControlFrame) }

// ProtocolError is a runner that broke the protocol: its connection is cut.
type ProtocolError struct{ What string }

func (e *ProtocolError) Error() string { return "runner protocol: " + e.What }

// AppendCredit appends the body of a CREDIT frame.
func AppendCredit(b []byte, chunks, bytes int) []byte {
	b = append(b, `{"chunks":`...)
	b = strconv.AppendInt(b, int64(chunks), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, int64(bytes), 10)
	return append(b, '}')
}
