// Package autoscale decides how many instances an agent version should run.
//
// The model follows Knative's KPA (https://knative.dev/docs/serving/autoscaling/kpa-specific/):
// the observed concurrency (in-flight plus queued calls) is averaged over a
// long stable window and a short panic window. Normally the wanted count is
// ceil(stable average / target). When the panic window shows a burst of at
// least PanicThreshold times the ready instances, the decider panics: it
// follows the panic window and never scales down until the burst has been out
// of the stable window for a whole StableWindow. With Min 0 an idle version is
// scaled to zero after a grace period and reactivated on the first call.
//
// The Autoscaler is pure and deterministic: it starts no goroutines and reads
// no clock; the caller passes sample and decision times in.
package autoscale

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
)

// Defaults applied by New and SetConfig to zero-valued fields.
const (
	DefaultTargetConcurrency = 4.0
	DefaultStableWindow      = 60 * time.Second
	DefaultPanicWindow       = 6 * time.Second
	DefaultPanicThreshold    = 2.0
	DefaultScaleToZeroGrace  = 60 * time.Second
	DefaultMaxScaleUpRate    = 1000.0
)

// Reasons reported in Decision.Reason. They are stable strings so they can be
// used as a metric label.
const (
	ReasonStable      = "stable"
	ReasonPanic       = "panic"
	ReasonScaleToZero = "scale to zero after idle"
	ReasonActivate    = "activate from zero"
	ReasonMax         = "bounded by max"
	ReasonMin         = "bounded by min"
	ReasonScaleUpRate = "bounded by scale-up rate"
	ReasonIdleGrace   = "holding until idle grace"
	ReasonNoData      = "no data"
)

// Bucket sizing: see newRing.
const (
	maxBuckets           = 3600
	maxBucketGranularity = time.Second
	minBucketGranularity = time.Millisecond
	panicWindowBuckets   = 6
)

// Config holds the autoscaling settings of one agent version. Zero values
// mean "use the default", except Min and Max which are taken as given.
type Config struct {
	Min, Max          int           // bounds; Min may be 0 (scale to zero)
	TargetConcurrency float64       // wanted in-flight calls per instance
	StableWindow      time.Duration // averaging window for normal decisions
	PanicWindow       time.Duration // short window for bursts; must be < StableWindow
	PanicThreshold    float64       // panic when panic-window demand >= threshold x ready instances
	ScaleToZeroGrace  time.Duration // with Min 0: idle time before scaling to zero
	MaxScaleUpRate    float64       // at most ceil(ready x rate) per decision when ready > 0
}

// Sample is one observation of an agent version's load. At must be a real
// wall or monotonic-derived time (years 1678..2262), not the zero Time.
type Sample struct {
	At       time.Time
	InFlight int // calls running on instances
	Queued   int // calls waiting for an instance
}

func (s Sample) concurrency() int { return max(s.InFlight, 0) + max(s.Queued, 0) }

// Decision is the result of Decide.
type Decision struct {
	Want      int
	Panic     bool
	Reason    string  // one of the Reason constants
	StableAvg float64 // average concurrency (in-flight + queued) over the stable window
	PanicAvg  float64 // same over the panic window
}

// bucket aggregates the samples whose time falls into one granularity slot.
type bucket struct {
	idx   int64 // slot number: unix nanoseconds / granularity
	sum   float64
	count int
}

// Autoscaler turns recorded samples into a wanted instance count. It is safe
// for concurrent use, but decisions only make sense from one caller.
type Autoscaler struct {
	mu  sync.Mutex
	cfg Config

	gran    time.Duration // bucket width
	buckets []bucket      // ring indexed by idx mod len; sized to cover StableWindow

	haveData   bool
	first      time.Time // earliest sample: start of the idle clock when no traffic was ever seen
	latest     Sample    // sample with the greatest At
	lastActive time.Time // latest sample with traffic; zero if none

	panicTime time.Time // last time the panic condition held; zero when not panicking
	panicMax  int       // highest want during the current panic
}

// New returns an Autoscaler for c with defaults filled in, or an error if c
// is invalid.
func New(c Config) (*Autoscaler, error) {
	c, err := normalize(c)
	if err != nil {
		return nil, err
	}
	a := &Autoscaler{cfg: c}
	a.gran, a.buckets = newRing(c)
	return a, nil
}

