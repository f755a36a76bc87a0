package main

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/runagent-go/runagent/bench/internal/loadgen"
	"github.com/runagent-go/runagent/bench/internal/procs"
)

type report struct {
	opts      *options
	info      machineInfo
	results   []*result
	sandboxes []*sandboxResult
	elapsed   time.Duration
}

// metric is one row of the results table.
type metric struct {
	name         string
	unit         string
	higherBetter bool
	target       float64 // 0: none
	noRatio      bool
	// value is the number for a server; ok false means not available, note
	// flags a value measured with errors or cut short.
	value func(r *result) (v float64, ok bool, note string)
}

func (rep *report) metrics() []metric {
	o := rep.opts
	return []metric{
		{
			name: fmt.Sprintf("/run throughput, %d connections", o.conns), unit: "calls/s", higherBetter: true, target: 16000,
			value: func(r *result) (float64, bool, string) {
				if r.thr.Window == 0 {
					return 0, false, ""
				}
				return r.thr.CallsPerSec, true, errNote(r.thr.Errors)
			},
		},
		{
			name: "/run latency p50, 1 connection", unit: "ms", target: 0.25,
			value: func(r *result) (float64, bool, string) { return latency(r, 50) },
		},
		{
			name: "/run latency p99, 1 connection", unit: "ms",
			value: func(r *result) (float64, bool, string) { return latency(r, 99) },
		},
		{
			name: fmt.Sprintf("stream of %s chunks", thousands(float64(o.streamChunks))), unit: "chunks/s", higherBetter: true, target: 200000,
			value: func(r *result) (float64, bool, string) {
				rate, n := streamRate(r)
				if n == 0 {
					return 0, false, ""
				}
				return rate, true, errNote(int64(len(r.streams) - n))
			},
		},
		{
			name: "time to first chunk p50", unit: "ms", target: 0.25,
			value: func(r *result) (float64, bool, string) {
				if len(r.ttfb) == 0 {
					return 0, false, ""
				}
				note := errNote(int64(r.ttfbErrors))
				if r.ttfbLimit && note == "" {
					note = "cut"
				}
				return msf(loadgen.Percentile(r.ttfb, 50)), true, note
			},
		},
		{
			name: "RSS idle (server + runners)", unit: "MiB", target: 40,
			value: func(r *result) (float64, bool, string) {
				return mib(r.idleRSS), r.idleRSS > 0, ""
			},
		},
		{
			name: "RSS after the load", unit: "MiB",
			value: func(r *result) (float64, bool, string) {
				return mib(r.loadRSS), r.loadRSS > 0, ""
			},
		},
		{
			name: "start to first answer", unit: "s", noRatio: true,
			value: func(r *result) (float64, bool, string) {
				return r.startup.Seconds(), r.startup > 0, ""
			},
		},
	}
}

func latency(r *result, p float64) (float64, bool, string) {
	if len(r.lat.Samples) == 0 {
		return 0, false, ""
	}
	note := errNote(int64(r.lat.Errors))
	if r.lat.Limited && note == "" {
		note = fmt.Sprintf("%d calls", len(r.lat.Samples))
	}
	return msf(loadgen.Percentile(r.lat.Samples, p)), true, note
}

// streamRate is the mean chunks/s of the completed long streams.
func streamRate(r *result) (float64, int) {
	var sum float64
	n := 0
	for _, s := range r.streams {
		if s.Completed() && s.Elapsed > 0 {
			sum += float64(s.Chunks) / s.Elapsed.Seconds()
			n++
		}
	}
	if n == 0 {
		return 0, 0
	}
	return sum / float64(n), n
}

func errNote(n int64) string {
	if n == 0 {
		return ""
	}
	if n == 1 {
		return "1 error"
	}
	return fmt.Sprintf("%d errors", n)
}

func (rep *report) byName(name string) *result {
	for _, r := range rep.results {
		if r.kind.name == name {
			return r
		}
	}
	return nil
}

