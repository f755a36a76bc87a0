package autoscale

import (
	"math"
	"strings"
	"testing"
	"time"
)

// t0 is second-aligned so that 1s ticks land in consecutive buckets.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// sim drives an Autoscaler along a fake timeline with one sample and one
// decision per tick. With follow set, ready instantly becomes the last Want,
// as if instances started immediately.
type sim struct {
	t      *testing.T
	a      *Autoscaler
	now    time.Time
	tick   time.Duration
	ready  int
	follow bool
	last   Decision
}

func newSim(t *testing.T, c Config, ready int, follow bool) *sim {
	t.Helper()
	a, err := New(c)
	if err != nil {
		t.Fatalf("New(%+v): %v", c, err)
	}
	return &sim{t: t, a: a, now: t0, tick: time.Second, ready: ready, follow: follow}
}

// step advances one tick, records the load and decides.
func (s *sim) step(inFlight, queued int) Decision {
	s.now = s.now.Add(s.tick)
	s.a.Record(Sample{At: s.now, InFlight: inFlight, Queued: queued})
	s.last = s.a.Decide(s.now, s.ready)
	if s.follow {
		s.ready = s.last.Want
	}
	return s.last
}

// run steps for d and returns every decision.
func (s *sim) run(d time.Duration, inFlight, queued int) []Decision {
	var out []Decision
	for end := s.now.Add(d); s.now.Before(end); {
		out = append(out, s.step(inFlight, queued))
	}
	return out
}

func (s *sim) expect(want int, reason string, panicking bool) {
	s.t.Helper()
	d := s.last
	if d.Want != want || d.Reason != reason || d.Panic != panicking {
		s.t.Fatalf("at +%v: got want=%d reason=%q panic=%v (stable %.2f, panic %.2f), expected want=%d reason=%q panic=%v",
			s.now.Sub(t0), d.Want, d.Reason, d.Panic, d.StableAvg, d.PanicAvg, want, reason, panicking)
	}
}

func TestSteadyLoad(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ready  int
		follow bool
	}{
		{"fixed ready 2", 2, false},
		{"following from 2", 2, true},
		{"already oversized", 5, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{Min: 1, Max: 10}, tc.ready, tc.follow)
			s.run(60*time.Second, 8, 0)
			s.expect(2, ReasonStable, false)
			if s.last.StableAvg != 8 || s.last.PanicAvg != 8 {
				t.Fatalf("averages = %v/%v, want 8/8", s.last.StableAvg, s.last.PanicAvg)
			}
		})
	}
}

// burst runs a minute of light load (1 in flight, 1 instance), then 40 queued
// calls on top.
func burst(t *testing.T) *sim {
	t.Helper()
	s := newSim(t, Config{Min: 1, Max: 100}, 1, true)
	s.run(60*time.Second, 1, 0)
	s.expect(1, ReasonStable, false)
	return s
}

func TestBurstPanics(t *testing.T) {
	s := burst(t)
	start := s.now
	var firstPanic time.Time
	for s.now.Sub(start) < DefaultPanicWindow {
		d := s.step(1, 40)
		if d.Panic && firstPanic.IsZero() {
			firstPanic = s.now
			// The stable window alone would barely move yet.
			if stableOnly := int(math.Ceil(d.StableAvg / 4)); d.Want <= stableOnly {
				t.Fatalf("panic want %d not above stable-only want %d", d.Want, stableOnly)
			}
		}
	}
	if firstPanic.IsZero() {
		t.Fatal("no panic within the panic window")
	}
	// Once the panic window is full of the burst: ceil(41/4).
	s.expect(11, ReasonPanic, true)
}

func TestNoScaleDownDuringPanic(t *testing.T) {
	s := burst(t)
	s.run(10*time.Second, 1, 40)
	peak := s.last.Want
	for i, d := range s.run(40*time.Second, 1, 0) {
		if !d.Panic || d.Want < peak {
			t.Fatalf("tick %d after load drop: want=%d panic=%v, expected >= %d while panicking", i+1, d.Want, d.Panic, peak)
		}
	}
}

