package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/runagent-go/runagent/internal/domain"
)

// testEndedContext: a method called with an ended context returns the
// context's error, and a write made with one is not made.
func testEndedContext(t *testing.T, open Opener) {
	bg := context.Background()
	s := open(t, "store")
	if _, err := s.AddVersion(bg, "acme", "a", "default", domain.Version{AgentID: "ag", Dir: "/d"}); err != nil {
		t.Fatal(err)
	}
	if err := s.ActivateVersion(bg, "ag", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertAPIKey(bg, domain.Key{ID: "k", Name: "k", Tenant: "acme", Scopes: []domain.Scope{domain.ScopeRun}, Hash: []byte{1}, CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendLogs(bg, logLines("ag", "l", "", 3)); err != nil {
		t.Fatal(err)
	}
	if err := s.EnqueueAsync(bg, domain.AsyncJob{Invocation: pending("job", "ag", t0), Tenant: "acme", TimeoutSeconds: 0}); err != nil {
		t.Fatal(err)
	}
	done := completed(pending("done", "ag", t0), 1, `1`)
	s.Start(done)
	s.Finish(done)

	ctx, cancel := context.WithCancel(bg)
	cancel()
	calls := map[string]func() error{
		"Get":            func() error { _, err := s.Get(ctx, "done"); return err },
		"List":           func() error { _, err := s.List(ctx, "ag", "", 10); return err },
		"ListForAgents":  func() error { _, err := s.ListForAgents(ctx, []string{"ag"}, "", 10); return err },
		"Stats":          func() error { _, err := s.Stats(ctx, "ag"); return err },
		"FailAbandoned":  func() error { _, err := s.FailAbandoned(ctx, now()); return err },
		"FailStale":      func() error { _, err := s.FailStale(ctx, now(), now()); return err },
		"PlatformAgent":  func() error { _, err := s.PlatformAgent(ctx, "ag"); return err },
		"PlatformAgents": func() error { _, err := s.PlatformAgents(ctx); return err },
		"Version":        func() error { _, err := s.Version(ctx, "ag", 1); return err },
		"Versions":       func() error { _, err := s.Versions(ctx, "ag"); return err },
		"APIKeys":        func() error { _, err := s.APIKeys(ctx); return err },
		"Logs":           func() error { _, err := s.Logs(ctx, "ag", "", 0, 0); return err },
		"PendingAsync":   func() error { _, err := s.PendingAsync(ctx); return err },
		"PutAgentMetadata": func() error {
			_, err := s.PutAgentMetadata(ctx, "new", "acme", "n", "default", json.RawMessage(`{}`))
			return err
		},
		"AddVersion": func() error {
			_, err := s.AddVersion(ctx, "acme", "a", "default", domain.Version{AgentID: "ag", Dir: "/d2"})
			return err
		},
		"SetVersionStatus": func() error { return s.SetVersionStatus(ctx, "ag", 1, domain.VersionFailed, "x") },
		"ActivateVersion":  func() error { return s.ActivateVersion(ctx, "ag", 1) },
		"DeleteVersion":    func() error { return s.DeleteVersion(ctx, "ag", 1) },
		"DeletePlatformAgent": func() error {
			return s.DeletePlatformAgent(ctx, "ag")
		},
		"InsertAPIKey": func() error {
			return s.InsertAPIKey(ctx, domain.Key{ID: "k2", Name: "k2", Tenant: "acme", Scopes: []domain.Scope{domain.ScopeRun}, Hash: []byte{2}, CreatedAt: t0})
		},
		"RevokeAPIKey": func() error { return s.RevokeAPIKey(ctx, "k", now()) },
		"AppendLogs":   func() error { return s.AppendLogs(ctx, logLines("ag", "late", "", 2)) },
		"PruneLogs":    func() error { _, err := s.PruneLogs(ctx, 0); return err },
		"EnqueueAsync": func() error {
			return s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending("job2", "ag", t0), Tenant: "acme"})
		},
		"StartAsync":  func() error { return s.StartAsync(ctx, "job", now()) },
		"FinishAsync": func() error { return s.FinishAsync(ctx, completed(pending("job", "ag", t0), 1, `1`)) },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v, want context.Canceled", name, err)
		}
	}

	// Nothing was written.
	if a, err := s.PlatformAgent(bg, "ag"); err != nil || a.LatestVersion != 1 || a.ActiveVersion != 1 {
		t.Errorf("agent: %+v, %v", a, err)
	}
	if v, err := s.Version(bg, "ag", 1); err != nil || v.Status != domain.VersionActive || v.Error != "" {
		t.Errorf("version 1: %+v, %v", v, err)
	}
	if _, err := s.PlatformAgent(bg, "new"); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("an agent created with a cancelled context: %v", err)
	}
	if keys, err := s.APIKeys(bg); err != nil || len(keys) != 1 || keys[0].Revoked() {
		t.Errorf("keys: %+v, %v", keys, err)
	}
	if ls, err := s.Logs(bg, "ag", "", 0, 0); err != nil || lineTexts(ls) != "l0 l1 l2" {
		t.Errorf("logs: %q, %v", lineTexts(ls), err)
	}
	if jobs, err := s.PendingAsync(bg); err != nil || len(jobs) != 1 || jobs[0].ID != "job" || jobs[0].Attempts != 0 {
		t.Errorf("queue: %s, %v", showJobs(jobs), err)
	}
	if got := mustGet(t, s, "job"); got.Status != domain.StatusPending {
		t.Errorf("queued job: %q", got.Status)
	}
	if _, err := s.Get(bg, "job2"); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("an async job enqueued with a cancelled context: %v", err)
	}
}
