package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // only reachable through --debug-addr
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/autoscale"
	"github.com/runagent-go/runagent/internal/dispatch"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/manager"
	"github.com/runagent-go/runagent/internal/pyenv"
	"github.com/runagent-go/runagent/internal/pyrunner"
	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/drivers"
	"github.com/runagent-go/runagent/internal/sandbox/microvm"
	"github.com/runagent-go/runagent/internal/server"
	"github.com/runagent-go/runagent/internal/store"
)

// FirstPort is where port auto-allocation starts, as in the original.
const FirstPort = 8450

// serveQueue bounds the calls waiting for the local server's one instance
// (past its threads) before OVERLOADED: generous, as the runner's own queue
// was before.
const serveQueue = 10000

type serveOptions struct {
	host      string
	port      int
	python    string
	timeout   time.Duration
	maxBody   int64
	threads   int
	sandbox   string
	network   bool
	logFormat string
	logLevel  string
	debugAddr string
	microVM   microvm.Options
	http      httpTimeouts
	data      dataFlags
}

func (a *app) serveCommand() *cobra.Command {
	o := serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve [PATH]",
		Short: "Serve an agent folder on a local port (REST + WebSocket)",
		Long: `Serve the agent in PATH (default: the current folder) over the RunAgent wire
protocol. Its requirements.txt, if any, is installed into a cached virtualenv
first. Without --port the first free port from 8450 is used. The agent is
registered in the local registry so that SDKs can find it by id alone.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := "."
			if len(args) == 1 {
				dir = args[0]
			}
			return a.serve(cmd.Context(), dir, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.host, "host", "127.0.0.1", "address to listen on")
	f.IntVar(&o.port, "port", 0, "port to listen on (default: the first free port from 8450)")
	f.StringVar(&o.python, "python", "", "Python interpreter (default: $RUNAGENT_PYTHON, then python3 on PATH)")
	f.DurationVar(&o.timeout, "timeout", server.DefaultCallTimeout, "longest a call may run before it fails with TIMEOUT")
	f.Int64Var(&o.maxBody, "max-body", server.DefaultMaxBodyBytes, "largest request body in bytes (413 beyond)")
	f.IntVar(&o.threads, "threads", 32, "worker threads for the agent's sync functions")
	f.StringVar(&o.sandbox, "sandbox", "process", "isolate the agent as the platform server would: "+strings.Join(sandbox.Names(), ", "))
	addMicroVMFlags(f, &o.microVM)
	addHTTPFlags(f, &o.http)
	addDataFlags(f, &o.data)
	f.BoolVar(&o.network, "network", true, "with a sandbox other than process: let the agent reach the network")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.debugAddr, "debug-addr", "", "serve Go's pprof profiles on this address (e.g. 127.0.0.1:6060)")
	f.MarkHidden("debug-addr")
	return cmd
}

func (a *app) serve(ctx context.Context, dir string, o serveOptions) error {
	log, err := a.logger(o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	folder, err := agentfolder.Load(dir)
	if err != nil {
		return err
	}
	cfg := folder.Config
	if cfg.AgentArchitecture == nil || len(cfg.AgentArchitecture.Entrypoints) == 0 {
		return fmt.Errorf("%s: agent_architecture.entrypoints: the agent has no entrypoints to serve; add at least one {\"file\", \"module\", \"tag\"}",
			filepath.Join(folder.Dir, folder.ConfigFile))
	}
	cache := CacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return fmt.Errorf("create cache directory %s (set $%s to use another): %w", cache, EnvCacheDir, err)
	}

	py, err := pyenv.Find(ctx, o.python)
	if err != nil {
		return err
	}
	env, err := pyenv.Prepare(ctx, py, folder.Dir, cache, a.stderr)
	if err != nil {
		return err
	}
	script, err := pyrunner.WriteScript(cache)
	if err != nil {
		return err
	}

	ln, err := listen(o.host, o.port)
	if err != nil {
		return err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	db, err := store.Open(filepath.Join(cache, "runagent_invocations.db"), store.WithLogger(log),
		// Commit history at most every few ms: one transaction per batch,
		// not per call, keeps SQLite off the cores the calls need.
		store.WithBatch(0, 5*time.Millisecond))
	if err != nil {
		return err
	}
	defer db.Close()

	sandboxes := drivers.New(drivers.Builtin(o.microVM), sandbox.Options{StateDir: filepath.Join(cache, "sandbox"), Log: log})
	defer sandboxes.Close()
	drv, err := sandboxes.Get(o.sandbox)
	if err != nil {
		return fmt.Errorf("--sandbox %s: %w", o.sandbox, err)
	}
	// One instance, supervised by the platform's pool: restarted when it
	// dies, replaced when it stops answering health checks.
	agentLog := log.With("agent_id", cfg.AgentID)
	spec := manager.InstanceSpec{
		Folder: folder, Env: env, Script: script, Driver: drv, Network: o.network,
		Limits: domain.Limits{WorkDirBytes: 256 << 20}, Threads: o.threads + 2, Flow: o.data.flow, Log: agentLog,
		OnLog: func(_, invocation, stream, text string) {
			agentLog.Info("agent print", "stream", stream, "invocation_id", invocation, "text", text)
		},
	}
	pool, err := manager.NewPool(cfg.AgentID, 1, manager.PoolConfig{
		Scale:          autoscale.Config{Min: 1, Max: 1, TargetConcurrency: float64(o.threads)},
		MaxConcurrency: o.threads, MaxQueue: serveQueue, HealthInterval: 5 * time.Second,
	}, spec.StartFunc(), nil, agentLog)
	if err != nil {
		return err
	}
	defer pool.Close()
	fmt.Fprintf(a.stderr, "Starting the agent runner (%s, Python %s)...\n", shortPath(env.Python), py.Version)
	t0 := time.Now()
	if err := pool.Warm(ctx, 1); err != nil {
		return err
	}
	runCtx, stopPool := context.WithCancel(ctx)
	defer stopPool()
	go pool.Run(runCtx, time.Second)
	log.Info("agent runner ready", "startup", time.Since(t0).Round(time.Millisecond))

	// With persistent_folders, a call with user_id and persistent_memory
	// runs on an instance of the user's own that sees the user's folders.
	var forUser func(string) domain.Invoker
	if len(cfg.PersistentFolders) > 0 {
		users, err := manager.NewUserPools(manager.UserPoolsConfig{
			AgentID: cfg.AgentID, Version: 1, Dir: filepath.Join(cache, "users", cfg.AgentID), Bundle: folder.Dir,
			Folders: cfg.PersistentFolders, Spec: spec, Pool: pool.Config(), QuotaMB: manager.DefaultDeployment.PersistentQuotaMB,
			MaxUsers: manager.DefaultDeployment.MaxInstances,
		})
		if err != nil {
			return err
		}
		defer users.Close()
		go users.Run(runCtx, time.Second)
		forUser = users.Invoker
	}

	agent := folder.Agent()
	regPath := store.RegistryPath()
	registry := store.NewRegistryRecorder(regPath, cfg.AgentID, log)
	defer registry.Close()
	srv := server.New(server.Config{
		Agent: agent, Dispatcher: dispatch.Single(agent.Target(), pool, forUser), Recorder: db,
		OnCall: func(_ *domain.Agent, _ string, code domain.Code, _ time.Duration) { registry.Record(code == "") },
		Host:   o.host, Port: port, MaxBodyBytes: o.maxBody, CallTimeout: o.timeout,
		Logger: log, Version: a.version,
		// As the original: any page may call the local server (it has no
		// keys or cookies to protect).
		CORS:         server.CORSPolicy{Credentials: true},
		StallTimeout: o.data.stall, Heartbeat: o.data.heartbeatOf(),
		Health: func() map[string]any {
			for _, in := range pool.Status().Instances {
				if in.State == domain.StateReady {
					return map[string]any{"runner": "ready", "runner_pid": in.PID, "in_flight": in.InFlight}
				}
			}
			return map[string]any{"runner": "starting"}
		},
	})
	if err := store.UpsertRegistryAgent(ctx, regPath, domain.RegistryAgent{
		AgentID: cfg.AgentID, AgentPath: folder.Dir, Host: o.host, Port: port, Framework: cfg.Framework,
		AgentName: cfg.AgentName, Description: cfg.Description, Template: cfg.Template, Version: cfg.Version,
	}); err != nil {
		log.Warn("could not register the agent in the local registry; SDKs will need host and port", "path", regPath, "error", err)
	}

	if o.debugAddr != "" {
		go func() {
			log.Info("pprof listening", "addr", o.debugAddr)
			ds := httpServer(http.DefaultServeMux, o.http, log)
			ds.Addr = o.debugAddr
			log.Warn("pprof stopped", "error", ds.ListenAndServe())
		}()
	}
	hs := httpServer(srv.Handler(), o.http, log)
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	a.banner(folder, o.host, port)

	select {
	case err := <-served:
		return fmt.Errorf("server stopped: %w", err)
	case <-ctx.Done():
	}
	fmt.Fprintln(a.stderr, "Shutting down: finishing in-flight calls (up to 10s)...")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
	return nil
}

// listen binds host:port, or the first free port from FirstPort.
func listen(host string, port int) (net.Listener, error) {
	if port != 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, fmt.Errorf("port %d on %s is already in use: stop what uses it, or omit --port to pick a free one", port, host)
			}
			return nil, fmt.Errorf("listen on %s:%d: %w", host, port, err)
		}
		return ln, nil
	}
	for p := FirstPort; p < FirstPort+100; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(p)))
		if err == nil {
			return ln, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("listen on %s:%d: %w", host, p, err)
		}
	}
	return nil, fmt.Errorf("no free port from %d to %d on %s: choose one with --port", FirstPort, FirstPort+99, host)
}

func (a *app) banner(folder *agentfolder.Folder, host string, port int) {
	cfg := folder.Config
	base := fmt.Sprintf("http://%s", net.JoinHostPort(host, fmt.Sprint(port)))
	var tags []string
	for _, ep := range cfg.AgentArchitecture.Entrypoints {
		tags = append(tags, ep.Tag)
	}
	if a.json {
		a.printJSON(map[string]any{"event": "serving", "agent_id": cfg.AgentID, "host": host, "port": port, "url": base, "entrypoints": tags})
		return
	}
	fmt.Fprintf(a.stdout, `RunAgent is serving %q (framework %s)
  agent id     %s
  address      %s
  run          POST %s/api/v1/agents/%s/run
  stream       ws://%s/api/v1/agents/%s/run-stream
  entrypoints  %s
Call it: runagent run --id %s --tag %s --message=hello
Press Ctrl+C to stop.
`, cfg.AgentName, cfg.Framework, cfg.AgentID, base, base, cfg.AgentID, net.JoinHostPort(host, fmt.Sprint(port)), cfg.AgentID,
		strings.Join(tags, ", "), cfg.AgentID, tags[0])
}

func shortPath(p string) string {
	if home, err := os.UserHomeDir(); err == nil && strings.HasPrefix(p, home+"/") {
		return "~" + p[len(home):]
	}
	return p
}