func (rep *report) totalErrors() int64 {
	var n int64
	for _, s := range rep.sandboxes {
		n += int64(s.errors)
	}
	for _, r := range rep.results {
		if r.measured() {
			n += r.errors()
		}
	}
	return n
}

// cell is a formatted value of metric m for server name ("n/a" if absent).
func (rep *report) cell(m metric, name string) string {
	r := rep.byName(name)
	if r == nil {
		return "—"
	}
	if !r.measured() {
		return "not run"
	}
	v, ok, note := m.value(r)
	if !ok {
		if note != "" {
			return "failed (" + note + ")"
		}
		return "failed"
	}
	s := formatValue(v, m.unit)
	if note != "" {
		s += " (" + note + ")"
	}
	return s
}

// ratio is ours / other for metric m, "" if either is missing.
func (rep *report) ratio(m metric, other string) string {
	ours, theirs := rep.byName("ours"), rep.byName(other)
	if m.noRatio || ours == nil || theirs == nil || !ours.measured() || !theirs.measured() {
		return "—"
	}
	a, ok1, _ := m.value(ours)
	b, ok2, _ := m.value(theirs)
	if !ok1 || !ok2 || b == 0 {
		return "—"
	}
	return formatRatio(a / b)
}

func (rep *report) meets(m metric) string {
	if m.target == 0 {
		return ""
	}
	r := rep.byName("ours")
	if r == nil || !r.measured() {
		return "—"
	}
	v, ok, note := m.value(r)
	if !ok {
		return "no"
	}
	met := v >= m.target
	if !m.higherBetter {
		met = v <= m.target
	}
	switch {
	case met && note != "" && strings.Contains(note, "error"):
		return "yes, but with errors"
	case met:
		return "yes"
	default:
		return "no"
	}
}

