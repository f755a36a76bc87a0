package manager

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/runagent-go/runagent/internal/autoscale"
	"github.com/runagent-go/runagent/internal/domain"
)

// Tick runs the pool's periodic steps: usage, scaling, limits, health.
// procs is this tick's /proc sample by process group (SampleGroups of
// PIDs), for instances whose sandbox keeps no accounting of its own. No
// step does I/O while it holds the pool's lock.
func (p *Pool) Tick(now time.Time, procs map[int]domain.Usage) {
	p.sampleUsage(procs)
	stop := p.scale(now)
	for _, in := range stop {
		go in.proc.Close()
	}
	p.enforceLimits()
	p.checkHealth(now)
}

// PIDs returns the process group of every running instance, for one /proc
// sample across pools.
func (p *Pool) PIDs() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int
	for _, in := range p.insts {
		if in.proc != nil {
			out = append(out, in.proc.PID())
		}
	}
	return out
}

// running is the instances with a runner, taken under the lock.
func (p *Pool) running() []*instance {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	out := make([]*instance, 0, len(p.insts))
	for _, in := range p.insts {
		if in.proc != nil {
			out = append(out, in)
		}
	}
	return out
}

// sampleUsage records each running instance's usage: its sandbox's
// accounting (a cgroup sees processes that left the runner's group; a
// microVM is asked, which can take a while), else the /proc sample.
func (p *Pool) sampleUsage(procs map[int]domain.Usage) {
	insts := p.running()
	usage := make([]domain.Usage, len(insts))
	known := make([]bool, len(insts))
	for i, in := range insts { // outside the lock: Usage may block
		if u, ok := in.proc.Usage(); ok {
			usage[i], known[i] = u, true
		} else if u, ok := procs[in.proc.PID()]; ok {
			usage[i], known[i] = u, true
		}
	}
	p.mu.Lock()
	for i, in := range insts {
		if known[i] {
			in.usage = usage[i]
		}
	}
	p.mu.Unlock()
	for i, in := range insts {
		if known[i] {
			p.obs.InstanceUsage(p, in.id, usage[i])
		}
	}
}

// scale records the load, applies the autoscaler's decision, and returns
// the idle instances it retired (the caller stops them).
func (p *Pool) scale(now time.Time) (stop []*instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	inflight := 0
	for _, in := range p.insts {
		inflight += in.inflight
	}
	p.scaler.Record(autoscale.Sample{At: now, InFlight: inflight, Queued: len(p.waiters)})
	ready, starting := p.countLocked(domain.StateReady), p.countLocked(domain.StateStarting)
	d := p.scaler.Decide(now, ready)
	switch {
	case p.draining:
	case d.Want > ready+starting && now.After(p.retryAt):
		p.obs.ScaleEvent(p, ready+starting, d.Want, d.Reason)
		for i := ready + starting; i < d.Want; i++ {
			p.launchLocked()
		}
	case d.Want < ready:
		// Retire the least busy instances; busy ones finish their calls first.
		cands := slices.Clone(p.insts)
		slices.SortStableFunc(cands, func(a, b *instance) int { return a.inflight - b.inflight })
		n := ready - d.Want
		p.obs.ScaleEvent(p, ready+starting, d.Want+starting, d.Reason)
		for _, in := range cands {
			if n == 0 {
				break
			}
			if in.state != domain.StateReady {
				continue
			}
			n--
			in.state = domain.StateDraining
			if in.inflight == 0 {
				p.removeLocked(in)
				stop = append(stop, in)
			}
		}
	}
	return stop
}