func TestLeavePanicAfterStableWindow(t *testing.T) {
	// Fixed ready 1 so the panic condition is easy to follow: it holds while
	// the 6-bucket panic average is >= 8, i.e. while at least two of the
	// five 40-call ticks (1..5) are in the panic window: through tick 9.
	s := newSim(t, Config{Min: 1, Max: 100}, 1, false)
	s.run(60*time.Second, 0, 0)
	base := s.now
	s.run(5*time.Second, 0, 40)
	for s.now.Sub(base) < 68*time.Second {
		if d := s.step(0, 0); !d.Panic {
			t.Fatalf("left panic early at tick %v", s.now.Sub(base))
		}
	}
	// Tick 69 is a full StableWindow after the last panic condition.
	d := s.step(0, 0)
	if d.Panic || d.Reason == ReasonPanic {
		t.Fatalf("still panicking at tick %v: %+v", s.now.Sub(base), d)
	}
	if d.Want != 1 {
		t.Fatalf("want after panic = %d, want 1 (stable avg %.2f)", d.Want, d.StableAvg)
	}
}

func TestSlowDecay(t *testing.T) {
	s := newSim(t, Config{Min: 1, Max: 100}, 10, true)
	s.run(60*time.Second, 40, 0)
	s.expect(10, ReasonStable, false)

	prev := s.last.Want
	for i, d := range s.run(60*time.Second, 0, 0) {
		if d.Panic || d.Want > prev {
			t.Fatalf("tick %d: want=%d (prev %d) panic=%v: decay must be monotone and calm", i+1, d.Want, prev, d.Panic)
		}
		prev = d.Want
		switch i + 1 {
		case 1:
			if d.Want != 10 { // one idle second barely moves a 60s average
				t.Fatalf("want right after drop = %d, want 10", d.Want)
			}
		case 30:
			if d.Want != 5 { // half the window still at 40
				t.Fatalf("want at +30s = %d, want 5", d.Want)
			}
		}
	}
	s.expect(1, ReasonMin, false)
}

func TestScaleToZero(t *testing.T) {
	for _, tc := range []struct {
		name    string
		grace   time.Duration
		holding string // reason while waiting for the grace once the average is 0
	}{
		{"grace shorter than stable window", 30 * time.Second, ""},
		{"grace longer than stable window", 90 * time.Second, ReasonIdleGrace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{Min: 0, Max: 5, ScaleToZeroGrace: tc.grace}, 1, true)
			s.run(20*time.Second, 4, 0)
			lastActive := s.now
			sawHolding := false
			for s.now.Sub(lastActive) < tc.grace-time.Second {
				d := s.step(0, 0)
				if d.Want < 1 {
					t.Fatalf("scaled to zero %v after last traffic, grace %v", s.now.Sub(lastActive), tc.grace)
				}
				sawHolding = sawHolding || d.Reason == ReasonIdleGrace
			}
			if tc.holding != "" && !sawHolding {
				t.Fatalf("never reported %q while waiting", tc.holding)
			}
			s.step(0, 0)
			s.expect(0, ReasonScaleToZero, false)
			// The stable average may still hold old traffic; must not flap.
			for _, d := range s.run(2*time.Minute, 0, 0) {
				if d.Want != 0 {
					t.Fatalf("flapped back to %d while idle: %+v", d.Want, d)
				}
			}
		})
	}
}

func TestScaleToZeroWithoutEverSeeingTraffic(t *testing.T) {
	s := newSim(t, Config{Min: 0, Max: 5}, 1, true)
	// The idle clock starts at the first sample, one tick in.
	s.run(DefaultScaleToZeroGrace, 0, 0)
	s.expect(1, ReasonIdleGrace, false)
	s.step(0, 0)
	s.expect(0, ReasonScaleToZero, false)
}

func TestActivateFromZero(t *testing.T) {
	for _, tc := range []struct {
		name             string
		inFlight, queued int
	}{
		{"first queued call", 0, 1},
		{"in flight on a draining instance", 1, 0},
		{"burst", 0, 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{Min: 0, Max: 5}, 0, true)
			s.run(5*time.Minute, 0, 0)
			s.expect(0, ReasonScaleToZero, false)
			d := s.step(tc.inFlight, tc.queued)
			if d.Want < 1 || d.Reason != ReasonActivate {
				t.Fatalf("first call after idle: %+v, want >= 1 with reason %q", d, ReasonActivate)
			}
			s.run(10*time.Second, tc.inFlight, tc.queued)
			if s.last.Want < 1 {
				t.Fatalf("dropped to zero under load: %+v", s.last)
			}
		})
	}
}

