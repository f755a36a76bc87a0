// Package runproto is the runner protocol (docs/runner-protocol.md): the
// frames between the Go host and the Python runner of an agent instance and
// their bodies. It imports nothing of the project: internal/runner (the
// host's connection) and the sandbox drivers that speak to a runner
// themselves (microvm) share it.
package runproto

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Kind is a frame kind of the runner protocol.
type Kind byte

// Frame kinds, host → runner.
const (
	KindInit   Kind = 1
	KindCall   Kind = 2
	KindCancel Kind = 3
	KindPing   Kind = 4
	// KindResume: the instance was restored from a snapshot taken after
	// READY (the microvm sandbox); the runner reseeds its random state.
	KindResume Kind = 5
	// KindCredit lets a stream send more: JSON {"chunks": N, "bytes": M},
	// what the host took of it since the last CREDIT (see Flow).
	KindCredit Kind = 6
)

// Frame kinds, runner → host.
const (
	KindReady      Kind = 10
	KindResult     Kind = 11
	KindChunk      Kind = 12
	KindEnd        Kind = 13
	KindError      Kind = 14
	KindChunkError Kind = 15
	KindLog        Kind = 16
	KindPong       Kind = 17
)

func (k Kind) String() string {
	switch k {
	case KindInit:
		return "INIT"
	case KindCall:
		return "CALL"
	case KindCancel:
		return "CANCEL"
	case KindPing:
		return "PING"
	case KindResume:
		return "RESUME"
	case KindCredit:
		return "CREDIT"
	case KindReady:
		return "READY"
	case KindResult:
		return "RESULT"
	case KindChunk:
		return "CHUNK"
	case KindEnd:
		return "END"
	case KindError:
		return "ERROR"
	case KindChunkError:
		return "CHUNK_ERROR"
	case KindLog:
		return "LOG"
	case KindPong:
		return "PONG"
	}
	return fmt.Sprintf("Kind(%d)", byte(k))
}

// Final reports whether a frame of this kind ends its call.
func (k Kind) Final() bool {
	return k == KindResult || k == KindEnd || k == KindError || k == KindPong
}

const (
	// HeaderSize is a frame's header: length, kind, call.
	HeaderSize = 9
	// MaxFrame bounds one frame; a larger length is a protocol error.
	// A Conn bounds its frames far lower (Flow.maxFrame).
	MaxFrame = 256 << 20
)

// Frame is one protocol frame.
type Frame struct {
	Kind Kind
	Call uint32
	Body []byte
}

// AppendHeader appends the 9-byte header of a frame with a body of n bytes.
func AppendHeader(b []byte, kind Kind, call uint32, n int) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(n+5))
	b = append(b, byte(kind))
	return binary.BigEndian.AppendUint32(b, call)
}

// AppendFrame appends a whole frame.
func AppendFrame(b []byte, kind Kind, call uint32, body []byte) []byte {
	return append(AppendHeader(b, kind, call, len(body)), body...)
}

// BodyLen is the body length a header announces (-5 and less: malformed).
func BodyLen(hdr []byte) int { return int(binary.BigEndian.Uint32(hdr[:4])) - 5 }

// ReadFrame reads one frame whose body is at most max bytes (checked before
// anything is allocated). The body is freshly allocated: it may be handed to
// another goroutine.
func ReadFrame(r io.Reader, max int) (Frame, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n < 5 || n > MaxFrame {
		return Frame{}, fmt.Errorf("runner protocol: bad frame length %d", n)
	}
	if int(n-5) > max {
		return Frame{}, &ProtocolError{fmt.Sprintf("a %s frame of %d bytes, more than the limit of %d", Kind(hdr[4]), n-5, max)}
	}
	f := Frame{Kind: Kind(hdr[4]), Call: binary.BigEndian.Uint32(hdr[5:9])}
	if n > 5 {
		f.Body = make([]byte, n-5)
		if _, err := io.ReadFull(r, f.Body); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}
