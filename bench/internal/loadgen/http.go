// Package loadgen is the benchmark's load generator: a minimal HTTP/1.1
// keep-alive client on a raw net.Conn (one pre-encoded request, written again
// and again) and a WebSocket stream reader. It is deliberately cheap, because
// it shares the machine's cores with the server it measures.
package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// SuccessMarker must appear in a /run answer for the call to count as a
// success: the envelope of a failed call has "success":false.
var SuccessMarker = []byte(`"success":true`)

// RunRequest is the pre-encoded bytes of POST /api/v1/agents/{id}/run; a
// token ("" for none) goes in an Authorization: Bearer header.
func RunRequest(addr, agentID, token string, body []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST /api/v1/agents/%s/run HTTP/1.1\r\n", agentID)
	fmt.Fprintf(&b, "Host: %s\r\n", addr)
	if token != "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", token)
	}
	b.WriteString("Content-Type: application/json\r\n")
	b.WriteString("Accept: application/json\r\n")
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	return b.Bytes()
}

// Conn is one keep-alive HTTP/1.1 connection that sends the same request
// over and over. Not safe for concurrent use.
type Conn struct {
	addr    string
	req     []byte
	timeout time.Duration
	nc      net.Conn
	br      *bufio.Reader
	body    []byte
}

// NewConn prepares a connection to addr (host:port, which must be on the
// loopback interface); it dials lazily.
func NewConn(addr string, req []byte, timeout time.Duration) *Conn {
	return &Conn{addr: addr, req: req, timeout: timeout}
}

// Close closes the underlying connection; the next Do dials again.
func (c *Conn) Close() {
	if c.nc != nil {
		c.nc.Close()
		c.nc = nil
	}
}

func (c *Conn) dial() error {
	if err := CheckLoopback(c.addr); err != nil {
		return err
	}
	nc, err := net.DialTimeout("tcp", c.addr, c.timeout)
	if err != nil {
		return err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c.nc = nc
	if c.br == nil {
		c.br = bufio.NewReaderSize(nc, 16<<10)
	} else {
		c.br.Reset(nc)
	}
	return nil
}

// Do sends the request and reads the whole answer, giving up at the
// connection's timeout or at hardStop, whichever comes first. ok is true when
// the status is 200 and the body holds SuccessMarker. On a transport error
// the connection is closed (and redialed by the next Do).
func (c *Conn) Do(hardStop time.Time) (ok bool, status int, err error) {
	if c.nc == nil {
		if err := c.dial(); err != nil {
			return false, 0, err
		}
	}
	deadline := time.Now().Add(c.timeout)
	if !hardStop.IsZero() && hardStop.Before(deadline) {
		deadline = hardStop
	}
	c.nc.SetDeadline(deadline)
	if _, err := c.nc.Write(c.req); err != nil {
		c.Close()
		return false, 0, err
	}
	status, body, keep, err := ReadResponse(c.br, c.body[:0])
	c.body = body
	if err != nil {
		c.Close()
		return false, status, err
	}
	if !keep {
		c.Close()
	}
	return status == 200 && bytes.Contains(body, SuccessMarker), status, nil
}

// Body is the body of the last answer (valid until the next Do).
func (c *Conn) Body() []byte { return c.body }

var errMalformed = errors.New("malformed HTTP response")

// ReadResponse reads one HTTP/1.1 response from br, appending its body to
// buf. It understands Content-Length and chunked transfer coding; keep is
// false when the server asked to close the connection.
func ReadResponse(br *bufio.Reader, buf []byte) (status int, body []byte, keep bool, err error) {
	line, err := readLine(br)
	if err != nil {
		return 0, buf, false, err
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, buf, false, fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, buf, false, fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	keep = line[7] == '1' // HTTP/1.1 defaults to keep-alive, 1.0 to close
	length, chunked := -1, false
	for {
		h, err := readLine(br)
		if err != nil {
			return status, buf, false, err
		}
		if len(h) == 0 {
			break
		}
		colon := bytes.IndexByte(h, ':')
		if colon <= 0 {
			return status, buf, false, fmt.Errorf("%w: header %q", errMalformed, h)
		}
		name, value := h[:colon], bytes.TrimSpace(h[colon+1:])
		switch {
		case asciiEqualFold(name, "content-length"):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 {
				return status, buf, false, fmt.Errorf("%w: Content-Length %q", errMalformed, value)
			}
			length = n
		case asciiEqualFold(name, "transfer-encoding"):
			chunked = bytes.Contains(bytes.ToLower(value), []byte("chunked"))
		case asciiEqualFold(name, "connection"):
			v := bytes.ToLower(value)
			if bytes.Contains(v, []byte("close")) {
				keep = false
			} else if bytes.Contains(v, []byte("keep-alive")) {
				keep = true
			}
		}
	}
	switch {
	case chunked:
		body, err = readChunked(br, buf)
		return status, body, keep, err
	case length >= 0:
		body, err = readN(br, buf, length)
		return status, body, keep, err
	case status == 204 || status == 304 || status/100 == 1:
		return status, buf, keep, nil
	default: // body until close
		body, err = readAll(br, buf)
		return status, body, false, err
	}
}

func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: line too long", errMalformed)
		}
		if errors.Is(err, io.EOF) && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

func readN(br *bufio.Reader, buf []byte, n int) ([]byte, error) {
	start := len(buf)
	buf = grow(buf, n)
	_, err := io.ReadFull(br, buf[start:start+n])
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return buf, err
}

func readAll(br *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := br.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

func readChunked(br *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		line, err := readLine(br)
		if err != nil {
			return buf, err
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || size < 0 || size > 1<<30 {
			return buf, fmt.Errorf("%w: chunk size %q", errMalformed, line)
		}
		if size == 0 {
			for { // trailers, then the empty line
				t, err := readLine(br)
				if err != nil {
					return buf, err
				}
				if len(t) == 0 {
					return buf, nil
				}
			}
		}
		if buf, err = readN(br, buf, int(size)); err != nil {
			return buf, err
		}
		if crlf, err := readLine(br); err != nil || len(crlf) != 0 {
			if err == nil {
				err = fmt.Errorf("%w: no CRLF after chunk", errMalformed)
			}
			return buf, err
		}
	}
}

func grow(buf []byte, n int) []byte {
	if cap(buf)-len(buf) < n {
		nb := make([]byte, len(buf), len(buf)+n+len(buf)/2)
		copy(nb, buf)
		buf = nb
	}
	return buf[:len(buf)+n]
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// CheckLoopback refuses any address that is not on the loopback interface:
// the benchmark only ever talks to servers it started on this machine.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing to connect to %s: the benchmark only connects to 127.0.0.1", addr)
	}
	return nil
}
