package cli

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/runagent-go/runagent/internal/bundle"
	"github.com/runagent-go/runagent/internal/manager"
	platformserver "github.com/runagent-go/runagent/internal/platform"
	"github.com/runagent-go/runagent/internal/pyenv"
	"github.com/runagent-go/runagent/internal/pyrunner"
	"github.com/runagent-go/runagent/internal/ratelimit"
	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/drivers"
	"github.com/runagent-go/runagent/internal/sandbox/microvm"
	"github.com/runagent-go/runagent/internal/server"
)

// DefaultServerPort is where `runagent server` listens by default.
const DefaultServerPort = 8400

type serverOptions struct {
	host, dataDir, db, python, metricsAddr string
	role, nodeID                           string
	nats                                   []string
	replicas                               int
	port                                   int
	allowPublic, allowNetwork              bool
	rate                                   float64
	burst, keyConcurrency                  int
	dep                                    manager.Deployment
	maxUpload, maxBundle, maxBody          int64
	maxFiles                               int
	async                                  platformserver.AsyncLimits
	tick, health, stable, panic            time.Duration
	logFormat, logLevel                    string
	microVM                                microvm.Options
	http                                   httpTimeouts
	data                                   dataFlags
	corsOrigins                            []string
	webhookAllow                           []string
	eventRetention                         time.Duration
}