func (m metric) targetString() string {
	if m.target == 0 {
		return ""
	}
	op := "≤"
	if m.higherBetter {
		op = "≥"
	}
	return op + " " + formatValue(m.target, m.unit)
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "calls/s", "chunks/s":
		return thousands(v)
	case "ms":
		if v >= 100 {
			return fmt.Sprintf("%.0f ms", v)
		}
		if v >= 10 {
			return fmt.Sprintf("%.1f ms", v)
		}
		return fmt.Sprintf("%.3f ms", v)
	case "MiB":
		return fmt.Sprintf("%.1f MiB", v)
	case "s":
		return fmt.Sprintf("%.2f s", v)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

func formatRatio(x float64) string {
	switch {
	case x >= 100:
		return fmt.Sprintf("%.0f×", x)
	case x >= 10:
		return fmt.Sprintf("%.1f×", x)
	case x >= 0.1:
		return fmt.Sprintf("%.2f×", x)
	default:
		return fmt.Sprintf("%.3f×", x)
	}
}

// thousands formats a count with thousands separators: 16,000.
func thousands(v float64) string {
	n := int64(math.Round(v))
	s := fmt.Sprint(n)
	if n < 0 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func msf(d time.Duration) float64 { return float64(d) / 1e6 }

func pct(cpu, wall time.Duration) string {
	if wall <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f%%", 100*cpu.Seconds()/wall.Seconds())
}

var serverOrder = []string{"ours", "platform", "original", "fastapi"}

// overhead is what the platform's gateway adds to runagent serve for metric
// m: a signed difference for times and sizes, a ratio for rates.
func (rep *report) overhead(m metric) string {
	ours, plat := rep.byName("ours"), rep.byName("platform")
	if ours == nil || plat == nil || !ours.measured() || !plat.measured() {
		return "—"
	}
	a, ok1, _ := m.value(ours)
	b, ok2, _ := m.value(plat)
	if !ok1 || !ok2 {
		return "—"
	}
	if m.higherBetter {
		if a == 0 {
			return "—"
		}
		return formatRatio(b / a)
	}
	d := b - a
	sign := "+"
	if d < 0 {
		sign, d = "−", -d
	}
	return sign + formatValue(d, m.unit)
}

// coldRows are the platform's scale-from-zero numbers: name, value.
func (rep *report) coldRows() [][2]string {
	r := rep.byName("platform")
	if r == nil || !r.measured() {
		return nil
	}
	c := r.platform
	if len(c.coldTTFB) == 0 {
		return [][2]string{{"call at zero instances → first byte", fmt.Sprintf("failed (%d errors: %s)", c.coldErrors, c.coldFirst)}}
	}
	note := fmt.Sprintf(" (%d calls", len(c.coldTTFB))
	if c.coldErrors > 0 {
		note += ", " + errNote(int64(c.coldErrors))
	}
	note += ")"
	return [][2]string{
		{"call at zero instances → first byte, p50", formatValue(msf(loadgen.Percentile(c.coldTTFB, 50)), "ms") + note},
		{"call at zero instances → first byte, min … max", formatValue(msf(slices.Min(c.coldTTFB)), "ms") + " … " + formatValue(msf(slices.Max(c.coldTTFB)), "ms")},
		{"call at zero instances → whole answer, p50", formatValue(msf(loadgen.Percentile(c.coldTotal, 50)), "ms")},
	}
}

// sandboxRows are the sandbox table's header and rows.
func (rep *report) sandboxRows() [][]string {
	var base *sandboxResult
	for _, s := range rep.sandboxes {
		if s.name == "process" && s.skipped == "" && len(s.calls) > 0 {
			base = s
		}
	}
	rows := [][]string{{"driver", "first start", "start → ready p50", "min … max", "floor: bare tool, python -c pass", "idle RSS", "call p50", "call p99", "call adds (p50)"}}
	for _, s := range rep.sandboxes {
		if s.skipped != "" {
			rows = append(rows, []string{s.name, "not measured: " + firstLine(s.skipped), "", "", "", "", "", "", ""})
			continue
		}
		row := []string{s.name, "—", "—", "—", "—", formatValue(mib(s.idleRSS), "MiB"), "—", "—", "—"}
		if s.first > 0 {
			row[1] = formatValue(msf(s.first), "ms")
		}
		if len(s.starts) > 0 {
			row[2] = formatValue(msf(loadgen.Percentile(s.starts, 50)), "ms")
			row[3] = formatValue(msf(slices.Min(s.starts)), "ms") + " … " + formatValue(msf(slices.Max(s.starts)), "ms")
		}
		if len(s.floor) > 0 {
			row[4] = formatValue(msf(loadgen.Percentile(s.floor, 50)), "ms")
		}
		if len(s.calls) > 0 {
			row[6] = formatValue(msf(loadgen.Percentile(s.calls, 50)), "ms")
			row[7] = formatValue(msf(loadgen.Percentile(s.calls, 99)), "ms")
			if base != nil {
				d := msf(loadgen.Percentile(s.calls, 50)) - msf(loadgen.Percentile(base.calls, 50))
				row[8] = fmt.Sprintf("%+.3f ms", d)
			}
		}
		if s.errors > 0 {
			row[0] += fmt.Sprintf(" (%s; first: %s)", errNote(int64(s.errors)), s.firstErr)
		}
		rows = append(rows, row)
	}
	return rows
}

// text is the console summary.
func (rep *report) text() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nRunAgent benchmark, %s, %d cores (%s), %s, %s; took %s\n\n",
		rep.info.date.Format("2006-01-02 15:04 UTC"), rep.info.nproc, rep.info.cpuModel, rep.info.goVer, rep.info.pyVer,
		rep.elapsed.Round(time.Second))
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tours\toriginal\tfastapi\tours/original\tours/fastapi\ttarget\tmet\t")
	for _, m := range rep.metrics() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", m.name, rep.cell(m, "ours"), rep.cell(m, "original"), rep.cell(m, "fastapi"),
			rep.ratio(m, "original"), rep.ratio(m, "fastapi"), m.targetString(), rep.meets(m))
	}
	tw.Flush()
	sb.WriteString("\nRatios are ours / theirs: above 1 is better for calls/s and chunks/s, below 1 is better for ms and MiB.\n")
	if p := rep.byName("platform"); p != nil && p.measured() {
		sb.WriteString("\nPlatform server (runagent server: API key + rate limit + pool) against runagent serve:\n")
		tw = tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "metric\tserve\tserver\tgateway adds\t")
		for _, m := range rep.metrics() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", m.name, rep.cell(m, "ours"), rep.cell(m, "platform"), rep.overhead(m))
		}
		for _, row := range rep.coldRows() {
			fmt.Fprintf(tw, "%s\t\t%s\t\t\n", row[0], row[1])
		}
		tw.Flush()
	}
	if len(rep.sandboxes) > 0 {
		sb.WriteString("\nSandbox drivers (the runner started and called through each, no HTTP):\n")
		tw = tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
		for _, row := range rep.sandboxRows() {
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()
	}
	for _, name := range serverOrder {
		r := rep.byName(name)
		if r == nil {
			continue
		}
		if !r.measured() {
			fmt.Fprintf(&sb, "\n%s NOT MEASURED: %s\n", name, r.skipped)
			continue
		}
		fmt.Fprintf(&sb, "%s: %s; %s\n", name, r.version, rep.detail(r))
	}
	for _, r := range rep.results {
		for _, p := range r.problems {
			fmt.Fprintf(&sb, "PROBLEM %s: %s\n", r.kind.name, p)
		}
	}
	if n := rep.totalErrors(); n > 0 {
		fmt.Fprintf(&sb, "\nTHIS RUN HAD %d FAILED CALLS OR STREAMS: the numbers marked above are not clean.\n", n)
	}
	return sb.String()
}

