package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/runagent-go/runagent/bench/internal/loadgen"
	"github.com/runagent-go/runagent/bench/internal/procs"
)

// bench is one run of the harness.
type bench struct {
	ctx         context.Context
	opts        *options
	started     time.Time
	tmp         string // this run's scratch folder
	python      string // absolute path of -python
	agentID     string
	info        machineInfo
	origVenv    string
	fastapiVenv string
}

// result is everything measured for one server.
type result struct {
	kind    kind
	version string
	skipped string // why it was not measured ("" if it was)

	startup time.Duration // process start -> first successful /run
	idleRSS int64
	idlePer []procs.ProcRSS
	loadRSS int64 // after all the load
	loadPer []procs.ProcRSS

	thr       loadgen.ThroughputResult
	serverCPU time.Duration // during the throughput test (warm-up + window)
	serverPer []procs.ProcCPU
	clientCPU time.Duration
	otherCPU  time.Duration // used by other processes of the machine meanwhile: noise
	thrWall   time.Duration

	lat loadgen.LatencyResult

	streams    []loadgen.StreamResult
	ttfb       []time.Duration
	ttfbErrors int
	ttfbFirst  string
	ttfbLimit  bool

	problems []string // wire check failures, errors, anything odd

	agentID string // the agent called (the platform deploys its own)
	token   string // API key sent with every call ("" for none)

	platform platformResult // only for the platform server
}

func (r *result) problemf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.problems = append(r.problems, msg)
	fmt.Fprintf(os.Stderr, "  !! %s: %s\n", r.kind.name, msg)
}

func (r *result) measured() bool { return r.skipped == "" }

// errors is the number of failed requests and streams.
func (r *result) errors() int64 {
	n := r.thr.Errors + int64(r.lat.Errors) + int64(r.ttfbErrors) + int64(r.platform.coldErrors)
	for _, s := range r.streams {
		if !s.Completed() {
			n++
		}
	}
	return n
}

func newBench(ctx context.Context, o *options) (*bench, error) {
	b := &bench{ctx: ctx, opts: o, started: time.Now()}
	py, err := exec.LookPath(o.python)
	if err != nil {
		return nil, fmt.Errorf("-python %s: %w", o.python, err)
	}
	if b.python, err = filepath.Abs(py); err != nil {
		return nil, err
	}
	cfg, err := os.ReadFile(filepath.Join(o.root, "bench", "agent", "runagent.config.json"))
	if err != nil {
		return nil, err
	}
	var c struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(cfg, &c); err != nil || c.AgentID == "" {
		return nil, fmt.Errorf("bench/agent/runagent.config.json: no agent_id (%v)", err)
	}
	b.agentID = c.AgentID
	if b.tmp, err = os.MkdirTemp("", "runagent-bench-"); err != nil {
		return nil, err
	}
	b.info = gatherMachineInfo(ctx, b.python)
	return b, nil
}

