package dispatch_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/agentfolder"
	"github.com/runagent-go/runagent/internal/autoscale"
	"github.com/runagent-go/runagent/internal/dispatch"
	"github.com/runagent-go/runagent/internal/dispatch/dispatchtest"
	"github.com/runagent-go/runagent/internal/domain"
	"github.com/runagent-go/runagent/internal/manager"
	"github.com/runagent-go/runagent/internal/pyenv"
	"github.com/runagent-go/runagent/internal/pyrunner"
)

// The in-process dispatcher, over a pool of real instances (the process
// sandbox), passes the conformance suite.
func TestLocalConformance(t *testing.T) {
	dispatchtest.Run(t, func(t *testing.T, dir string) (domain.Dispatcher, domain.Target) {
		ctx := context.Background()
		py, err := pyenv.Find(ctx, "")
		if err != nil {
			t.Skipf("no Python: %v", err)
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
		return dispatch.Single(target, pool), target
	})
}