// Config returns the effective configuration, defaults included.
func (a *Autoscaler) Config() Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// SetConfig replaces the configuration, e.g. on a redeploy with new settings.
// Recorded history and panic state are kept so a redeploy causes no jump; on
// an error the old configuration stays in effect.
func (a *Autoscaler) SetConfig(c Config) error {
	c, err := normalize(c)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cfg = c
	gran, ring := newRing(c)
	if gran == a.gran && len(ring) == len(a.buckets) {
		return nil
	}
	// Re-bucket the history into the new ring. Each old bucket keeps its
	// mean and weight; buckets too old for the new ring are dropped.
	old, oldGran := a.buckets, a.gran
	a.gran, a.buckets = gran, ring
	for _, b := range old {
		if b.count > 0 {
			a.add(b.idx*int64(oldGran)/int64(gran), b.sum, b.count)
		}
	}
	return nil
}

// Record adds a load sample. Samples may arrive at any rate: they are merged
// into fixed-width buckets, so memory is bounded by StableWindow alone.
// Samples older than the stable window (relative to the newest) are ignored.
func (a *Autoscaler) Record(s Sample) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := s.concurrency()
	if !a.haveData || s.At.Before(a.first) {
		a.first = s.At
	}
	if !a.haveData || !s.At.Before(a.latest.At) {
		a.latest = s
	}
	if c > 0 && s.At.After(a.lastActive) {
		a.lastActive = s.At
	}
	a.haveData = true
	a.add(a.slot(s.At), float64(c), 1)
}

// Decide returns the wanted instance count at now, given the number of ready
// instances. It updates the panic state, so call it once per tick.
//
// While the stable window holds no samples (nothing recorded yet, or the
// caller stopped recording) it holds ready, clamped to [Min, Max], with
// Reason "no data": there is nothing to base a change on.
func (a *Autoscaler) Decide(now time.Time, ready int) Decision {
	a.mu.Lock()
	defer a.mu.Unlock()
	ready = max(ready, 0)
	cfg := a.cfg

	stableAvg, stableOK := a.windowAvg(now, cfg.StableWindow)
	panicAvg, _ := a.windowAvg(now, cfg.PanicWindow)
	d := Decision{StableAvg: stableAvg, PanicAvg: panicAvg}

	// Without recent samples there is nothing to base a change on, so hold
	// the current size rather than guess.
	if !stableOK {
		a.panicTime, a.panicMax = time.Time{}, 0
		d.Want, d.Reason = ready, ReasonNoData
		return a.clamp(d)
	}

	desiredStable := int(math.Ceil(stableAvg / cfg.TargetConcurrency))
	desiredPanic := int(math.Ceil(panicAvg / cfg.TargetConcurrency))

	// Compare the unrounded demand, as Knative does: with ceil, 4.1 calls on
	// one instance at target 4 would already look like a 2x burst.
	overPanic := panicAvg/cfg.TargetConcurrency >= cfg.PanicThreshold*float64(max(ready, 1))
	switch {
	case overPanic:
		a.panicTime = now
	case !a.panicTime.IsZero() && now.Sub(a.panicTime) >= cfg.StableWindow:
		// The burst has had a whole stable window to reach the stable average.
		a.panicTime, a.panicMax = time.Time{}, 0
	}

	if !a.panicTime.IsZero() {
		// Never scale down while panicking: keep the highest count asked for
		// in this panic (instances may still be starting) and the ready ones.
		a.panicMax = max(a.panicMax, desiredPanic, desiredStable, ready)
		d.Want, d.Panic, d.Reason = a.panicMax, true, ReasonPanic
	} else {
		d.Want, d.Reason = desiredStable, ReasonStable
	}

	active := a.latest.concurrency() > 0 && !a.latest.At.After(now)
	if cfg.Min == 0 && !d.Panic {
		idleSince := a.first
		if !a.lastActive.IsZero() {
			idleSince = a.lastActive
		}
		switch {
		case !active && now.Sub(idleSince) >= cfg.ScaleToZeroGrace:
			// The stable average may still carry the tail of old traffic;
			// a full idle grace overrides it, or we would flap back up.
			d.Want, d.Reason = 0, ReasonScaleToZero
		case d.Want == 0 && ready > 0:
			d.Want, d.Reason = 1, ReasonIdleGrace
		}
	}

	if ready == 0 {
		// The first call after scale to zero must not wait for a window to fill.
		if active {
			d.Want, d.Reason = max(d.Want, 1), ReasonActivate
		}
	} else if limit := int(math.Ceil(float64(ready) * cfg.MaxScaleUpRate)); d.Want > limit {
		d.Want, d.Reason = limit, ReasonScaleUpRate
	}
	return a.clamp(d)
}

func (a *Autoscaler) clamp(d Decision) Decision {
	switch {
	case d.Want > a.cfg.Max:
		d.Want, d.Reason = a.cfg.Max, ReasonMax
	case d.Want < a.cfg.Min:
		d.Want, d.Reason = a.cfg.Min, ReasonMin
	}
	return d
}

