package runagent

import (
	"bytes"
	"io"
	"sync"
	"sync/atomic"
)

// Buffers for request and response bodies, reused across calls.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBuf is the largest buffer capacity put back into the pool.
const maxPooledBuf = 1 << 20

func getBuf() *bytes.Buffer {
	b := bufPool.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

func putBuf(b *bytes.Buffer) {
	if b.Cap() <= maxPooledBuf {
		bufPool.Put(b)
	}
}

// sharedBody is a pooled request body that several attempts (and the
// transport's own rewinds) read. The buffer goes back to the pool once the
// call and every reader have released it, so the transport can never read a
// buffer that another call reuses.
type sharedBody struct {
	buf  *bytes.Buffer
	refs atomic.Int32
}

func newSharedBody(buf *bytes.Buffer) *sharedBody {
	s := &sharedBody{buf: buf}
	s.refs.Store(1)
	return s
}

// release drops the call's reference.
func (s *sharedBody) release() {
	if s.refs.Add(-1) == 0 {
		putBuf(s.buf)
		s.buf = nil
	}
}

func (s *sharedBody) len() int64 { return int64(s.buf.Len()) }

// open returns a new reader over the body, holding a reference until Close.
func (s *sharedBody) open() io.ReadCloser {
	s.refs.Add(1)
	return &bodyReader{s: s, rest: s.buf.Bytes()}
}

type bodyReader struct {
	mu     sync.Mutex
	s      *sharedBody
	rest   []byte
	closed bool
}

func (r *bodyReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || len(r.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

func (r *bodyReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		r.rest = nil
		r.s.release()
	}
	return nil
}