// detail is one line of supporting numbers for a server.
func (rep *report) detail(r *result) string {
	var parts []string
	parts = append(parts, fmt.Sprintf("throughput window %d ok / %d errors, CPU during it: server %s%s + load generator %s + other processes %s (of %d00%%)",
		r.thr.OK, r.thr.Errors, pct(r.serverCPU, r.thrWall), perProc(r.serverPer, r.thrWall), pct(r.clientCPU, r.thrWall),
		pct(r.otherCPU, r.thrWall), rep.info.nproc))
	lat := fmt.Sprintf("latency over %d calls (mean %.3f ms)", len(r.lat.Samples), msf(loadgen.Mean(r.lat.Samples)))
	if r.lat.Limited {
		lat += fmt.Sprintf(", stopped by the %s limit", rep.opts.latMax)
	}
	parts = append(parts, lat)
	var runs []string
	for _, s := range r.streams {
		if s.Completed() {
			runs = append(runs, fmt.Sprintf("%.0f", float64(s.Chunks)/s.Elapsed.Seconds()))
		} else {
			runs = append(runs, "failed")
		}
	}
	parts = append(parts, "stream runs (chunks/s) "+strings.Join(runs, ", "))
	parts = append(parts, fmt.Sprintf("first chunk over %d streams (p90 %.3f ms)", len(r.ttfb), msf(loadgen.Percentile(r.ttfb, 90))))
	parts = append(parts, fmt.Sprintf("idle RSS %.1f MiB in %d process(es)%s", mib(r.idleRSS), len(r.idlePer), rssParts(r.idlePer)))
	if len(r.loadPer) > 1 {
		parts = append(parts, fmt.Sprintf("RSS after the load %.1f MiB%s", mib(r.loadRSS), rssParts(r.loadPer)))
	}
	return strings.Join(parts, "; ")
}

