// Command bench measures this server against the original RunAgent 0.1.49
// server and a bare FastAPI + uvicorn app, all serving the same mock agent
// (bench/agent), one after the other on this machine; and the platform
// server (runagent server) serving it behind its gateway, for the gateway's
// overhead and the time a call takes from zero instances.
//
//	go run ./bench/cmd/bench [-duration 5s] [-conns 32] [-only ours,platform,original,fastapi] [-write docs/benchmarks.md]
//
// Run it from the repository root (make bench does). The first run creates
// the Python virtualenvs of the original and of the FastAPI baseline under
// bench/.cache; later runs reuse them. Every request goes to 127.0.0.1, every
// loop is bounded in count and time, and every server started is stopped on
// exit, Ctrl+C included.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/runagent-go/runagent/bench/internal/procs"
	"github.com/runagent-go/runagent/internal/sandbox"
)

type options struct {
	root          string
	bin           string
	python        string
	cacheDir      string
	only          []string
	write         string
	keepCache     bool
	reinstall     bool
	conns         int
	warmup        time.Duration
	duration      time.Duration
	latCalls      int
	latWarmup     int
	latMax        time.Duration
	streamChunks  int
	streamRuns    int
	streamTimeout time.Duration
	ttfbStreams   int
	ttfbMax       time.Duration
	coldStarts    int
	sandboxes     []string
	sandboxStarts int
	callTimeout   time.Duration
	startTimeout  time.Duration
	settle        time.Duration
	quietWait     time.Duration
	noiseRetries  int
	origVersion   string
	fastapiPkgs   string
	message       string
}

