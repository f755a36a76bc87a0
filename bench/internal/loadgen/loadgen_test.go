package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestReadResponse(t *testing.T) {
	cases := []struct {
		name, raw, body string
		status          int
		keep            bool
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello", "hello", 200, true},
		{"chunked", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nT: v\r\n\r\n", "hello", 200, true},
		{"close", "HTTP/1.1 404 Not Found\r\nConnection: close\r\ncontent-length: 2\r\n\r\nno", "no", 404, false},
		{"http/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", "x", 200, false},
		{"until close", "HTTP/1.1 200 OK\r\n\r\nrest of it", "rest of it", 200, false},
		{"no body", "HTTP/1.1 204 No Content\r\n\r\n", "", 204, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, body, keep, err := ReadResponse(bufio.NewReader(strings.NewReader(c.raw)), nil)
			if err != nil || status != c.status || string(body) != c.body || keep != c.keep {
				t.Fatalf("got %d %q keep=%v err=%v; want %d %q keep=%v", status, body, keep, err, c.status, c.body, c.keep)
			}
		})
	}
	for _, raw := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"garbage\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	} {
		if _, _, _, err := ReadResponse(bufio.NewReader(strings.NewReader(raw)), nil); err == nil {
			t.Errorf("%q: no error", raw)
		}
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i))
	}
	if p := Percentile(s, 50); p != 50 {
		t.Errorf("p50 = %d", p)
	}
	if p := Percentile(s, 99); p != 99 {
		t.Errorf("p99 = %d", p)
	}
	if p := Percentile(s, 100); p != 100 {
		t.Errorf("p100 = %d", p)
	}
	if s[0] != 100 {
		t.Error("Percentile sorted its input")
	}
	if Percentile(nil, 50) != 0 || Mean(nil) != 0 {
		t.Error("empty input")
	}
}

func TestCheckLoopback(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:80", "[::1]:80", "127.1.2.3:9"} {
		if err := CheckLoopback(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"10.0.0.1:80", "example.com:80", "localhost:80", "0.0.0.0:80"} {
		if err := CheckLoopback(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// TestThroughputCountsFailures runs the client against a tiny local server
// that fails every third call: failures must be errors, not throughput.
func TestThroughputCountsFailures(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		if n%3 == 0 {
			fmt.Fprint(w, `{"success":false}`)
			return
		}
		fmt.Fprint(w, `{"success":true,"data":"x"}`)
	})}
	go srv.Serve(l)
	defer srv.Close()
	addr := l.Addr().String()
	req := RunRequest(addr, "id", "", []byte(`{}`))
	res := Throughput(context.Background(), addr, req, 1, 50*time.Millisecond, 300*time.Millisecond, time.Second)
	if res.OK == 0 || res.Errors == 0 {
		t.Fatalf("ok=%d errors=%d", res.OK, res.Errors)
	}
	if ratio := float64(res.Errors) / float64(res.OK+res.Errors); ratio < 0.3 || ratio > 0.37 {
		t.Errorf("error ratio %.2f, want 1/3", ratio)
	}
	lat := Latency(context.Background(), addr, req, 3, time.Second, 30, 5*time.Second, time.Second)
	if len(lat.Samples) != 20 || lat.Errors != 10 {
		t.Errorf("latency: %d samples, %d errors", len(lat.Samples), lat.Errors)
	}
}
