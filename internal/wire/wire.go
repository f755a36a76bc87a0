// Package wire holds the RunAgent wire protocol v1 as the official SDKs see it:
// the response envelope, the HTTP status of each error code (the codes are
// domain's), and the JSON encoding of the original's values. See
// ../shared/docs/wire-v1.md (the contract) and docs/wire-extensions.md (what we
// add beside it).
package wire

import (
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/runagent-go/runagent/internal/domain"
)

// HTTPStatus maps a wire code to the HTTP status the server answers with.
// An agent exception (INTERNAL_ERROR from the runner) is answered with 200 and
// success:false, as the original does; the server decides that, not this table.
func HTTPStatus(code domain.Code) int {
	switch code {
	case domain.CodeValidation:
		return http.StatusBadRequest
	case domain.CodeAuthentication:
		return http.StatusUnauthorized
	case domain.CodePermission:
		return http.StatusForbidden
	case domain.CodeNotFound:
		return http.StatusNotFound
	case domain.CodeRateLimit:
		return http.StatusTooManyRequests
	case domain.CodeTimeout:
		return http.StatusGatewayTimeout
	case domain.CodeAgentCrashed, domain.CodeResourceLimit:
		return http.StatusBadGateway
	case domain.CodeOverloaded, domain.CodeConnection:
		// CONNECTION_ERROR from the server is a dependency it needs (its
		// database, the cluster's bus) out of reach for now.
		return http.StatusServiceUnavailable
	case domain.CodeCancelled:
		return 499
	case domain.CodeAlreadyExists:
		return http.StatusConflict
	default:
		return http.StatusInternalServerError
	}
}

// Timestamp formats t like Python's datetime.isoformat() on a naive local
// datetime, which is what the original server puts in envelopes.
func Timestamp(t time.Time) string {
	return string(AppendTimestamp(make([]byte, 0, 26), t))
}

// AppendTimestamp appends Timestamp(t) to b.
func AppendTimestamp(b []byte, t time.Time) []byte {
	if t.Nanosecond()/1000 == 0 {
		return t.AppendFormat(b, "2006-01-02T15:04:05")
	}
	return t.AppendFormat(b, "2006-01-02T15:04:05.000000")
}

// AppendString appends s as a JSON string. Non-ASCII text is kept as is, like
// Python's json.dumps(..., ensure_ascii=False); invalid UTF-8 becomes U+FFFD.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"':
				b = append(b, '\\', '"')
			case '\\':
				b = append(b, '\\', '\\')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// AppendFloat appends f the way Python's json.dumps prints a float (repr):
// integral values keep a ".0", e.g. 12.0.
func AppendFloat(b []byte, f float64) []byte {
	n := len(b)
	b = strconv.AppendFloat(b, f, 'g', -1, 64)
	for _, c := range b[n:] {
		if c == '.' || c == 'e' || c == 'n' || c == 'N' {
			return b
		}
	}
	return append(b, '.', '0')
}
