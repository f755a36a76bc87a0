package dispatchtest

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/autoscale"
	"github.com/runagent-go/runagent/internal/dispatch"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/manager"
	"github.com/runagent-go/runagent/internal/pyenv"
	"github.com/runagent-go/runagent/internal/pyrunner"
)

// ServeLocal serves the agent in dir from a pool of one real instance (the
// process sandbox, Python from PATH) behind the in-process dispatcher: the
// suite's Serve for dispatch.Local, and the execution side that other
// dispatchers (NATS) put in front of it. The pool closes with the test.
func ServeLocal(t *testing.T, dir string) (*dispatch.Local, domain.Target) {
	t.Helper()
	ctx := context.Background()
	py, err := pyenv.Find(ctx, "")
	if err != nil {
		t.Fatalf("no Python for the suite's agent: %v", err)
	}
	folder, err := agentfolder.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	env, err := pyenv.Prepare(ctx, py, folder.Dir, cache, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	script, err := pyrunner.WriteScript(cache)
	if err != nil {
		t.Fatal(err)
	}
	spec := manager.InstanceSpec{Folder: folder, Env: env, Script: script, Threads: 10}
	pool, err := manager.NewPool(folder.Config.AgentID, 1, manager.PoolConfig{
		Scale: autoscale.Config{Min: 1, Max: 1, TargetConcurrency: 8}, MaxConcurrency: 8,
	}, spec.StartFunc(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := pool.Warm(wctx, 1); err != nil {
		t.Fatal(err)
	}
	target := folder.Agent().Target()
	return dispatch.Single(target, pool, nil), target
}