func TestClamps(t *testing.T) {
	for _, tc := range []struct {
		name             string
		cfg              Config
		ready            int
		inFlight, queued int
		noSamples        bool
		want             int
		reason           string
	}{
		{"max", Config{Min: 1, Max: 3}, 3, 40, 0, false, 3, ReasonMax},
		{"max during panic", Config{Min: 1, Max: 3}, 1, 0, 100, false, 3, ReasonMax},
		{"min", Config{Min: 2, Max: 5}, 2, 0, 0, false, 2, ReasonMin},
		{"min above stable", Config{Min: 2, Max: 5}, 2, 4, 0, false, 2, ReasonMin},
		{"no data holds ready", Config{Min: 1, Max: 5}, 3, 0, 0, true, 3, ReasonNoData},
		{"no data clamps to max", Config{Min: 1, Max: 5}, 7, 0, 0, true, 5, ReasonMax},
		{"no data clamps to min", Config{Min: 2, Max: 5}, 0, 0, 0, true, 2, ReasonMin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, tc.cfg, tc.ready, false)
			if tc.noSamples {
				s.last = s.a.Decide(t0, tc.ready)
			} else {
				s.run(60*time.Second, tc.inFlight, tc.queued)
			}
			s.expect(tc.want, tc.reason, s.last.Panic)
		})
	}
}

func TestNoDataAfterRecordingStops(t *testing.T) {
	s := newSim(t, Config{Min: 0, Max: 5}, 4, false)
	s.run(10*time.Second, 16, 0)
	d := s.a.Decide(s.now.Add(DefaultStableWindow+time.Second), 4)
	if d.Want != 4 || d.Reason != ReasonNoData {
		t.Fatalf("stale data: %+v, want hold 4 with reason %q", d, ReasonNoData)
	}
}

