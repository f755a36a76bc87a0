package runagent

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"strconv"
	"strings"
)

// DecodeStructured decodes a RunAgent "structured string", the encoding of
// every /run result and every stream chunk: a JSON object
// {"type": T, "payload": "<the value encoded as JSON>"}, JSON inside JSON.
// It decodes the outer object, then the payload.
//
// JSON values become Go values as with encoding/json, except numbers, which
// keep the Python type they came from:
//
//	null               nil
//	true, false        bool
//	integer literal    int64, or *big.Int when it does not fit in an int64
//	other number       float64 (a bare Infinity or -Infinity gives ±Inf)
//	string             string
//	array              []any
//	object             map[string]any
//
// The type tag T is informative and not checked against the payload. A bare
// NaN in the payload (not valid JSON, but what Python's json.dumps prints)
// decodes as nil, as the server's serializer would have encoded it. Errors
// are *Error with code INTERNAL_ERROR wrapping ErrMalformed.
func DecodeStructured(s string) (any, error) {
	payload, e := structuredPayload([]byte(s))
	if e != nil {
		return nil, e
	}
	v, e := decodeJSON(payload)
	if e != nil {
		return nil, e
	}
	return v, nil
}

// DecodeStructuredInto decodes a structured string like DecodeStructured, but
// unmarshals the payload into v with encoding/json. A payload that does not
// fit v gives encoding/json's error, wrapped.
func DecodeStructuredInto(s string, v any) error {
	payload, e := structuredPayload([]byte(s))
	if e != nil {
		return e
	}
	return errOrNil(unmarshalInto(payload, v))
}

// structuredOuter is the outer object of a structured string.
type structuredOuter struct {
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

// structuredPayload returns the payload of a structured string as valid JSON
// text.
func structuredPayload(s []byte) ([]byte, *Error) {
	var o structuredOuter
	if err := json.Unmarshal(s, &o); err != nil {
		return nil, &Error{Code: CodeInternal, Message: "malformed structured value: " + err.Error(), Err: ErrMalformed}
	}
	if o.Type == "" && o.Payload == nil {
		return nil, malformed(`malformed structured value: no "type" or "payload"`, 0)
	}
	p := o.Payload
	switch {
	case len(p) == 0 || string(p) == "null":
		return []byte("null"), nil
	case p[0] == '"':
		var inner string
		if err := json.Unmarshal(p, &inner); err != nil {
			return nil, &Error{Code: CodeInternal, Message: "malformed structured value: " + err.Error(), Err: ErrMalformed}
		}
		b := []byte(inner)
		if json.Valid(b) {
			return b, nil
		}
		if fixed, ok := replaceNonFinite(b); ok && json.Valid(fixed) {
			return fixed, nil
		}
		if o.Type == "string" {
			// A string payload that was not JSON-encoded: the text itself.
			return p, nil
		}
		return nil, malformed("malformed structured value: payload is not JSON", 0)
	default:
		// Not a string: accept an already decoded payload.
		return p, nil
	}
}

// decodeData decodes the "data" of a /run envelope or the "content" of a
// stream data frame: normally a JSON string holding a structured string;
// leniently also a structured object, null, or a plain JSON value.
func decodeData(raw []byte) (any, *Error) {
	p, e := dataPayload(raw)
	if e != nil {
		return nil, e
	}
	return decodeJSON(p)
}

// dataPayload returns the payload JSON text of a data value (see decodeData).
func dataPayload(raw []byte) ([]byte, *Error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return []byte("null"), nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, &Error{Code: CodeInternal, Message: "malformed data: " + err.Error(), Err: ErrMalformed}
		}
		return structuredPayload([]byte(s))
	case '{':
		var o structuredOuter
		if json.Unmarshal(raw, &o) == nil && o.Type != "" && o.Payload != nil {
			return structuredPayload(raw)
		}
	}
	if !json.Valid(raw) {
		return nil, malformed("malformed data: not JSON", 0)
	}
	return raw, nil
}

// decodeJSON decodes valid JSON text into generic Go values (see
// DecodeStructured for the mapping).
func decodeJSON(b []byte) (any, *Error) {
	// Fast paths for scalars, the most common results and chunks.
	if t := bytes.TrimSpace(b); len(t) > 0 {
		switch c := t[0]; {
		case c == '"':
			var s string
			if json.Unmarshal(t, &s) == nil {
				return s, nil
			}
		case c == 'n' && string(t) == "null":
			return nil, nil
		case c == 't' && string(t) == "true":
			return true, nil
		case c == 'f' && string(t) == "false":
			return false, nil
		case c == '-' || c >= '0' && c <= '9':
			if json.Valid(t) {
				return number(string(t)), nil
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, &Error{Code: CodeInternal, Message: "malformed JSON value: " + err.Error(), Err: ErrMalformed}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, malformed("malformed JSON value: data after the value", 0)
	}
	return convertNumbers(v), nil
}

// unmarshalInto unmarshals valid JSON text into v.
func unmarshalInto(b []byte, v any) *Error {
	if err := json.Unmarshal(b, v); err != nil {
		var ute *json.UnmarshalTypeError
		var iue *json.InvalidUnmarshalError
		if errors.As(err, &ute) || errors.As(err, &iue) {
			return &Error{Code: CodeValidation, Message: "cannot decode result into the given value: " + err.Error(), Err: err}
		}
		return &Error{Code: CodeInternal, Message: "malformed JSON value: " + err.Error(), Err: errors.Join(ErrMalformed, err)}
	}
	return nil
}

// convertNumbers replaces json.Number values, in place, by int64, *big.Int
// or float64.
func convertNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		return number(string(x))
	case []any:
		for i, e := range x {
			x[i] = convertNumbers(e)
		}
	case map[string]any:
		for k, e := range x {
			switch e.(type) {
			case json.Number, []any, map[string]any:
				x[k] = convertNumbers(e)
			}
		}
	}
	return v
}

func number(s string) any {
	if !strings.ContainsAny(s, ".eE") {
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return i
		}
		if b, ok := new(big.Int).SetString(s, 10); ok {
			return b
		}
	}
	f, _ := strconv.ParseFloat(s, 64) // overflow gives ±Inf, which is meant
	return f
}

// replaceNonFinite rewrites the bare tokens NaN, Infinity and -Infinity
// outside strings (Python's json.dumps extensions) as null, 1e999 and
// -1e999, which decode as nil, +Inf and -Inf. It reports whether it changed
// anything.
func replaceNonFinite(b []byte) ([]byte, bool) {
	var out []byte
	last := 0
	inStr := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inStr {
			switch c {
			case '\\':
				i++
			case '"':
				inStr = false
			}
			continue
		}
		var tok, repl string
		switch c {
		case '"':
			inStr = true
			continue
		case 'N':
			tok, repl = "NaN", "null"
		case 'I':
			tok, repl = "Infinity", "1e999"
		case '-':
			tok, repl = "-Infinity", "-1e999"
		default:
			continue
		}
		if !bytes.HasPrefix(b[i:], []byte(tok)) {
			continue
		}
		if out == nil {
			out = make([]byte, 0, len(b)+8)
		}
		out = append(out, b[last:i]...)
		out = append(out, repl...)
		i += len(tok) - 1
		last = i + 1
	}
	if out == nil {
		return b, false
	}
	return append(out, b[last:]...), true
}
