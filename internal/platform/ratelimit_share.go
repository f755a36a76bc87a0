package platform

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// A cluster's gateways share their rate limits: each admits requests from
// its own buckets and, every shareEvery, tells the others how many tokens
// it took per limiter key; each takes the others' tokens off its own
// buckets (ratelimit.Limiter.Spend). A key sending to N gateways at once
// can therefore be admitted, before they hear of each other, up to its
// burst plus what refills in shareEvery at each of them: a burst overshoots
// by at most (N-1) * (burst + rate * shareEvery), then the sum over the
// gateways holds to the key's rate. Concurrency limits stay per gateway.
const shareEvery = 100 * time.Millisecond

// rateShare gathers the tokens this gateway took since the last report.
type rateShare struct {
	mu    sync.Mutex
	spent map[string]int
}

func (s *rateShare) took(key string) {
	s.mu.Lock()
	s.spent[key]++
	s.mu.Unlock()
}

func (s *rateShare) take() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.spent) == 0 {
		return nil
	}
	out := s.spent
	s.spent = make(map[string]int, len(out))
	return out
}

// spentReport is one gateway's report on runagent.ratelimit.
type spentReport struct {
	Gateway string         `json:"gateway"`
	Spent   map[string]int `json:"spent"` // limiter key ("key:ID", "ip:ADDR") → tokens
}

func (p *Platform) rateSubject() string { return "runagent.ratelimit" }

// shareRates reports this gateway's tokens every shareEvery until ctx ends.
func (p *Platform) shareRates(ctx context.Context) {
	t := time.NewTicker(shareEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		spent := p.cluster.share.take()
		if spent == nil {
			continue
		}
		b, _ := json.Marshal(spentReport{Gateway: p.cfg.NodeID, Spent: spent})
		if err := p.cluster.cl.Conn().Publish(p.rateSubject(), b); err != nil {
			p.log.Debug("report rate-limit tokens", "error", err)
		}
	}
}

// onSpent takes another gateway's tokens off this one's buckets.
func (p *Platform) onSpent(m *nats.Msg) {
	var r spentReport
	if json.Unmarshal(m.Data, &r) != nil || r.Gateway == p.cfg.NodeID {
		return
	}
	for key, n := range r.Spent {
		pol := p.cfg.DefaultPolicy
		if id, ok := strings.CutPrefix(key, "key:"); ok {
			k, known := p.keys.Get(id)
			if !known {
				continue
			}
			pol = p.policy(k)
		}
		p.limiter.Spend(key, pol, n)
	}
}
