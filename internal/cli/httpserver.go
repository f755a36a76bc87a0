package cli

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/spf13/pflag"

	"github.com/runagent-go/runagent/internal/runproto"
	"github.com/runagent-go/runagent/internal/server"
)

// httpTimeouts bound what a client may hold on a listener without doing
// anything: an idle keep-alive connection, or request headers that never
// finish (slowloris). Without them idle connections pile up until the
// process runs out of file descriptors.
type httpTimeouts struct {
	idle, header time.Duration
}

// addHTTPFlags adds the listener timeouts, shared by serve and server.
func addHTTPFlags(f *pflag.FlagSet, t *httpTimeouts) {
	f.DurationVar(&t.idle, "http-idle-timeout", 90*time.Second, "close a keep-alive connection idle for this long")
	f.DurationVar(&t.header, "http-header-timeout", 20*time.Second, "close a connection whose request headers take longer than this")
}

// dataFlags bound what one call may send back and how a stream's slow
// reader is treated, shared by serve and server.
type dataFlags struct {
	flow      runproto.Flow
	stall     time.Duration
	heartbeat time.Duration
}

// heartbeatOf is the server's Heartbeat of the flag (0: none).
func (d dataFlags) heartbeatOf() time.Duration {
	if d.heartbeat <= 0 {
		return -1
	}
	return d.heartbeat
}

func addDataFlags(f *pflag.FlagSet, d *dataFlags) {
	f.IntVar(&d.flow.MaxResult, "max-result", runproto.DefaultMaxResult, "largest result of one call in bytes, as encoded (a bigger one fails with RESOURCE_LIMIT)")
	f.IntVar(&d.flow.MaxChunk, "max-chunk", runproto.DefaultMaxChunk, "largest stream chunk in bytes, as encoded (a bigger one ends its stream with RESOURCE_LIMIT)")
	f.IntVar(&d.flow.WindowBytes, "stream-window", runproto.DefaultWindowBytes, "bytes of a stream that may wait for a slow reader; past them the agent's generator is paused")
	f.DurationVar(&d.stall, "stream-stall-timeout", server.DefaultStallTimeout, "cut off a stream whose reader takes nothing for this long (its call is cancelled)")
	f.DurationVar(&d.heartbeat, "stream-heartbeat", server.DefaultHeartbeat, "send a heartbeat on a stream silent for this long (an SSE comment, a WebSocket ping) so that proxies keep it open; 0: none")
}

// httpServer is the http.Server of every listener the binary opens.
func httpServer(h http.Handler, t httpTimeouts, log *slog.Logger) *http.Server {
	if t.idle <= 0 {
		t.idle = 90 * time.Second
	}
	if t.header <= 0 {
		t.header = 20 * time.Second
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.header,
		IdleTimeout:       t.idle,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