func (b *bench) cleanup() {
	procs.StopAll(3 * time.Second)
	if b.opts.keepCache {
		fmt.Fprintf(os.Stderr, "bench: kept this run's files in %s\n", b.tmp)
		return
	}
	os.RemoveAll(b.tmp)
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%5.1fs] %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) rel(p string) string {
	if r, err := filepath.Rel(b.opts.root, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}

func (b *bench) runAll() []*result {
	ks := kinds()
	var out []*result
	for _, name := range b.opts.only {
		if b.ctx.Err() != nil {
			break
		}
		r := &result{kind: ks[name], agentID: b.agentID}
		out = append(out, r)
		b.logf("== %s: %s", name, r.kind.label)
		v, err := r.kind.setup(b)
		if err != nil {
			r.skipped = "setup failed: " + err.Error()
			b.logf("%s: NOT MEASURED: %s", name, r.skipped)
			continue
		}
		r.version = v
		b.logf("%s: %s", name, v)
		b.measure(r)
		if r.skipped != "" {
			b.logf("%s: NOT MEASURED: %s", name, r.skipped)
		}
	}
	return out
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (b *bench) measure(r *result) {
	o := b.opts
	dir := filepath.Join(b.tmp, r.kind.name)
	agentDir := filepath.Join(dir, "agent")
	if err := copyDir(filepath.Join(o.root, "bench", "agent"), agentDir); err != nil {
		r.skipped = "copy agent: " + err.Error()
		return
	}
	port, err := freePort()
	if err != nil {
		r.skipped = "no free port: " + err.Error()
		return
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	b.waitQuiet(r.kind.name)
	t0 := time.Now()
	p, err := r.kind.start(b, agentDir, dir, port)
	if err != nil {
		r.skipped = "start failed: " + err.Error()
		return
	}
	defer func() {
		b.logf("%s: stopping (pid %d)", r.kind.name, p.Pid())
		p.Stop(5 * time.Second)
	}()
	b.logf("%s: started pid %d on %s, waiting for it to answer", r.kind.name, p.Pid(), addr)
	if r.kind.prepare != nil {
		if err := r.kind.prepare(b, r, p, dir, agentDir, addr); err != nil {
			r.skipped = fmt.Sprintf("prepare: %v\n--- last lines of %s ---\n%s", err, p.LogPath, p.LogTail(25))
			return
		}
	}

	runBody, _ := json.Marshal(map[string]any{
		"entrypoint_tag": "minimal", "input_args": []any{}, "input_kwargs": map[string]any{"message": o.message},
	})
	if err := b.waitReady(p, addr, r, runBody); err != nil {
		r.skipped = fmt.Sprintf("did not start: %v\n--- last lines of %s ---\n%s", err, p.LogPath, p.LogTail(25))
		return
	}
	r.startup = time.Since(t0)
	b.logf("%s: answering after %.2fs", r.kind.name, r.startup.Seconds())
	b.checkWire(r, addr, runBody)

	// Idle memory: after start, one call, and a moment of rest.
	sleepCtx(b.ctx, o.settle)
	r.idlePer = procs.TreeRSSByProc(p.Pid())
	for _, pr := range r.idlePer {
		r.idleRSS += pr.RSS
	}
	b.logf("%s: idle RSS %.1f MiB%s", r.kind.name, mib(r.idleRSS), rssParts(r.idlePer))

	req := loadgen.RunRequest(addr, r.agentID, r.token, runBody)

	// 1. /run throughput at N connections; measured again (after waiting
	// for quiet) when other processes took CPU meanwhile.
	for attempt := 0; ; attempt++ {
		b.logf("%s: /run throughput, %d connections, %s warm-up + %s", r.kind.name, o.conns, o.warmup, o.duration)
		cpu0, self0, sys0, w0 := procs.TreeCPUs(p.Pid()), procs.SelfCPU(), procs.SystemBusy(), time.Now()
		r.thr = loadgen.Throughput(b.ctx, addr, req, o.conns, o.warmup, o.duration, o.callTimeout)
		r.clientCPU, r.thrWall = procs.SelfCPU()-self0, time.Since(w0)
		r.serverPer, r.serverCPU = procs.TreeCPUs(p.Pid()).Since(cpu0)
		r.otherCPU = max(0, procs.SystemBusy()-sys0-r.serverCPU-r.clientCPU)
		if b.ctx.Err() != nil {
			return
		}
		b.logf("%s:   %.0f calls/s (%d ok, %d errors in the window)", r.kind.name, r.thr.CallsPerSec, r.thr.OK, r.thr.Errors)
		if !b.noisy(r, "the throughput test", r.otherCPU.Seconds()/r.thrWall.Seconds(), attempt) {
			break
		}
	}
	if r.thr.Errors > 0 || r.thr.WarmupErr > 0 {
		r.problemf("/run throughput: %d errors in the window, %d in warm-up; first: %s", r.thr.Errors, r.thr.WarmupErr, r.thr.FirstError)
	}
	if b.ctx.Err() != nil || b.dead(r, p) {
		return
	}

	// 2. /run latency at 1 connection, likewise.
	for attempt := 0; ; attempt++ {
		b.logf("%s: /run latency, 1 connection, %d calls (at most %s)", r.kind.name, o.latCalls, o.latMax)
		cpu0, self0, sys0, w0 := procs.TreeCPU(p.Pid()), procs.SelfCPU(), procs.SystemBusy(), time.Now()
		r.lat = loadgen.Latency(b.ctx, addr, req, o.latWarmup, 3*time.Second, o.latCalls, o.latMax, o.callTimeout)
		other := procs.SystemBusy() - sys0 - (procs.TreeCPU(p.Pid()) - cpu0) - (procs.SelfCPU() - self0)
		if b.ctx.Err() != nil {
			return
		}
		b.logf("%s:   p50 %s p99 %s over %d calls", r.kind.name, ms(loadgen.Percentile(r.lat.Samples, 50)),
			ms(loadgen.Percentile(r.lat.Samples, 99)), len(r.lat.Samples))
		if !b.noisy(r, "the latency test", other.Seconds()/time.Since(w0).Seconds(), attempt) {
			break
		}
	}
	if r.lat.Errors > 0 {
		r.problemf("/run latency: %d errors; first: %s", r.lat.Errors, r.lat.FirstError)
	}
	if b.ctx.Err() != nil || b.dead(r, p) {
		return
	}

	// 3. One long stream, several times.
	longReq := loadgen.StreamRequest("count_stream", map[string]any{"n": o.streamChunks})
	warm := loadgen.Stream(b.ctx, addr, r.agentID, r.token, loadgen.StreamRequest("count_stream", map[string]any{"n": 1000}), o.streamTimeout)
	if warm.Err != nil && b.ctx.Err() == nil {
		r.problemf("warm-up stream (count_stream n=1000): %v", warm.Err)
	}
	for i := range o.streamRuns {
		if b.ctx.Err() != nil {
			return
		}
		s := loadgen.Stream(b.ctx, addr, r.agentID, r.token, longReq, o.streamTimeout)
		r.streams = append(r.streams, s)
		if s.Completed() {
			b.logf("%s: stream %d/%d: %d chunks in %s = %.0f chunks/s", r.kind.name, i+1, o.streamRuns,
				s.Chunks, s.Elapsed.Round(time.Millisecond), float64(s.Chunks)/s.Elapsed.Seconds())
			if s.Chunks != o.streamChunks {
				r.problemf("stream %d: %d chunks, want %d", i+1, s.Chunks, o.streamChunks)
			}
		} else {
			r.problemf("stream %d (count_stream n=%d) failed: %v", i+1, o.streamChunks, s.Err)
		}
	}
	if b.ctx.Err() != nil || b.dead(r, p) {
		return
	}

	// 4. Time to first chunk over small streams (plus a few warm-ups).
	b.logf("%s: time to first chunk, %d minimal_stream streams (at most %s)", r.kind.name, o.ttfbStreams, o.ttfbMax)
	smallReq := loadgen.StreamRequest("minimal_stream", map[string]any{"message": o.message})
	end := time.Now().Add(o.ttfbMax)
	for i := range 5 + o.ttfbStreams {
		if b.ctx.Err() != nil {
			return
		}
		left := time.Until(end)
		if left <= 0 {
			r.ttfbLimit = true
			break
		}
		s := loadgen.Stream(b.ctx, addr, r.agentID, r.token, smallReq, min(left, o.streamTimeout))
		if !s.Completed() {
			if time.Now().After(end) {
				r.ttfbLimit = true
				break
			}
			r.ttfbErrors++
			if r.ttfbFirst == "" {
				r.ttfbFirst = s.Err.Error()
			}
			continue
		}
		if i >= 5 {
			r.ttfb = append(r.ttfb, s.FirstChunk)
		}
	}
	b.logf("%s:   first chunk p50 %s over %d streams", r.kind.name, ms(loadgen.Percentile(r.ttfb, 50)), len(r.ttfb))
	if r.ttfbErrors > 0 {
		r.problemf("time to first chunk: %d failed streams; first: %s", r.ttfbErrors, r.ttfbFirst)
	}
	if r.ttfbLimit {
		r.problemf("time to first chunk: stopped by the %s limit after %d streams", o.ttfbMax, len(r.ttfb))
	}
	r.loadPer = procs.TreeRSSByProc(p.Pid())
	for _, pr := range r.loadPer {
		r.loadRSS += pr.RSS
	}
	b.logf("%s: RSS after the load %.1f MiB%s", r.kind.name, mib(r.loadRSS), rssParts(r.loadPer))
	if b.dead(r, p) || b.ctx.Err() != nil {
		return
	}
	// 5. What only this server measures (the platform's scale from zero).
	if r.kind.after != nil {
		r.kind.after(b, r, p, dir, addr)
		b.dead(r, p)
	}
}

// noisy reports whether a phase should be measured again because other
// processes used more than 15% of a core meanwhile (after waiting for quiet);
// when out of retries the result is kept and flagged.
func (b *bench) noisy(r *result, phase string, other float64, attempt int) bool {
	if other <= 0.15 || b.ctx.Err() != nil {
		return false
	}
	if attempt >= b.opts.noiseRetries {
		r.problemf("other processes used %.0f%% CPU during %s: the machine was not quiet, the numbers are noisy", 100*other, phase)
		return false
	}
	b.logf("%s: other processes used %.0f%% CPU during %s; measuring it again", r.kind.name, 100*other, phase)
	b.waitQuiet(r.kind.name)
	return true
}

// waitQuiet waits (at most -quiet-wait) until the rest of the machine uses
// less than 15% of one core, so that a server is not measured while other
// work (a build, a test suite) competes for the same cores.
func (b *bench) waitQuiet(name string) {
	if b.opts.quietWait <= 0 {
		return
	}
	end := time.Now().Add(b.opts.quietWait)
	said := false
	for b.ctx.Err() == nil {
		busy0, self0 := procs.SystemBusy(), procs.SelfCPU()
		sleepCtx(b.ctx, time.Second)
		other := (procs.SystemBusy() - busy0 - (procs.SelfCPU() - self0)).Seconds()
		if other < 0.15 {
			if said {
				b.logf("%s: the machine is quiet now", name)
			}
			return
		}
		if time.Now().After(end) {
			b.logf("%s: other processes still use %.0f%% CPU after %s; measuring anyway (numbers will be noisy)", name, 100*other, b.opts.quietWait)
			return
		}
		if !said {
			b.logf("%s: other processes use %.0f%% CPU; waiting up to %s for the machine to be quiet", name, 100*other, b.opts.quietWait)
			said = true
		}
	}
}

// dead notes a server that exited under load.
func (b *bench) dead(r *result, p *procs.Proc) bool {
	if exited, err := p.Exited(); exited {
		r.problemf("the server exited during the test (%v); last lines of its log:\n%s", err, p.LogTail(25))
		return true
	}
	return false
}

// waitReady polls /api/v1/health and then POST /run until a call succeeds.
func (b *bench) waitReady(p *procs.Proc, addr string, r *result, runBody []byte) error {
	deadline := time.Now().Add(b.opts.startTimeout)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: loopbackDial}}
	defer client.CloseIdleConnections()
	var last error
	for time.Now().Before(deadline) {
		if b.ctx.Err() != nil {
			return b.ctx.Err()
		}
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("the server exited (%v)", err)
		}
		resp, err := postRun(client, addr, r, runBody)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && bytes.Contains(body, loadgen.SuccessMarker) {
				return nil
			}
			last = fmt.Errorf("POST /run: HTTP %d: %s", resp.StatusCode, clip(body, 300))
		} else {
			last = err
		}
		sleepCtx(b.ctx, 100*time.Millisecond)
	}
	return fmt.Errorf("no successful /run within %s (last: %v)", b.opts.startTimeout, last)
}