func (a *app) serverCommand() *cobra.Command {
	o := serverOptions{dep: manager.DefaultDeployment}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the platform server: many agents deployed by upload, API keys, autoscaled instances",
		Long: `Run the RunAgent platform server. Agents are deployed to it with
runagent deploy PATH --server URL; each is served at the wire protocol's routes
(/api/v1/agents/ID/run, /run-stream, ...) to clients with an API key, in a pool
of instances that scales between its min and max (to zero when idle).

On first start it creates an admin key and writes it to DATA-DIR/admin-key;
runagent keys/deploy/agents read it from there when run on the same machine.
The API is described in docs/platform-api.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return a.runServer(cmd.Context(), o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.host, "host", "127.0.0.1", "address to listen on")
	f.IntVar(&o.port, "port", DefaultServerPort, "port to listen on")
	f.StringVar(&o.dataDir, "data-dir", "", "where the platform keeps its database and agent bundles (default $RUNAGENT_CACHE_DIR/server)")
	f.StringVar(&o.db, "db", "", "keep the platform's state in PostgreSQL at this postgres:// URL instead of SQLite in the data directory (alone: one server per database or schema; a cluster's gateways and nodes share one)")
	f.StringVar(&o.role, "role", "all", "this server's part in a cluster: all (alone), gateway (the API; calls go to the nodes over NATS) or node (runs instances); see docs/multinode.md")
	f.StringSliceVar(&o.nats, "nats", nil, "NATS servers of the cluster (nats://host:4222, repeat or comma-separate), for --role gateway or node")
	f.StringVar(&o.nodeID, "node-id", "", "this server's name in the cluster (default: the host name and a random suffix)")
	f.IntVar(&o.replicas, "nats-replicas", 1, "how many NATS servers keep each agent bundle (JetStream replicas; 3 in a three-server cluster)")
	f.StringVar(&o.python, "python", "", "Python interpreter (default: $RUNAGENT_PYTHON, then python3 on PATH)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve /metrics on this address instead of the main listener")
	f.StringVar(&o.dep.Sandbox, "sandbox", o.dep.Sandbox, "how instances are isolated: "+strings.Join(sandbox.Names(), ", ")+
		" (agents may ask for a stronger one in their deployment section, never a weaker one)")
	addMicroVMFlags(f, &o.microVM)
	addHTTPFlags(f, &o.http)
	addDataFlags(f, &o.data)
	f.DurationVar(&o.eventRetention, "event-retention", 24*time.Hour, "keep the event log of a stream that outlived its client (on_disconnect continue) this long after it ends, for re-joins")
	f.StringSliceVar(&o.webhookAllow, "webhook-allow", nil, "networks (CIDR, like 10.0.0.0/8) runs' webhooks may reach although they are loopback, private or reserved; repeat or comma-separate (default: none)")
	f.StringSliceVar(&o.corsOrigins, "cors-origin", nil, "web pages (origins like https://app.example.com) that may call the server from a browser; repeat or comma-separate (default: any page, never with cookies)")
	f.BoolVar(&o.allowNetwork, "allow-agent-network", true, "let agents that ask for it (deployment.network) reach the network; false refuses them (needs a sandbox other than process)")
	f.BoolVar(&o.allowPublic, "allow-public", false, `let agents whose auth_settings.type is "none" be called without a key`)
	f.Float64Var(&o.rate, "rate", 50, "default requests per second per API key (0: no limit)")
	f.IntVar(&o.burst, "burst", 100, "default burst per API key")
	f.IntVar(&o.keyConcurrency, "max-concurrency", 64, "default calls in flight per API key (0: no limit)")
	f.IntVar(&o.dep.MinInstances, "min-instances", o.dep.MinInstances, "default least instances per agent (0 scales to zero when idle)")
	f.IntVar(&o.dep.MaxInstances, "max-instances", o.dep.MaxInstances, "most instances per agent (agents may ask for fewer)")
	f.Float64Var(&o.dep.TargetConcurrency, "target-concurrency", o.dep.TargetConcurrency, "calls in flight per instance the autoscaler aims at")
	f.IntVar(&o.dep.MaxConcurrency, "instance-concurrency", o.dep.MaxConcurrency, "most calls at once on one instance")
	f.IntVar(&o.dep.MaxQueue, "max-queue", o.dep.MaxQueue, "calls that may wait for an instance per agent before 503 OVERLOADED")
	f.DurationVar(&o.dep.IdleTimeout, "idle-timeout", o.dep.IdleTimeout, "scale an idle agent to zero after this long (with min 0)")
	f.IntVar(&o.dep.MemoryMB, "memory-mb", o.dep.MemoryMB, "memory limit per instance in MiB (0: none)")
	f.Float64Var(&o.dep.CPUSeconds, "cpu-seconds", 0, "CPU time limit per instance in seconds (0: none)")
	f.Float64Var(&o.dep.CPUs, "cpus", 0, "CPU per instance in cores, e.g. 0.5 or 2 (0: no cap; the microvm sandbox's vCPUs, rounded up)")
	f.IntVar(&o.dep.MaxPids, "max-pids", o.dep.MaxPids, "processes+threads limit per instance (0: none)")
	f.IntVar(&o.dep.PersistentQuotaMB, "persistent-quota-mb", o.dep.PersistentQuotaMB, "most MiB one user's persistent folders may hold, per agent (agents may ask for less)")
	f.DurationVar(&o.dep.CallTimeout, "timeout", o.dep.CallTimeout, "longest a call may run (agents may ask for less)")
	f.Int64Var(&o.maxUpload, "max-upload", 128<<20, "largest bundle upload in bytes")
	f.Int64Var(&o.maxBundle, "max-bundle", 512<<20, "largest unpacked bundle in bytes")
	f.IntVar(&o.maxFiles, "max-files", 10000, "most files in a bundle")
	f.Int64Var(&o.maxBody, "max-body", server.DefaultMaxBodyBytes, "largest request body in bytes (413 beyond)")
	f.IntVar(&o.async.Workers, "async-workers", 16, "async invocations run at once")
	f.IntVar(&o.async.TenantWorkers, "async-tenant-workers", 0, "async invocations one tenant may run at once (default: half the async workers), so that others' start while it has a backlog")
	f.IntVar(&o.async.TenantBacklog, "async-tenant-backlog", 2000, "async invocations a tenant may have waiting or running (429 beyond)")
	f.IntVar(&o.async.AgentBacklog, "async-agent-backlog", 1000, "async invocations an agent may have waiting or running (429 beyond)")
	f.DurationVar(&o.async.Lease, "async-lease", 30*time.Second, "on a cluster: how long a node may go without renewing an async invocation it runs before the queue gives it to another node (renewed every third of it)")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.DurationVar(&o.tick, "scale-tick", time.Second, "how often pools sample load and usage")
	f.DurationVar(&o.health, "health-interval", 5*time.Second, "how often instances are health-checked")
	f.DurationVar(&o.stable, "scale-window", 60*time.Second, "the autoscaler's stable window")
	f.DurationVar(&o.panic, "panic-window", 6*time.Second, "the autoscaler's panic (burst) window")
	return cmd
}

func (a *app) runServer(ctx context.Context, o serverOptions) error {
	log, err := a.logger(o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	if o.dataDir == "" {
		o.dataDir = filepath.Join(CacheDir(), "server")
	}
	cache := CacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return fmt.Errorf("create cache directory %s (set $%s to use another): %w", cache, EnvCacheDir, err)
	}
	var py pyenv.Python
	if o.role != platformserver.RoleGateway { // a gateway runs no Python
		if py, err = pyenv.Find(ctx, o.python); err != nil {
			return err
		}
	}
	if err := sandbox.CheckName(o.dep.Sandbox); err != nil {
		return fmt.Errorf("--sandbox: %w", err)
	}
	var webhookAllow []netip.Prefix
	for _, c := range o.webhookAllow {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return fmt.Errorf("--webhook-allow %q: expected a network like 10.0.0.0/8 or fd00::/8", c)
		}
		webhookAllow = append(webhookAllow, pfx.Masked())
	}
	if !o.allowNetwork && o.dep.Sandbox == "process" {
		return fmt.Errorf("--allow-agent-network=false needs --sandbox namespace, gvisor or microvm: the process sandbox cannot cut an agent off the network")
	}
	sandboxes := drivers.New(drivers.Builtin(o.microVM), sandbox.Options{StateDir: filepath.Join(o.dataDir, "sandbox"), Log: log})
	defer sandboxes.Close()
	if _, err := sandboxes.Get(o.dep.Sandbox); err != nil {
		return fmt.Errorf("--sandbox %s: %w", o.dep.Sandbox, err)
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
	if o.role == platformserver.RoleGateway || o.role == platformserver.RoleNode {
		fmt.Fprintf(a.stderr, "Joining the cluster as a %s (NATS %s), its state in PostgreSQL...\n", o.role, strings.Join(o.nats, ","))
	} else if o.db != "" {
		fmt.Fprintf(a.stderr, "Opening the platform in %s, its state in PostgreSQL...\n", o.dataDir)
	} else {
		fmt.Fprintf(a.stderr, "Opening the platform in %s...\n", o.dataDir)
	}
	p, err := platformserver.Open(ctx, platformserver.Config{
		DataDir: o.dataDir, DB: o.db, CacheDir: cache, Python: py, Script: script, Host: o.host, Port: port,
		Defaults:      o.dep,
		DefaultPolicy: ratelimit.Policy{RatePerSecond: o.rate, Burst: o.burst, MaxConcurrency: o.keyConcurrency},
		CORSOrigins:   o.corsOrigins, WebhookAllow: webhookAllow, EventRetention: o.eventRetention, Flow: o.data.flow, StallTimeout: o.data.stall, Heartbeat: o.data.heartbeatOf(),
		AllowPublic: o.allowPublic, MaxUpload: o.maxUpload, MaxBody: o.maxBody, Async: o.async,
		Bundle: bundle.Limits{MaxFiles: o.maxFiles, MaxBytes: o.maxBundle},
		Tick:   o.tick, HealthInterval: o.health, StableWindow: o.stable, PanicWindow: o.panic,
		Sandbox: sandboxes.Get, DenyNetwork: !o.allowNetwork, Log: log, Version: a.version,
		Role: o.role, NATS: o.nats, NodeID: o.nodeID, Replicas: o.replicas,
	})
	if err != nil {
		return err
	}
	defer p.Close()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go p.Run(runCtx)

	if o.metricsAddr != "" {
		go func() {
			log.Info("metrics listening", "addr", o.metricsAddr)
			ms := httpServer(p.MetricsHandler(), o.http, log)
			ms.Addr = o.metricsAddr
			log.Warn("metrics listener stopped", "error", ms.ListenAndServe())
		}()
	}
	hs := httpServer(p.Handler(o.metricsAddr == ""), o.http, log)
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	base := "http://" + net.JoinHostPort(o.host, strconv.Itoa(port))
	if a.json {
		a.printJSON(map[string]any{"event": "serving", "url": base, "data_dir": o.dataDir, "admin_key_file": p.AdminKeyFile, "role": o.role})
	} else if o.role == platformserver.RoleNode {
		fmt.Fprintf(a.stdout, "RunAgent node on %s (health and /metrics; calls come over NATS)\n", base)
	} else {
		fmt.Fprintf(a.stdout, "RunAgent platform server on %s (data in %s)\n", base, o.dataDir)
		if p.AdminKeyFile != "" {
			fmt.Fprintf(a.stdout, "First start: an admin API key was written to %s (keep it secret).\n", p.AdminKeyFile)
		}
		fmt.Fprintf(a.stdout, "Deploy an agent:  runagent deploy ./my-agent --server %s\n", base)
	}
	select {
	case err := <-served:
		return fmt.Errorf("server stopped: %w", err)
	case <-ctx.Done():
	}
	fmt.Fprintln(a.stderr, "Shutting down: finishing calls in flight...")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
	return nil
}
