package platform

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

// logHub takes agent log lines off the instances' output readers, writes
// them to the store in batches and hands them to `logs --follow` readers.
// A chatty agent must never stall its calls: when the writer falls behind,
// lines are dropped and counted.
type logHub struct {
	db      domain.Logs
	metrics *Metrics
	log     *slog.Logger
	in      chan domain.LogLine
	queued  atomic.Int64 // bytes of the lines in in
	done    chan struct{}

	mu   sync.Mutex
	subs map[string]map[chan domain.LogLine]struct{}

	// published, when set, is told of every batch stored (a cluster's
	// servers pass their lines to the other gateways' followers).
	published func([]domain.LogLine)
}

const (
	logQueue      = 16384
	logQueueBytes = 8 << 20
	maxLogLine    = 16 << 10
	logBatch      = 512
	logLinger     = 100 * time.Millisecond
	logKeep       = 20000 // lines kept per agent
	pruneEvery    = 10 * time.Minute
	followQueue   = 1024
)

func newLogHub(db domain.Logs, m *Metrics, log *slog.Logger) *logHub {
	return &logHub{db: db, metrics: m, log: log, in: make(chan domain.LogLine, logQueue), done: make(chan struct{}),
		subs: map[string]map[chan domain.LogLine]struct{}{}}
}

// Add implements manager.LogSink. A line longer than maxLogLine is cut;
// past logQueueBytes queued, lines are dropped (and counted), so that an
// agent printing megabytes cannot grow the server.
func (h *logHub) Add(l domain.LogLine) {
	if n := len(l.Line); n > maxLogLine {
		l.Line = fmt.Sprintf("%s... (%d bytes cut)", strings.ToValidUTF8(l.Line[:maxLogLine], ""), n-maxLogLine)
	}
	size := int64(len(l.Line))
	if h.queued.Add(size) > logQueueBytes {
		h.queued.Add(-size)
		h.metrics.logsDropped.Inc()
		return
	}
	select {
	case h.in <- l:
	default:
		h.queued.Add(-size)
		h.metrics.logsDropped.Inc()
	}
}

// took accounts for lines taken off the queue.
func (h *logHub) took(l domain.LogLine) { h.queued.Add(-int64(len(l.Line))) }

func (h *logHub) run(ctx context.Context) {
	prune := time.NewTicker(pruneEvery)
	defer prune.Stop()
	batch := make([]domain.LogLine, 0, logBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-prune.C:
			if _, err := h.db.PruneLogs(context.Background(), logKeep); err != nil {
				h.log.Warn("prune agent logs", "error", err)
			}
		case l := <-h.in:
			h.took(l)
			batch = append(batch[:0], l)
			timer := time.NewTimer(logLinger)
		gather:
			for len(batch) < logBatch {
				select {
				case l := <-h.in:
					h.took(l)
					batch = append(batch, l)
				case <-timer.C:
					break gather
				}
			}
			timer.Stop()
			h.write(batch)
		}
	}
}

// flush writes what is queued (at shutdown).
func (h *logHub) flush() {
	var batch []domain.LogLine
	for {
		select {
		case l := <-h.in:
			h.took(l)
			batch = append(batch, l)
		default:
			if len(batch) > 0 {
				h.write(batch)
			}
			return
		}
	}
}

func (h *logHub) write(batch []domain.LogLine) {
	if err := h.db.AppendLogs(context.Background(), batch); err != nil {
		h.log.Warn("store agent logs", "lines", len(batch), "error", err)
		return
	}
	if h.published != nil {
		h.published(batch)
	}
	h.deliver(batch)
}

// deliver hands stored lines to their agents' followers.
func (h *logHub) deliver(batch []domain.LogLine) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, l := range batch {
		for ch := range h.subs[l.AgentID] {
			select {
			case ch <- l:
			default: // a follower that does not keep up misses lines
			}
		}
	}
}

// subscribe returns a channel of the agent's new lines and its cancel.
func (h *logHub) subscribe(agentID string) (chan domain.LogLine, func()) {
	ch := make(chan domain.LogLine, followQueue)
	h.mu.Lock()
	if h.subs[agentID] == nil {
		h.subs[agentID] = map[chan domain.LogLine]struct{}{}
	}
	h.subs[agentID][ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs[agentID], ch)
		h.mu.Unlock()
	}
}