// postRun is POST /api/v1/agents/{id}/run with r's agent and key.
func postRun(client *http.Client, addr string, r *result, body []byte) (*http.Response, error) {
	req, err := http.NewRequest("POST", fmt.Sprintf("http://%s/api/v1/agents/%s/run", addr, r.agentID), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	return client.Do(req)
}

func loopbackDial(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := loadgen.CheckLoopback(addr); err != nil {
		return nil, err
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// checkWire makes sure the server speaks the same wire format as the others,
// so that the numbers compare like with like.
func (b *bench) checkWire(r *result, addr string, runBody []byte) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: loopbackDial}}
	defer client.CloseIdleConnections()
	resp, err := postRun(client, addr, r, runBody)
	if err != nil {
		r.problemf("wire check: POST /run: %v", err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var env struct {
		Success   bool    `json:"success"`
		Data      any     `json:"data"`
		Message   *string `json:"message"`
		Error     any     `json:"error"`
		Timestamp string  `json:"timestamp"`
		RequestID string  `json:"request_id"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		r.problemf("wire check: /run answer is not JSON: %s", clip(body, 200))
		return
	}
	data, ok := env.Data.(string)
	if !env.Success || !ok || env.Timestamp == "" || env.RequestID == "" {
		r.problemf("wire check: unexpected /run envelope: %s", clip(body, 300))
		return
	}
	var ss struct {
		Type    string `json:"type"`
		Payload string `json:"payload"`
	}
	var text string
	if err := json.Unmarshal([]byte(data), &ss); err != nil || ss.Type != "string" || json.Unmarshal([]byte(ss.Payload), &text) != nil ||
		!strings.Contains(text, b.opts.message) {
		r.problemf("wire check: /run data is not the structured string of the reply: %q", clip([]byte(data), 200))
	}
	s := loadgen.Stream(b.ctx, addr, r.agentID, r.token, loadgen.StreamRequest("count_stream", map[string]any{"n": 3}), 30*time.Second)
	if !s.Completed() || s.Chunks != 3 {
		r.problemf("wire check: count_stream n=3: %d chunks, %v", s.Chunks, s.Err)
		return
	}
	var df struct {
		Type    string `json:"type"`
		Content string `json:"content"`
	}
	if json.Unmarshal(s.FirstData, &df) != nil || df.Type != "data" ||
		json.Unmarshal([]byte(df.Content), &ss) != nil || ss.Type != "string" || ss.Payload != `"c0"` {
		r.problemf("wire check: unexpected first data frame %s", clip(s.FirstData, 200))
	}
}

func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() && (d.Name() == "__pycache__" || d.Name() == ".runagent") {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func clip(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// rssParts is " (runagent 12.0 MiB + python3 26.1 MiB)" for several processes.
func rssParts(per []procs.ProcRSS) string {
	if len(per) < 2 {
		return ""
	}
	var parts []string
	for _, p := range per {
		parts = append(parts, fmt.Sprintf("%s %.1f MiB", p.Comm, mib(p.RSS)))
	}
	return " (" + strings.Join(parts, " + ") + ")"
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/1e6) }