// slot maps a time to its bucket number, flooring for times before 1970.
func (a *Autoscaler) slot(t time.Time) int64 {
	n, g := t.UnixNano(), int64(a.gran)
	q := n / g
	if n%g < 0 {
		q--
	}
	return q
}

// add merges sum/count into bucket idx, evicting whatever older bucket held
// the ring position. Data older than the ring position's content is dropped.
func (a *Autoscaler) add(idx int64, sum float64, count int) {
	n := int64(len(a.buckets))
	b := &a.buckets[((idx%n)+n)%n]
	switch {
	case b.count == 0 || idx > b.idx:
		*b = bucket{idx: idx, sum: sum, count: count}
	case idx == b.idx:
		b.sum += sum
		b.count += count
	}
}

// windowAvg averages the per-bucket means of the buckets in (now-w, now].
// Empty buckets are skipped so that the tick rate does not bias the result.
// ok is false when the window holds no samples.
func (a *Autoscaler) windowAvg(now time.Time, w time.Duration) (avg float64, ok bool) {
	hi := a.slot(now)
	lo := hi - int64(math.Ceil(float64(w)/float64(a.gran)))
	var sum float64
	var n int
	for _, b := range a.buckets {
		if b.count > 0 && b.idx > lo && b.idx <= hi {
			sum += b.sum / float64(b.count)
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return sum / float64(n), true
}

// newRing picks the bucket width: at most 1s, fine enough to give the panic
// window several buckets, yet coarse enough to keep the ring at maxBuckets.
func newRing(c Config) (time.Duration, []bucket) {
	gran := min(maxBucketGranularity, c.PanicWindow/panicWindowBuckets)
	gran = max(gran, minBucketGranularity, (c.StableWindow+maxBuckets-1)/maxBuckets)
	n := int((c.StableWindow+gran-1)/gran) + 1 // +1: the current, partly filled bucket
	return gran, make([]bucket, n)
}

// normalize fills defaults and validates.
func normalize(c Config) (Config, error) {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if c.Min < 0 {
		bad("min must not be negative (got %d)", c.Min)
	}
	if c.Max < 1 {
		bad("max must be at least 1 (got %d)", c.Max)
	}
	if c.Min > c.Max && c.Max >= 1 {
		bad("min (%d) must not exceed max (%d)", c.Min, c.Max)
	}
	floatDefault(&c.TargetConcurrency, DefaultTargetConcurrency)
	floatDefault(&c.PanicThreshold, DefaultPanicThreshold)
	floatDefault(&c.MaxScaleUpRate, DefaultMaxScaleUpRate)
	durDefault(&c.StableWindow, DefaultStableWindow)
	durDefault(&c.PanicWindow, DefaultPanicWindow)
	durDefault(&c.ScaleToZeroGrace, DefaultScaleToZeroGrace)
	if !(c.TargetConcurrency > 0) || math.IsInf(c.TargetConcurrency, 0) {
		bad("target concurrency must be positive and finite (got %v)", c.TargetConcurrency)
	}
	if !(c.PanicThreshold > 1) || math.IsInf(c.PanicThreshold, 0) {
		bad("panic threshold must be greater than 1 and finite (got %v)", c.PanicThreshold)
	}
	if !(c.MaxScaleUpRate > 1) || math.IsInf(c.MaxScaleUpRate, 0) {
		bad("max scale-up rate must be greater than 1 and finite (got %v)", c.MaxScaleUpRate)
	}
	if c.StableWindow < 0 {
		bad("stable window must not be negative (got %v)", c.StableWindow)
	}
	if c.PanicWindow < 0 {
		bad("panic window must not be negative (got %v)", c.PanicWindow)
	}
	if c.ScaleToZeroGrace < 0 {
		bad("scale-to-zero grace must not be negative (got %v)", c.ScaleToZeroGrace)
	}
	if c.PanicWindow > 0 && c.StableWindow > 0 && c.PanicWindow >= c.StableWindow {
		bad("panic window (%v) must be shorter than stable window (%v)", c.PanicWindow, c.StableWindow)
	}
	if len(errs) > 0 {
		return Config{}, errors.New("autoscale: invalid config: " + strings.Join(errs, "; "))
	}
	return c, nil
}

// floatDefault replaces an unset (zero) value; negative values are left for
// validation to reject.
func floatDefault(v *float64, def float64) {
	if *v == 0 {
		*v = def
	}
}

func durDefault(v *time.Duration, def time.Duration) {
	if *v == 0 {
		*v = def
	}
}
