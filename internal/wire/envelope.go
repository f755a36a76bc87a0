package wire

import (
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// Envelope is the response body of every REST route that the original wraps:
// {"success","data","message","error","timestamp","request_id"}.
type Envelope struct {
	Success bool
	// Data is the already encoded JSON value of "data"; nil means null.
	Data []byte
	// Message is "message"; empty means null.
	Message string
	// Error is "error"; nil means null.
	Error     *domain.Error
	Timestamp time.Time
	RequestID string
}

// MessageRunOK is the message of a successful /run.
const MessageRunOK = "Agent execution completed successfully"

// AppendEnvelope appends env as compact JSON, the way FastAPI renders it.
func AppendEnvelope(b []byte, env *Envelope) []byte {
	if env.Success {
		b = append(b, `{"success":true,"data":`...)
	} else {
		b = append(b, `{"success":false,"data":`...)
	}
	if env.Data == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, env.Data...)
	}
	b = append(b, `,"message":`...)
	if env.Message == "" {
		b = append(b, "null"...)
	} else {
		b = AppendString(b, env.Message)
	}
	b = append(b, `,"error":`...)
	if env.Error == nil {
		b = append(b, "null"...)
	} else {
		b = AppendErrorDetail(b, env.Error)
	}
	b = append(b, `,"timestamp":"`...)
	b = AppendTimestamp(b, env.Timestamp)
	b = append(b, `","request_id":`...)
	b = AppendString(b, env.RequestID)
	return append(b, '}')
}

// AppendErrorDetail appends {"code","message","details":null,"field"}.
func AppendErrorDetail(b []byte, e *domain.Error) []byte {
	b = append(b, `{"code":`...)
	b = AppendString(b, string(e.Code))
	b = append(b, `,"message":`...)
	b = AppendString(b, e.Message)
	b = append(b, `,"details":null,"field":`...)
	if e.Field == "" {
		b = append(b, "null"...)
	} else {
		b = AppendString(b, e.Field)
	}
	return append(b, '}')
}
