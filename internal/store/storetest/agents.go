package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/runagent-go/runagent/internal/domain"
)

func testAgents(t *testing.T, open Opener) {
	ctx := context.Background()

	t.Run("versions and tenants", func(t *testing.T) {
		s := open(t, "store")
		v1, err := s.AddVersion(ctx, "acme", "a", "default", domain.Version{AgentID: "ag1", Dir: "/d1"})
		if err != nil || v1 != 1 {
			t.Fatalf("first version: %d, %v", v1, err)
		}
		v2, err := s.AddVersion(ctx, "acme", "a2", "default", domain.Version{AgentID: "ag1", Dir: "/d2"})
		if err != nil || v2 != 2 {
			t.Fatalf("second version: %d, %v", v2, err)
		}
		if _, err := s.AddVersion(ctx, "other", "x", "default", domain.Version{AgentID: "ag1", Dir: "/d3"}); !errors.Is(err, domain.ErrOtherTenant) {
			t.Fatalf("another tenant's upload: %v, want ErrOtherTenant", err)
		}
		if vs, _ := s.Versions(ctx, "ag1"); len(vs) != 2 {
			t.Fatalf("another tenant's upload added a version: %+v", vs)
		}
		if err := s.ActivateVersion(ctx, "ag1", 1); err != nil {
			t.Fatal(err)
		}
		if err := s.ActivateVersion(ctx, "ag1", 2); err != nil {
			t.Fatal(err)
		}
		if err := s.ActivateVersion(ctx, "ag1", 9); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("activating a version that does not exist: %v, want ErrNotFound", err)
		}
		a, err := s.PlatformAgent(ctx, "ag1")
		if err != nil || a.ActiveVersion != 2 || a.LatestVersion != 2 || a.Tenant != "acme" || a.Name != "a2" {
			t.Fatalf("agent %+v, %v", a, err)
		}
		vs, _ := s.Versions(ctx, "ag1")
		if len(vs) != 2 || vs[0].Version != 2 || vs[0].Status != domain.VersionActive || vs[1].Status != domain.VersionRetired || vs[0].ActivatedAt.IsZero() {
			t.Fatalf("versions %+v", vs)
		}
		if err := s.SetVersionStatus(ctx, "ag1", 1, domain.VersionFailed, "pip failed"); err != nil {
			t.Fatal(err)
		}
		if v, _ := s.Version(ctx, "ag1", 1); v.Status != domain.VersionFailed || v.Error != "pip failed" || v.Dir != "/d1" {
			t.Fatalf("version 1: %+v", v)
		}
		if err := s.SetVersionStatus(ctx, "ag1", 1, domain.VersionStarting, ""); err != nil {
			t.Fatal(err)
		}
		if v, _ := s.Version(ctx, "ag1", 1); v.Status != domain.VersionStarting || v.Error != "" {
			t.Fatalf("version 1 after a status without an error: %+v", v)
		}
		if err := s.SetVersionStatus(ctx, "ag1", 9, domain.VersionFailed, "x"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("status of a version that does not exist: %v, want ErrNotFound", err)
		}
		if err := s.DeletePlatformAgent(ctx, "ag1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PlatformAgent(ctx, "ag1"); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("deleted agent: %v", err)
		}
		if _, err := s.Version(ctx, "ag1", 2); !errors.Is(err, domain.ErrNotFound) {
			t.Fatalf("deleted agent's version: %v", err)
		}
	})

	t.Run("a version reads back whole", func(t *testing.T) {
		s := open(t, "store")
		before := now()
		v := domain.Version{AgentID: "ag", Dir: "/bundles/ag/1", FileName: "bundle.zip", FileSize: 12345, SHA256: "ab12"}
		n, err := s.AddVersion(ctx, "acme", "demo", "langgraph", v)
		if err != nil || n != 1 {
			t.Fatalf("AddVersion: %d, %v", n, err)
		}
		after := time.Now()
		got, err := s.Version(ctx, "ag", 1)
		if err != nil {
			t.Fatal(err)
		}
		if got.AgentID != "ag" || got.Version != 1 || got.Status != domain.VersionUploaded || got.Dir != v.Dir || got.FileName != v.FileName ||
			got.FileSize != v.FileSize || got.SHA256 != v.SHA256 || got.Error != "" || !got.ActivatedAt.IsZero() {
			t.Errorf("version %+v; want %+v, uploaded, never activated", got, v)
		}
		if got.UploadedAt.Before(before) || got.UploadedAt.After(after) {
			t.Errorf("uploaded at %v, not between %v and %v", got.UploadedAt, before, after)
		}
		a, err := s.PlatformAgent(ctx, "ag")
		if err != nil {
			t.Fatal(err)
		}
		if a.ID != "ag" || a.Tenant != "acme" || a.Name != "demo" || a.Framework != "langgraph" || a.ActiveVersion != 0 || a.LatestVersion != 1 || a.Metadata != nil {
			t.Errorf("agent created by its first version: %+v", a)
		}
		if a.CreatedAt.Before(before) || a.CreatedAt.After(after) || a.UpdatedAt.Before(a.CreatedAt) {
			t.Errorf("created %v, updated %v; want both between %v and %v", a.CreatedAt, a.UpdatedAt, before, after)
		}
	})

	t.Run("unknown agents and versions", func(t *testing.T) {
		s := open(t, "store")
		if _, err := s.PlatformAgent(ctx, "nope"); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("PlatformAgent(nope) = %v, want ErrNotFound", err)
		}
		if _, err := s.Version(ctx, "nope", 1); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("Version(nope, 1) = %v, want ErrNotFound", err)
		}
		if _, err := s.AddVersion(ctx, "acme", "a", "default", domain.Version{AgentID: "ag", Dir: "/d"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Version(ctx, "ag", 2); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("Version(ag, 2) of an agent with one version = %v, want ErrNotFound", err)
		}
		if vs, err := s.Versions(ctx, "nope"); err != nil || len(vs) != 0 {
			t.Errorf("Versions(nope) = %+v, %v; want none", vs, err)
		}
		if as, err := s.PlatformAgents(ctx); err != nil || len(as) != 1 {
			t.Errorf("PlatformAgents = %+v, %v; want the one agent", as, err)
		}
	})

	t.Run("put agent metadata", func(t *testing.T) {
		s := open(t, "store")
		meta := json.RawMessage(`{"agent_name": "demo", "entrypoints": [{"tag": "hello"}]}`)
		existed, err := s.PutAgentMetadata(ctx, "ag", "acme", "demo", "default", meta)
		if err != nil || existed {
			t.Fatalf("first metadata upload: existed %v, %v; want a new agent", existed, err)
		}
		a, err := s.PlatformAgent(ctx, "ag")
		if err != nil || a.Tenant != "acme" || a.Name != "demo" || a.Framework != "default" || !bytes.Equal(a.Metadata, meta) ||
			a.LatestVersion != 0 || a.ActiveVersion != 0 {
			t.Fatalf("agent after its metadata: %+v (metadata %s), %v", a, a.Metadata, err)
		}
		meta2 := json.RawMessage(`{"agent_name":"demo 2"}`)
		existed, err = s.PutAgentMetadata(ctx, "ag", "acme", "demo 2", "langgraph", meta2)
		if err != nil || !existed {
			t.Fatalf("second metadata upload: existed %v, %v; want an existing agent", existed, err)
		}
		if a, _ := s.PlatformAgent(ctx, "ag"); a.Name != "demo 2" || a.Framework != "langgraph" || !bytes.Equal(a.Metadata, meta2) {
			t.Fatalf("agent after a second upload: %+v (metadata %s)", a, a.Metadata)
		}
		if _, err := s.PutAgentMetadata(ctx, "ag", "other", "mine", "default", json.RawMessage(`{}`)); !errors.Is(err, domain.ErrOtherTenant) {
			t.Fatalf("another tenant's metadata: %v, want ErrOtherTenant", err)
		}
		if a, _ := s.PlatformAgent(ctx, "ag"); a.Tenant != "acme" || a.Name != "demo 2" || !bytes.Equal(a.Metadata, meta2) {
			t.Fatalf("another tenant's upload changed the agent: %+v (metadata %s)", a, a.Metadata)
		}
		// An agent created by a version existed; its versions stay.
		if n, err := s.AddVersion(ctx, "acme", "v", "default", domain.Version{AgentID: "ag2", Dir: "/d"}); err != nil || n != 1 {
			t.Fatalf("AddVersion: %d, %v", n, err)
		}
		existed, err = s.PutAgentMetadata(ctx, "ag2", "acme", "v", "default", nil)
		if err != nil || !existed {
			t.Fatalf("metadata of an agent created by a version: existed %v, %v", existed, err)
		}
		if a, _ := s.PlatformAgent(ctx, "ag2"); a.LatestVersion != 1 || a.Metadata != nil {
			t.Fatalf("agent with nil metadata: %+v (metadata %q)", a, a.Metadata)
		}
		// A version of an agent created by its metadata is number 1.
		if n, err := s.AddVersion(ctx, "acme", "demo 2", "langgraph", domain.Version{AgentID: "ag", Dir: "/d"}); err != nil || n != 1 {
			t.Fatalf("first version of an agent created by metadata: %d, %v", n, err)
		}
		if _, err := s.AddVersion(ctx, "other", "x", "default", domain.Version{AgentID: "ag", Dir: "/d"}); !errors.Is(err, domain.ErrOtherTenant) {
			t.Fatalf("another tenant's version: %v, want ErrOtherTenant", err)
		}
	})

	t.Run("platform agents oldest first", func(t *testing.T) {
		s := open(t, "store")
		for i, id := range []string{"c", "a", "b"} {
			if i%2 == 0 {
				if _, err := s.PutAgentMetadata(ctx, id, "t", id, "default", nil); err != nil {
					t.Fatal(err)
				}
			} else if _, err := s.AddVersion(ctx, "t", id, "default", domain.Version{AgentID: id, Dir: "/d"}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond) // distinct creation times
		}
		// Updating an agent does not move it.
		if _, err := s.PutAgentMetadata(ctx, "c", "t", "c", "default", json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
		as, err := s.PlatformAgents(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range as {
			got = append(got, a.ID)
		}
		if fmt.Sprint(got) != "[c a b]" {
			t.Errorf("PlatformAgents = %v, want [c a b]", got)
		}
	})

	t.Run("delete version", func(t *testing.T) {
		s := open(t, "store")
		for range 3 {
			if _, err := s.AddVersion(ctx, "acme", "a", "default", domain.Version{AgentID: "ag", Dir: "/d"}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.AddVersion(ctx, "acme", "b", "default", domain.Version{AgentID: "other", Dir: "/d"}); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteVersion(ctx, "ag", 2); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Version(ctx, "ag", 2); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("deleted version: %v, want ErrNotFound", err)
		}
		if err := s.DeleteVersion(ctx, "ag", 2); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("deleting it again: %v, want ErrNotFound", err)
		}
		vs, err := s.Versions(ctx, "ag")
		if err != nil || len(vs) != 2 || vs[0].Version != 3 || vs[1].Version != 1 {
			t.Errorf("versions after deleting 2: %+v, %v; want 3 and 1", vs, err)
		}
		if _, err := s.PlatformAgent(ctx, "ag"); err != nil {
			t.Errorf("the agent went with its version: %v", err)
		}
		if _, err := s.Version(ctx, "other", 1); err != nil {
			t.Errorf("another agent's version 1: %v", err)
		}
	})

	// DeletePlatformAgent takes the agent's versions, logs and queued
	// async invocations, and nothing else: its history stays, and so does
	// every other agent's state.
	t.Run("delete platform agent", func(t *testing.T) {
		s := open(t, "store")
		for _, id := range []string{"gone", "kept"} {
			for range 2 {
				if _, err := s.AddVersion(ctx, "acme", id, "default", domain.Version{AgentID: id, Dir: "/d/" + id}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.ActivateVersion(ctx, id, 1); err != nil {
				t.Fatal(err)
			}
			if err := s.AppendLogs(ctx, []domain.LogLine{
				{AgentID: id, Version: 1, Instance: "i", Stream: "stdout", Line: "one", At: t0},
				{AgentID: id, Version: 1, Instance: "i", InvocationID: id + "-sync", Stream: "stderr", Line: "two", At: t0},
			}); err != nil {
				t.Fatal(err)
			}
			sync := completed(pending(id+"-sync", id, t0), 1, `"ok"`)
			s.Start(sync)
			s.Finish(sync)
			if err := s.EnqueueAsync(ctx, domain.AsyncJob{Invocation: pending(id+"-async", id, t0), Tenant: "acme", TimeoutSeconds: 0}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.DeletePlatformAgent(ctx, "gone"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PlatformAgent(ctx, "gone"); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("deleted agent: %v, want ErrNotFound", err)
		}
		if vs, err := s.Versions(ctx, "gone"); err != nil || len(vs) != 0 {
			t.Errorf("deleted agent's versions: %+v, %v", vs, err)
		}
		if _, err := s.Version(ctx, "gone", 1); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("deleted agent's version 1: %v, want ErrNotFound", err)
		}
		if ls, err := s.Logs(ctx, "gone", "", 0, 0); err != nil || len(ls) != 0 {
			t.Errorf("deleted agent's logs: %+v, %v", ls, err)
		}
		jobs, err := s.PendingAsync(ctx)
		if err != nil || len(jobs) != 1 || jobs[0].ID != "kept-async" {
			t.Errorf("queued async after the delete: %s, %v; want kept-async alone", showJobs(jobs), err)
		}
		// The history stays; the async invocation that never ran ends
		// failed (see "delete agent with a backlog" in async.go).
		assertInvocation(t, mustGet(t, s, "gone-sync"), completed(pending("gone-sync", "gone", t0), 1, `"ok"`))
		if got := mustGet(t, s, "gone-async"); got.Status != domain.StatusFailed || got.AgentID != "gone" {
			t.Errorf("deleted agent's async invocation: %+v", got)
		}
		if got, err := s.List(ctx, "gone", "", 10); err != nil || ids(got) != "gone-async gone-sync" && ids(got) != "gone-sync gone-async" {
			t.Errorf("deleted agent's history: %q, %v", ids(got), err)
		}
		if st, err := s.Stats(ctx, "gone"); err != nil || st.Total != 2 {
			t.Errorf("deleted agent's stats: %+v, %v", st, err)
		}
		// The other agent has everything.
		if a, err := s.PlatformAgent(ctx, "kept"); err != nil || a.ActiveVersion != 1 || a.LatestVersion != 2 {
			t.Errorf("the other agent: %+v, %v", a, err)
		}
		if vs, _ := s.Versions(ctx, "kept"); len(vs) != 2 {
			t.Errorf("the other agent's versions: %+v", vs)
		}
		if ls, _ := s.Logs(ctx, "kept", "", 0, 0); len(ls) != 2 {
			t.Errorf("the other agent's logs: %+v", ls)
		}
		// The id is free again, for any tenant.
		if n, err := s.AddVersion(ctx, "other", "new", "default", domain.Version{AgentID: "gone", Dir: "/d"}); err != nil || n != 1 {
			t.Errorf("a new agent with a deleted one's id: %d, %v; want version 1", n, err)
		}
	})
}