// perProc is " (runagent 40%, python3 60%)" when the server is several
// processes, by process name.
func perProc(per []procs.ProcCPU, wall time.Duration) string {
	if len(per) < 2 {
		return ""
	}
	by := map[string]time.Duration{}
	var names []string
	for _, p := range per {
		if _, ok := by[p.Comm]; !ok {
			names = append(names, p.Comm)
		}
		by[p.Comm] += p.CPU
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(by[b], by[a]) })
	var parts []string
	for _, n := range names {
		parts = append(parts, n+" "+pct(by[n], wall))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// markdown is the report for docs/benchmarks.md.
func (rep *report) markdown() string {
	o, info := rep.opts, rep.info
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("# Benchmarks\n\n")
	w("This page is written by the benchmark harness (`bench/cmd/bench`); regenerate it with\n\n")
	w("```sh\nmake bench BENCHFLAGS=\"-write docs/benchmarks.md\"\n```\n\n")
	w("Three servers serve the same mock agent (`bench/agent`: the default template's `minimal` and\n")
	w("`minimal_stream`, plus `count_stream(n)`, a sync generator of `n` short strings), one after the\n")
	w("other, on the same machine as the load generator; a fourth run serves it from the platform server\n")
	w("(`runagent server`) behind its gateway, for the [gateway's overhead](#platform-server) and the time a\n")
	w("call takes from zero instances. Run on %s; the whole run took %s.\n\n",
		info.date.Format("2006-01-02 15:04 UTC"), rep.elapsed.Round(time.Second))

	w("## Machine\n\n| | |\n|---|---|\n")
	w("| cores (nproc) | %d, shared by the server under test and the load generator |\n", info.nproc)
	w("| CPU | %s |\n", info.cpuModel)
	if info.memTotal != "" {
		w("| memory | %s |\n", info.memTotal)
	}
	if info.kernel != "" {
		w("| OS | %s |\n", info.kernel)
	}
	w("| Go | %s |\n", info.goVer)
	w("| Python | %s (`%s`) |\n\n", info.pyVer, info.python)

	w("## Servers\n\n| | server | version |\n|---|---|---|\n")
	for _, name := range serverOrder {
		r := rep.byName(name)
		if r == nil {
			continue
		}
		v := r.version
		if !r.measured() {
			v = "**not measured**: " + firstLine(r.skipped)
		}
		w("| %s | %s | %s |\n", name, r.kind.label, mdEscape(v))
	}
	w("\n")

	w("## Results\n\n")
	w("| metric | ours | original | fastapi | ours / original | ours / fastapi |\n|---|--:|--:|--:|--:|--:|\n")
	for _, m := range rep.metrics() {
		w("| %s | %s | %s | %s | %s | %s |\n", m.name, rep.cell(m, "ours"), rep.cell(m, "original"), rep.cell(m, "fastapi"),
			rep.ratio(m, "original"), rep.ratio(m, "fastapi"))
	}
	w("\nRatios are ours / theirs: above 1 is better for calls/s and chunks/s, below 1 is better for ms and MiB.\n")
	if n := rep.totalErrors(); n > 0 {
		w("\n**This run had %d failed calls or streams**; the values marked with errors are not clean.\n", n)
	}

	if p := rep.byName("platform"); p != nil {
		w("\n## Platform server\n\n")
		w("The same agent deployed to `runagent server` with `runagent deploy`, pinned to one instance that takes\n")
		w("32 calls at once (as `runagent serve` runs its one Python process with 32 threads), called with a run\n")
		w("key whose rate and concurrency limits are checked on every call but set high enough never to refuse\n")
		w("one. Each call goes through the key check (SHA-256 and constant-time compare), the token bucket and\n")
		w("concurrency limiter, and the pool's least-busy dispatch, and is answered only once its history row\n")
		w("is committed to SQLite (so that a crash loses no answered call; `runagent serve` writes its history\n")
		w("a few milliseconds after the answer): under load that is about one commit per few calls, which is\n")
		w("what the server's throughput at 32 connections pays. \"Gateway adds\" is server minus serve\n")
		w("(times and sizes) or server / serve (rates).\n\n")
		if !p.measured() {
			w("**Not measured**: %s\n", mdEscape(strings.ReplaceAll(p.skipped, "\n", " ⏎ ")))
		} else {
			w("| metric | `runagent serve` | `runagent server` | gateway adds |\n|---|--:|--:|--:|\n")
			for _, m := range rep.metrics() {
				w("| %s | %s | %s | %s |\n", m.name, rep.cell(m, "ours"), rep.cell(m, "platform"), rep.overhead(m))
			}
			w("\n\"Start to first answer\" of the server includes `runagent deploy` (pack, upload, start).\n\n")
			w("**Scale from zero.** A second copy of the agent is deployed with `min_instances` 0 and a 1 s idle\n")
			w("timeout. %d times, the harness waits until its pool has no instance left, then times one `/run` call\n", rep.opts.coldStarts)
			w("(new connection) from the request to the answer's first byte: the server starts a runner, imports the\n")
			w("agent, and the call runs once the instance is ready.\n\n")
			w("| | `runagent server` |\n|---|--:|\n")
			for _, row := range rep.coldRows() {
				w("| %s | %s |\n", row[0], row[1])
			}
		}
	}

	if len(rep.sandboxes) > 0 {
		w("\n## Sandboxes\n\n")
		w("The runner started and called through each sandbox driver directly (`runner.Start`, as the manager\n")
		w("does; no HTTP), serving the same agent: %d timed starts after a first one (start → READY: the\n", rep.opts.sandboxStarts)
		w("sandbox set up, Python started, the runner and the agent imported), the RSS of the last instance's\n")
		w("whole process tree when idle, and %d sequential `minimal` calls over its channel. The floor is the\n", max(1, rep.opts.latCalls/3))
		w("driver's tool alone starting `python -c pass` (`python`, `bwrap --unshare-all`, `runsc do`), the least\n")
		w("a start through it can cost. \"Call adds\" is the call p50 minus the process driver's.\n\n")
		w("The microvm driver has two rows. Its first start boots the VM (cold boot to ready) and saves the\n")
		w("snapshot; in the \"restored\" row every later start restores a new QEMU from it (restore to ready), in\n")
		w("the \"warm pool\" row a VM restored ahead of time is handed out (2 s between starts let the pool\n")
		w("refill). Its guest has 256 MiB (the 96 MiB limit every driver gets here, plus 160 MiB for the guest's\n")
		w("kernel and supervisor); its idle RSS is QEMU's. In parentheses: KVM, or QEMU's emulation (tcg).\n\n")
		rows := rep.sandboxRows()
		w("| %s |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|\n", strings.Join(rows[0], " | "))
		for _, row := range rows[1:] {
			for i := range row {
				row[i] = mdEscape(row[i])
			}
			w("| %s |\n", strings.Join(row, " | "))
		}
	}

	w("\n## Targets\n\nThe targets set for this server, checked against the numbers above:\n\n")
	w("| target | ours | met |\n|---|--:|---|\n")
	for _, m := range rep.metrics() {
		if m.target == 0 {
			continue
		}
		w("| %s %s | %s | %s |\n", m.name, m.targetString(), rep.cell(m, "ours"), rep.meets(m))
	}

	w("\n## Details\n\n")
	for _, name := range serverOrder {
		r := rep.byName(name)
		if r == nil {
			continue
		}
		if !r.measured() {
			w("- **%s**: not measured: %s\n", name, mdEscape(strings.ReplaceAll(r.skipped, "\n", " ⏎ ")))
			continue
		}
		w("- **%s**: %s.\n", name, rep.detail(r))
	}
	var problems []string
	for _, r := range rep.results {
		for _, p := range r.problems {
			problems = append(problems, fmt.Sprintf("- %s: %s", r.kind.name, mdEscape(strings.ReplaceAll(p, "\n", " ⏎ "))))
		}
	}
	if len(problems) > 0 {
		w("\n### Problems seen during the run\n\n%s\n", strings.Join(problems, "\n"))
	}

	w("\n## Method\n\n")
	w("- **Servers.** *ours*: `bin/runagent serve bench/agent` (a copy of it), with `RUNAGENT_CACHE_DIR` in a\n")
	w("  temp dir; the tree is the Go server and its Python runner. *original*: `pip install runagent==%s` into\n", o.origVersion)
	w("  `bench/.cache`, then, with a fresh `RUNAGENT_CACHE_DIR` and no `RUNAGENT_API_KEY` (so its middleware\n")
	w("  sync stays off and it never goes online), `runagent config --register-agent <folder>` (no prompt for a\n")
	w("  new agent; stdin is `/dev/null`, so any prompt would fail instead of waiting) and\n")
	w("  `runagent serve <folder> --port P --no-animation`; one process, with its SQLite invocation history and\n")
	w("  console logging on every call, exactly as users run it. *fastapi*: `bench/fastapi_app.py` on uvicorn,\n")
	w("  one worker, no access log, in a virtualenv with `%s`: the same wire format\n", o.fastapiPkgs)
	w("  (envelope, structured string, WebSocket frames) and the same way of running sync functions and\n")
	w("  generators as the original, without its database and logging. *platform*: `bin/runagent server`\n")
	w("  (SQLite, process instances), the agent deployed with `runagent deploy` and called with a run key (see\n")
	w("  [Platform server](#platform-server)). The servers run one at a time.\n")
	w("- **Load generator.** Go, in the same run: a minimal HTTP/1.1 keep-alive client on raw `net.Conn`\n")
	w("  (one pre-encoded request; status line, `Content-Length` or chunked body read; a call counts only if\n")
	w("  it is HTTP 200 with `\"success\":true` in the body, otherwise it is an error), and gorilla/websocket for\n")
	w("  streams. It shares the %d cores with the server: the Details list the CPU both used.\n", info.nproc)
	w("- **/run throughput**: %d connections send `minimal` back to back for %s after a %s warm-up; calls\n", o.conns, o.duration, o.warmup)
	w("  completing inside the window are counted.\n")
	w("- **/run latency**: one connection, %d warm-up calls, then %d sequential calls (stopping after %s for\n", o.latWarmup, o.latCalls, o.latMax)
	w("  slow servers); p50 and p99 of the call time as the client sees it.\n")
	w("- **Streaming**: `count_stream` with n=%d over `/run-stream`, %d times after a warm-up stream; chunks/s is\n", o.streamChunks, o.streamRuns)
	w("  n / (request frame sent → `stream_completed` received), averaged. Each run checks that the number of\n")
	w("  data frames equals `total_chunks`.\n")
	w("- **Time to first chunk**: %d `minimal_stream` streams after 5 warm-ups, each on a new WebSocket; the\n", o.ttfbStreams)
	w("  time from sending the request frame to receiving the first data frame (the handshake excluded).\n")
	w("- **RSS**: the sum of `VmRSS` over the server process and all its descendants (from `/proc`), %s after\n", o.settle)
	w("  the server first answered (idle), and again after all the load.\n")
	w("- Before measuring, each server's `/run` answer and first stream frame are checked to be the same wire\n")
	w("  format, so that like is compared with like.\n")
	w("- **The agent.** `bench/agent/main.py`, one file served by all three: the default template's mock\n")
	w("  replies inlined (no sibling import) and without its per-call `print()`, so that what is measured is\n")
	w("  the server rather than where each one sends an agent's stdout.\n")
	w("- **Noise.** Before each server the harness waits (up to %s) for the rest of the machine to use under\n", o.quietWait)
	w("  15%% of a core, measures what other processes used during the throughput and latency tests, repeats a\n")
	w("  disturbed test (up to %d times) and lists it under Problems if it stayed disturbed.\n", o.noiseRetries)
	return sb.String()
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func mdEscape(s string) string {
	return strings.ReplaceAll(s, "|", "\\|")
}