// enforceLimits kills the instances whose last usage is over a limit.
func (p *Pool) enforceLimits() {
	type kill struct {
		in    *instance
		limit domain.Limit
		msg   string
	}
	var kills []kill
	p.mu.Lock()
	for _, in := range p.insts {
		if in.proc == nil || in.limitCounted.Load() {
			continue
		}
		if limit, msg := p.overLimit(in.usage); limit != "" {
			in.limitCounted.Store(true)
			kills = append(kills, kill{in, limit, msg})
		}
	}
	p.mu.Unlock()
	for _, k := range kills {
		p.log.Warn("instance over its limit; killing it", "instance", k.in.id, "limit", k.limit, "detail", k.msg)
		p.obs.LimitExceeded(p, k.in.id, k.limit)
		k.in.proc.KillWith(&domain.Error{Code: domain.CodeResourceLimit, Limit: k.limit, Message: k.msg})
	}
}

// overLimit names the first limit u exceeds, with the message calls get.
func (p *Pool) overLimit(u domain.Usage) (domain.Limit, string) {
	l := p.cfg.Limits
	switch {
	case u.LimitHit == domain.LimitPids:
		// The kernel refused a fork: an instance that tries to go past its
		// process limit (a fork bomb) is stopped rather than left crippled.
		return domain.LimitPids, fmt.Sprintf("RESOURCE_LIMIT: processes %d exceeded (a fork was refused); the instance was stopped and replaced", l.Pids)
	case l.MemoryBytes > 0 && u.MemoryBytes > l.MemoryBytes:
		return domain.LimitMemory, fmt.Sprintf("RESOURCE_LIMIT: memory %d MiB exceeded (the instance used %d MiB); the instance was stopped and replaced",
			l.MemoryBytes>>20, u.MemoryBytes>>20)
	case l.CPUSeconds > 0 && u.CPUSeconds > l.CPUSeconds:
		return domain.LimitCPU, fmt.Sprintf("RESOURCE_LIMIT: CPU time %gs exceeded (the instance used %.1fs); the instance was stopped and replaced",
			l.CPUSeconds, u.CPUSeconds)
	case l.Pids > 0 && u.Tasks > l.Pids:
		return domain.LimitPids, fmt.Sprintf("RESOURCE_LIMIT: processes %d exceeded (the instance had %d processes and threads); the instance was stopped and replaced",
			l.Pids, u.Tasks)
	}
	return "", ""
}

// checkHealth starts a health check of each ready instance not being
// checked, once it has been up a health interval.
func (p *Pool) checkHealth(now time.Time) {
	var ping []*instance
	p.mu.Lock()
	for _, in := range p.insts {
		if in.state == domain.StateReady && in.proc != nil && !in.pinging && now.Sub(in.started) > p.cfg.HealthInterval {
			in.pinging = true
			ping = append(ping, in)
		}
	}
	p.mu.Unlock()
	for _, in := range ping {
		go p.healthCheck(in)
	}
}

// healthCheck pings one instance; two misses in a row and it is replaced.
// The runner keeps a thread free for pings (threads > max concurrency), so
// a busy instance still answers and only a hung one does not.
func (p *Pool) healthCheck(in *instance) {
	time.Sleep(p.cfg.HealthInterval)
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.HealthTimeout)
	err := in.proc.Ping(ctx)
	cancel()
	p.mu.Lock()
	in.pinging = false
	if err == nil {
		in.missed = 0
		p.mu.Unlock()
		return
	}
	in.missed++
	missed := in.missed
	p.mu.Unlock()
	if missed >= 2 && in.proc.Err() == nil {
		p.log.Warn("instance does not answer health checks; replacing it", "instance", in.id, "error", err)
		in.hung.Store(true)
		p.obs.InstanceGone(p, in.id, "hung")
		in.proc.KillWith(&domain.Error{Code: domain.CodeAgentCrashed, Message: fmt.Sprintf(
			"the agent instance stopped answering health checks for %s and was replaced", 2*p.cfg.HealthTimeout)})
	}
}

// Run ticks the pool by itself every interval until ctx ends, sampling
// /proc for it alone: for a pool that no Manager drives (runagent serve).
func (p *Pool) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.Tick(now, SampleGroups(p.PIDs()))
		}
	}
}