var allKinds = []string{"ours", "platform", "original", "fastapi"}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.StringVar(&o.root, "root", "", "repository root (default: found from the working directory)")
	fs.StringVar(&o.bin, "bin", "bin/runagent", "our server binary, relative to the root (built by `make build`; built here if missing)")
	fs.StringVar(&o.python, "python", "python3", "Python interpreter for the virtualenvs and for our runner")
	fs.StringVar(&o.cacheDir, "cache", "bench/.cache", "where the virtualenvs live, relative to the root (kept between runs)")
	only := fs.String("only", strings.Join(allKinds, ","), "servers to measure, comma-separated: "+strings.Join(allKinds, ","))
	fs.StringVar(&o.write, "write", "", "also write a markdown report to this file (e.g. docs/benchmarks.md)")
	fs.BoolVar(&o.keepCache, "keep-cache", false, "keep this run's temp dir (each server's RUNAGENT_CACHE_DIR, agent copy and log)")
	fs.BoolVar(&o.reinstall, "reinstall", false, "recreate the virtualenvs")
	fs.IntVar(&o.conns, "conns", 32, "concurrent keep-alive connections for the /run throughput test")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "warm-up before the throughput window")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "throughput window")
	fs.IntVar(&o.latCalls, "lat-calls", 3000, "sequential calls for the 1-connection latency test")
	fs.IntVar(&o.latWarmup, "lat-warmup", 300, "warm-up calls before the latency test (at most 3 s)")
	fs.DurationVar(&o.latMax, "lat-max", 20*time.Second, "time limit of the latency test (slow servers give fewer samples)")
	fs.IntVar(&o.streamChunks, "stream-chunks", 10000, "chunks in the long stream (count_stream n)")
	fs.IntVar(&o.streamRuns, "stream-runs", 3, "long streams to average")
	fs.DurationVar(&o.streamTimeout, "stream-timeout", 120*time.Second, "time limit of one long stream")
	fs.IntVar(&o.ttfbStreams, "ttfb-streams", 50, "small streams (minimal_stream) for time to first chunk")
	fs.DurationVar(&o.ttfbMax, "ttfb-max", 60*time.Second, "time limit of the time-to-first-chunk test")
	sbx := fs.String("sandboxes", "process,namespace,gvisor,microvm", "sandbox drivers to measure (start to ready, idle RSS, call round trip); empty: none")
	fs.IntVar(&o.sandboxStarts, "sandbox-starts", 10, "instance starts timed per sandbox driver")
	fs.IntVar(&o.coldStarts, "cold-starts", 5, "platform: calls timed from zero instances (each after the agent scaled to zero)")
	fs.DurationVar(&o.callTimeout, "call-timeout", 30*time.Second, "time limit of one /run call")
	fs.DurationVar(&o.startTimeout, "start-timeout", 120*time.Second, "time limit for a server to start and answer")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "idle time after start before the idle RSS is read")
	fs.DurationVar(&o.quietWait, "quiet-wait", 2*time.Minute, "before each server, wait up to this long for other processes to go quiet (0: don't)")
	fs.IntVar(&o.noiseRetries, "noise-retries", 2, "measure throughput / latency again up to this many times when other processes took CPU meanwhile")
	fs.StringVar(&o.origVersion, "original-version", "0.1.49", "PyPI version of runagent to compare against")
	fs.StringVar(&o.fastapiPkgs, "fastapi-pkgs", "fastapi==0.115.12 uvicorn==0.34.1 websockets==15.0.1",
		"packages of the FastAPI baseline's virtualenv (default: the versions runagent 0.1.49 resolves to)")
	fs.StringVar(&o.message, "message", "Hello from the benchmark", "the message kwarg sent to minimal / minimal_stream")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for k := range strings.SplitSeq(*only, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		valid := false
		for _, a := range allKinds {
			valid = valid || a == k
		}
		if !valid {
			return nil, fmt.Errorf("-only: unknown server %q (want %s)", k, strings.Join(allKinds, ","))
		}
		o.only = append(o.only, k)
	}
	for name := range strings.SplitSeq(*sbx, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if err := sandbox.CheckName(name); err != nil {
			return nil, fmt.Errorf("-sandboxes: %w", err)
		}
		o.sandboxes = append(o.sandboxes, name)
	}
	if o.sandboxStarts < 1 {
		return nil, errors.New("-sandbox-starts must be positive")
	}
	if len(o.only) == 0 && len(o.sandboxes) == 0 {
		return nil, errors.New("-only: no server selected (-only '' measures only the -sandboxes)")
	}
	if o.conns < 1 || o.conns > 1024 {
		return nil, errors.New("-conns must be between 1 and 1024")
	}
	if o.duration <= 0 || o.duration > 10*time.Minute || o.warmup < 0 || o.warmup > time.Minute {
		return nil, errors.New("-duration must be in (0, 10m] and -warmup in [0, 1m]")
	}
	if o.latCalls < 1 || o.streamChunks < 1 || o.streamRuns < 1 || o.ttfbStreams < 1 || o.coldStarts < 1 {
		return nil, errors.New("-lat-calls, -stream-chunks, -stream-runs, -ttfb-streams and -cold-starts must be positive")
	}
	if o.root == "" {
		r, err := findRoot()
		if err != nil {
			return nil, err
		}
		o.root = r
	}
	if !filepath.IsAbs(o.bin) {
		o.bin = filepath.Join(o.root, o.bin)
	}
	if !filepath.IsAbs(o.cacheDir) {
		o.cacheDir = filepath.Join(o.root, o.cacheDir)
	}
	if o.write != "" && !filepath.IsAbs(o.write) {
		o.write = filepath.Join(o.root, o.write)
	}
	return o, nil
}

// findRoot walks up from the working directory to the folder holding
// bench/agent/runagent.config.json.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "bench", "agent", "runagent.config.json")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the repository root (bench/agent/runagent.config.json); run from the repo or pass -root")
		}
		dir = parent
	}
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	o, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	// Whatever happens (panic included), no server outlives the harness.
	defer procs.StopAll(3 * time.Second)

	b, err := newBench(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer b.cleanup()

	results := b.runAll()
	sandboxes := b.runSandboxes()
	if ctx.Err() != nil {
		procs.StopAll(3 * time.Second)
		fmt.Fprintln(os.Stderr, "\nbench: interrupted; servers stopped, nothing written")
		return 130
	}
	rep := &report{opts: o, info: b.info, results: results, sandboxes: sandboxes, elapsed: time.Since(b.started)}
	fmt.Print(rep.text())
	if o.write != "" {
		if err := os.WriteFile(o.write, []byte(rep.markdown()+keptTail(o.write)), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench: write report:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "bench: report written to %s\n", o.write)
	}
	if rep.totalErrors() > 0 {
		return 1
	}
	return 0
}

// keptMarker starts the part of a report page written by hand (A/B runs of
// two binaries, notes): a new report replaces what is above it and keeps it.
const keptMarker = "<!-- written by hand below: the harness keeps this part -->"

// keptTail returns the hand-written part of the page at path, from its
// marker on ("" if there is none).
func keptTail(path string) string {
	old, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if i := strings.Index(string(old), keptMarker); i >= 0 {
		return "\n" + string(old[i:])
	}
	return ""
}