func TestMaxScaleUpRate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rate  float64
		ready int
		want  int
	}{
		{"double", 2, 2, 4},
		{"rounds up", 1.5, 3, 5},
		{"default is practically none", 0, 2, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Config{Min: 1, Max: 100, MaxScaleUpRate: tc.rate}, tc.ready, false)
			s.run(60*time.Second, 100, 0)
			if s.last.Want != tc.want {
				t.Fatalf("want = %d, expected %d: %+v", s.last.Want, tc.want, s.last)
			}
			if tc.rate != 0 && s.last.Reason != ReasonScaleUpRate {
				t.Fatalf("reason = %q, want %q", s.last.Reason, ReasonScaleUpRate)
			}
		})
	}
	// The rate cannot apply at zero: activation has no base to multiply, so
	// a burst from zero goes straight to the panic count, ceil(40/4).
	s := newSim(t, Config{Min: 0, Max: 100, MaxScaleUpRate: 2}, 0, false)
	s.step(0, 40)
	s.expect(10, ReasonActivate, true)
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" means valid
	}{
		{"defaults", Config{Max: 1}, ""},
		{"scale to zero", Config{Min: 0, Max: 3}, ""},
		{"min > max", Config{Min: 4, Max: 3}, "min (4) must not exceed max (3)"},
		{"negative min", Config{Min: -1, Max: 3}, "min must not be negative"},
		{"zero max", Config{Max: 0}, "max must be at least 1"},
		{"negative target", Config{Max: 1, TargetConcurrency: -1}, "target concurrency"},
		{"negative stable", Config{Max: 1, StableWindow: -time.Second}, "stable window must not be negative"},
		{"negative panic window", Config{Max: 1, PanicWindow: -time.Second}, "panic window must not be negative"},
		{"negative grace", Config{Max: 1, ScaleToZeroGrace: -time.Second}, "scale-to-zero grace"},
		{"panic == stable", Config{Max: 1, StableWindow: 10 * time.Second, PanicWindow: 10 * time.Second}, "must be shorter than stable window"},
		{"panic > default stable", Config{Max: 1, PanicWindow: 2 * time.Minute}, "must be shorter than stable window"},
		{"threshold <= 1", Config{Max: 1, PanicThreshold: 0.5}, "panic threshold"},
		{"rate <= 1", Config{Max: 1, MaxScaleUpRate: 1}, "max scale-up rate"},
		{"several at once", Config{Min: -1, Max: 0, TargetConcurrency: -2}, "max must be at least 1 (got 0); target concurrency"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.cfg)
			if tc.want == "" {
				if err != nil || a == nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error = %v, want it to contain %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "autoscale: invalid config: ") {
				t.Fatalf("error lacks package prefix: %v", err)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	a, err := New(Config{Max: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Min: 0, Max: 2,
		TargetConcurrency: 4, StableWindow: 60 * time.Second, PanicWindow: 6 * time.Second,
		PanicThreshold: 2, ScaleToZeroGrace: 60 * time.Second, MaxScaleUpRate: 1000,
	}
	if got := a.Config(); got != want {
		t.Fatalf("Config() = %+v, want %+v", got, want)
	}
}

func TestSetConfig(t *testing.T) {
	s := newSim(t, Config{Min: 1, Max: 10}, 2, false)
	s.run(60*time.Second, 8, 0)
	s.expect(2, ReasonStable, false)

	if err := s.a.SetConfig(Config{Min: 5, Max: 4}); err == nil {
		t.Fatal("SetConfig accepted min > max")
	}
	if got := s.a.Config().Max; got != 10 {
		t.Fatalf("failed SetConfig changed config: max = %d", got)
	}

	// Same windows: history kept as is.
	if err := s.a.SetConfig(Config{Min: 1, Max: 10, TargetConcurrency: 2}); err != nil {
		t.Fatal(err)
	}
	s.ready = 4
	s.step(8, 0)
	s.expect(4, ReasonStable, false)

	// New windows: history is re-bucketed, not lost.
	if err := s.a.SetConfig(Config{Min: 1, Max: 10, TargetConcurrency: 2, StableWindow: 30 * time.Second, PanicWindow: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	d := s.a.Decide(s.now, 4)
	if d.Reason == ReasonNoData || d.StableAvg != 8 || d.Want != 4 {
		t.Fatalf("after window change: %+v, want stable avg 8 and want 4", d)
	}
}

func TestSampleEdgeCases(t *testing.T) {
	a, err := New(Config{Min: 1, Max: 10})
	if err != nil {
		t.Fatal(err)
	}
	a.Record(Sample{At: t0.Add(2 * time.Minute), InFlight: 8})
	// Far older than the ring: ignored rather than overwriting new data.
	a.Record(Sample{At: t0, InFlight: 1000})
	// Negative counts are nonsense from the caller; counted as 0.
	a.Record(Sample{At: t0.Add(2*time.Minute + time.Second), InFlight: -5, Queued: 8})
	d := a.Decide(t0.Add(2*time.Minute+time.Second), 2)
	if d.StableAvg != 8 || d.Want != 2 {
		t.Fatalf("got %+v, want stable avg 8 and want 2", d)
	}
}

func TestMemoryBounded(t *testing.T) {
	a, err := New(Config{Min: 1, Max: 10})
	if err != nil {
		t.Fatal(err)
	}
	size := len(a.buckets)
	if size > 61 {
		t.Fatalf("ring has %d buckets for a 60s window at 1s", size)
	}
	now := t0
	for i := range 1_000_000 {
		now = t0.Add(time.Duration(i) * time.Millisecond)
		a.Record(Sample{At: now, InFlight: 8})
	}
	if len(a.buckets) != size || cap(a.buckets) != size {
		t.Fatalf("ring grew from %d to %d (cap %d)", size, len(a.buckets), cap(a.buckets))
	}
	if d := a.Decide(now, 2); d.StableAvg != 8 || d.Want != 2 {
		t.Fatalf("after 1e6 samples: %+v", d)
	}

	// Even a tiny panic window cannot make the ring unbounded.
	a, err = New(Config{Max: 1, StableWindow: 24 * time.Hour, PanicWindow: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.buckets) > maxBuckets+1 {
		t.Fatalf("ring has %d buckets, cap is %d", len(a.buckets), maxBuckets+1)
	}
}

func BenchmarkRecordDecide(b *testing.B) {
	a, err := New(Config{Min: 1, Max: 100})
	if err != nil {
		b.Fatal(err)
	}
	now := t0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		now = now.Add(100 * time.Millisecond)
		a.Record(Sample{At: now, InFlight: i % 50, Queued: i % 7})
		a.Decide(now, 10)
	}
}
