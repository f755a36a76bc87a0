package runagent

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// envelope is the body of the enveloped REST routes:
// {"success","data","message","error","timestamp","request_id"}. FastAPI's
// own errors ({"detail": ...}) are read too. Fields are raw so that an
// unexpected type in one of them does not hide the others.
type envelope struct {
	Success   *bool           `json:"success"`
	Data      json.RawMessage `json:"data"`
	Message   json.RawMessage `json:"message"`
	Error     json.RawMessage `json:"error"`
	Detail    json.RawMessage `json:"detail"`
	RequestID json.RawMessage `json:"request_id"`
}

// errorDetail is envelope.error when it is an object.
type errorDetail struct {
	Code    json.RawMessage `json:"code"`
	Message json.RawMessage `json:"message"`
	Details json.RawMessage `json:"details"`
	Field   json.RawMessage `json:"field"`
}

// parseEnvelope parses the response of an enveloped route and returns its
// "data" (raw JSON) on success. A 2xx with success:false, and any non-2xx,
// give an *Error built from the envelope; a 2xx that is not an envelope
// gives INTERNAL_ERROR wrapping ErrMalformed.
func parseEnvelope(status int, h http.Header, body []byte) (json.RawMessage, *Error) {
	if status < 200 || status > 299 {
		return nil, httpError(status, h, body)
	}
	// The success path reads only what it needs.
	var ok struct {
		Success *bool           `json:"success"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &ok); err != nil || ok.Success == nil {
		msg := "malformed response: not a RunAgent envelope"
		if err != nil {
			msg += ": " + err.Error()
		}
		return nil, malformed(msg, status)
	}
	if *ok.Success {
		return ok.Data, nil
	}
	var env envelope
	_ = json.Unmarshal(body, &env) // valid JSON object: read above
	e := envelopeError(&env)
	e.Status = status
	if e.Code == "" {
		e.Code = CodeInternal
	}
	if e.Message == "" {
		e.Message = "agent execution failed"
	}
	return nil, e
}

// httpError builds the error for a non-2xx response, from its envelope when
// it has one, else from the status.
func httpError(status int, h http.Header, body []byte) *Error {
	var e *Error
	var env envelope
	if json.Unmarshal(body, &env) == nil && (env.Success != nil || env.Error != nil || env.Detail != nil) {
		e = envelopeError(&env)
	} else {
		e = &Error{Message: statusMessage(status, body)}
	}
	e.Status = status
	if e.Code == "" {
		e.Code = codeForStatus(status)
	}
	if e.Message == "" {
		e.Message = statusMessage(status, nil)
	}
	if h != nil {
		e.RetryAfter = parseRetryAfter(h.Get("Retry-After"), time.Now())
	}
	e.retryable = retryableStatus(status)
	return e
}

// envelopeError reads error, detail, message and request_id of an envelope.
func envelopeError(env *envelope) *Error {
	e := &Error{}
	e.RequestID, _ = rawString(env.RequestID)
	if s, ok := rawString(env.Error); ok {
		e.Message = s
	} else if isObject(env.Error) {
		var d errorDetail
		if json.Unmarshal(env.Error, &d) == nil {
			e.Code, _ = rawString(d.Code)
			e.Message, _ = rawString(d.Message)
			e.Field, _ = rawString(d.Field)
			e.Details = rawAny(d.Details)
		}
	}
	if env.Detail != nil && string(env.Detail) != "null" {
		if s, ok := rawString(env.Detail); ok {
			if e.Message == "" {
				e.Message = s
			}
		} else {
			// FastAPI validation errors: [{"loc": [...], "msg": "...", "type": "..."}].
			var items []struct {
				Msg json.RawMessage `json:"msg"`
				Loc []any           `json:"loc"`
			}
			if e.Message == "" && json.Unmarshal(env.Detail, &items) == nil {
				var msgs []string
				for _, it := range items {
					if m, ok := rawString(it.Msg); ok {
						if len(it.Loc) > 0 {
							b, _ := json.Marshal(it.Loc)
							m = string(b) + ": " + m
						}
						msgs = append(msgs, m)
					}
				}
				e.Message = strings.Join(msgs, "; ")
			}
			if e.Details == nil {
				e.Details = rawAny(env.Detail)
			}
		}
	}
	if e.Message == "" {
		e.Message, _ = rawString(env.Message)
	}
	return e
}

// statusMessage describes a status, with a short printable body excerpt.
func statusMessage(status int, body []byte) string {
	msg := http.StatusText(status)
	if msg == "" {
		msg = "unexpected HTTP status"
	}
	body = bytes.TrimSpace(body)
	if len(body) > 0 && len(body) <= 512 && utf8.Valid(body) && !bytes.ContainsAny(body, "<\x00") {
		msg += ": " + string(body)
	}
	return msg
}

// rawString returns raw as a string when it is a JSON string.
func rawString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

func isObject(raw json.RawMessage) bool { return len(raw) > 0 && raw[0] == '{' }

// rawAny decodes raw as generic JSON; nil for null, absent or invalid.
func rawAny(raw json.RawMessage) any {
	if len(raw) == 0 {
		return nil
	}
	v, e := decodeJSON(raw)
	if e != nil {
		return nil
	}
	return v
}
