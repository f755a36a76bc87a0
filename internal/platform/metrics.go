package platform

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/manager"
)

// Metrics are the platform's Prometheus metrics. Instance counts, queue
// lengths and per-instance usage are read from the manager at scrape time.
type Metrics struct {
	reg          *prometheus.Registry
	requests     *prometheus.CounterVec
	calls        *prometheus.CounterVec
	callSeconds  *prometheus.HistogramVec
	errors       *prometheus.CounterVec
	rateLimited  *prometheus.CounterVec
	scaleEvents  *prometheus.CounterVec
	instanceGone *prometheus.CounterVec
	limitKills   *prometheus.CounterVec
	logsDropped  prometheus.Counter
	asyncQueued  prometheus.Gauge
}

func newMetrics() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "runagent_http_requests_total",
		Help: "HTTP requests by route pattern and status."}, []string{"route", "status"})
	m.calls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "runagent_calls_total",
		Help: "Entrypoint calls by agent, tag and outcome code (OK for success)."}, []string{"agent", "tag", "code"})
	m.callSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "runagent_call_duration_seconds",
		Help:    "Entrypoint call latency, request to last byte (p50/p95/p99 via histogram_quantile).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}},
		[]string{"agent", "tag"})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "runagent_errors_total",
		Help: "Failed calls by error code."}, []string{"code"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "runagent_rate_limited_total",
		Help: "Requests refused by a per-key limit, by limit (rate or concurrency)."}, []string{"limit"})
	m.scaleEvents = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "runagent_scale_events_total",
		Help: "Pool size changes by agent, direction and reason."}, []string{"agent", "direction", "reason"})
	m.instanceGone = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "runagent_instance_failures_total",
		Help: "Instances that failed to start, died or hung, by agent and why."}, []string{"agent", "why"})
	m.limitKills = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "runagent_resource_limit_kills_total",
		Help: "Instances killed for exceeding a resource limit, by agent and limit."}, []string{"agent", "limit"})
	m.logsDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "runagent_log_lines_dropped_total",
		Help: "Agent log lines dropped because the log writer fell behind."})
	m.asyncQueued = prometheus.NewGauge(prometheus.GaugeOpts{Name: "runagent_async_queue_length",
		Help: "Accepted async invocations not finished yet."})
	m.reg.MustRegister(m.requests, m.calls, m.callSeconds, m.errors, m.rateLimited, m.scaleEvents,
		m.instanceGone, m.limitKills, m.logsDropped, m.asyncQueued,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// call is server.Config.OnCall.
func (m *Metrics) call(a *domain.Agent, tag string, code domain.Code, elapsed time.Duration) {
	label := "OK"
	if code != "" {
		label = string(code)
		m.errors.WithLabelValues(label).Inc()
	}
	m.calls.WithLabelValues(a.ID, tag, label).Inc()
	m.callSeconds.WithLabelValues(a.ID, tag).Observe(elapsed.Seconds())
}

// manager.Observer:

func (m *Metrics) ScaleEvent(p *manager.Pool, from, to int, reason string) {
	dir := "up"
	if to < from {
		dir = "down"
	}
	m.scaleEvents.WithLabelValues(p.Agent, dir, reason).Inc()
}
func (m *Metrics) InstanceUsage(*manager.Pool, string, domain.Usage) {}
func (m *Metrics) InstanceGone(p *manager.Pool, _ string, why string) {
	m.instanceGone.WithLabelValues(p.Agent, why).Inc()
}
func (m *Metrics) LimitExceeded(p *manager.Pool, _ string, limit domain.Limit) {
	m.limitKills.WithLabelValues(p.Agent, string(limit)).Inc()
}

// agentGatherer keeps only the series whose "agent" label is one of agents.
type agentGatherer struct {
	g      prometheus.Gatherer
	agents map[string]bool
}

func (a agentGatherer) Gather() ([]*dto.MetricFamily, error) {
	fams, err := a.g.Gather()
	out := fams[:0]
	for _, f := range fams {
		kept := f.Metric[:0]
		for _, m := range f.Metric {
			for _, l := range m.GetLabel() {
				if l.GetName() == "agent" && a.agents[l.GetValue()] {
					kept = append(kept, m)
					break
				}
			}
		}
		if len(kept) > 0 {
			f.Metric = kept
			out = append(out, f)
		}
	}
	return out, err
}

// watch registers the collector that reads pools at scrape time.
func (m *Metrics) watch(mgr *manager.Manager) { m.reg.MustRegister(poolCollector{mgr}) }

var (
	descInstances = prometheus.NewDesc("runagent_instances", "Instances by agent and state.", []string{"agent", "state"}, nil)
	descQueue     = prometheus.NewDesc("runagent_queue_length", "Calls waiting for an instance, by agent.", []string{"agent"}, nil)
	descInFlight  = prometheus.NewDesc("runagent_in_flight_calls", "Calls running, by agent.", []string{"agent"}, nil)
	descRSS       = prometheus.NewDesc("runagent_instance_memory_bytes", "Resident memory of an instance's processes.", []string{"agent", "version", "instance"}, nil)
	descCPU       = prometheus.NewDesc("runagent_instance_cpu_seconds_total", "CPU time used by an instance's live processes.", []string{"agent", "version", "instance"}, nil)
)

type poolCollector struct{ mgr *manager.Manager }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInstances, descQueue, descInFlight, descRSS, descCPU} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, id := range c.mgr.AgentIDs("") {
		st, ok := c.mgr.Status(id)
		if !ok {
			continue
		}
		ps := st.Pool
		for state, n := range map[string]int{"starting": ps.Starting, "ready": ps.Ready, "draining": ps.Draining} {
			ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(n), id, state)
		}
		ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(ps.Queued), id)
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(ps.InFlight), id)
		v := strconv.Itoa(st.ActiveVersion)
		for _, in := range ps.Instances {
			if in.PID == 0 {
				continue
			}
			ch <- prometheus.MustNewConstMetric(descRSS, prometheus.GaugeValue, float64(in.RSSBytes), id, v, in.ID)
			ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, in.CPU, id, v, in.ID)
		}
	}
}
