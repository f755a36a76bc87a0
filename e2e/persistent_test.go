package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// memoryPy writes to the agent's persistent folder "memory", relative to
// the working directory as agents do.
const memoryPy = `
import os

INSTANCE = os.urandom(8).hex()  # pids repeat across pid namespaces

def remember(text=""):
    with open("memory/notes.txt", "a") as f:
        f.write(text)
    return {"notes": open("memory/notes.txt").read(), "seed": open("memory/seed.txt").read(), "instance": INSTANCE,
            "home": os.environ.get("HOME", "")}

def peek():
    path = "memory/notes.txt"
    return open(path).read() if os.path.exists(path) else ""

def remember_stream(text=""):
    yield remember(text)["notes"]

def fill(mb=2):
    with open("memory/big.bin", "wb") as f:
        f.write(b"x" * (mb << 20))
    return mb
`

// Per-user persistent folders through the real server, under the process,
// namespace and microvm sandboxes: what a user's runs write is there on their next
// run (sync, streamed, background; after a kill -9 of the server), never
// another user's, and gone after one DELETE; a quota stops a user who
// went over it.
func TestPlatformPersistentFolders(t *testing.T) {
	for _, sb := range []string{"process", "namespace", "microvm"} {
		t.Run(sb, func(t *testing.T) {
			attackPrecheck(t, sb)
			data := filepath.Join(t.TempDir(), "data")
			port := freePort(t)
			args := []string{"--sandbox", sb, "--persistent-quota-mb", "1"}
			s := startPlatform(t, data, port, args...)
			dir, _ := newAgent(t, "showcase")
			for _, ep := range []string{"remember", "peek", "remember_stream", "fill"} {
				addPyEntrypoint(t, dir, "memory_agent.py", memoryPy, ep, ep)
			}
			if err := os.MkdirAll(filepath.Join(dir, "memory"), 0o755); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, "memory", "seed.txt"), []byte("seed"), 0o644)
			editConfig(t, dir, func(cfg map[string]any) { cfg["persistent_folders"] = []any{"memory"} })
			id := s.deploy(t, dir, s.Admin)

			type memory struct {
				Notes, Seed, Instance string
			}
			remember := func(s *platformServer, user, text string) memory {
				t.Helper()
				b := runBody("remember", map[string]any{"text": text})
				b["user_id"], b["persistent_memory"] = user, true
				r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, b)
				if r.Status != 200 || !r.Env.Success {
					t.Fatalf("remember(%s, %s): %d %s\n%s", user, text, r.Status, r.Body, s.Logs())
				}
				var m memory
				json.Unmarshal(decodeOutput(t, r.Env.Data), &m)
				return m
			}
			a1 := remember(s, "alice@example.com", "a1")
			if a1.Notes != "a1" || a1.Seed != "seed" {
				t.Fatalf("alice's first run: %+v; want her notes and the bundle's seed", a1)
			}
			if b1 := remember(s, "bob", "b1"); b1.Notes != "b1" || b1.Instance == a1.Instance {
				t.Fatalf("bob's first run: %+v (alice's instance: %s); want his notes alone, on an instance of his own", b1, a1.Instance)
			}
			if a2 := remember(s, "alice@example.com", "a2"); a2.Notes != "a1a2" {
				t.Fatalf("alice's second run: %+v", a2)
			}
			// Without persistent_memory the shared instances see the bundle's folder.
			if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, runBody("peek", nil)); r.Status != 200 || string(decodeOutput(t, r.Env.Data)) != `""` {
				t.Fatalf("a run without persistent_memory: %d %s; want no user's notes", r.Status, r.Body)
			}
			// A stream (SSE) and a background run see the same folders.
			b := runBody("remember_stream", map[string]any{"text": "b2"})
			b["user_id"], b["persistent_memory"] = "bob", true
			r := s.doHeaders(t, "POST", "/api/v1/agents/"+id+"/run-stream", s.Admin, b, map[string]string{"Accept": "text/event-stream"})
			if r.Status != 200 || !strings.Contains(string(r.Body), `b1b2`) {
				t.Fatalf("bob's stream: %d %s", r.Status, r.Body)
			}
			b = runBody("remember", map[string]any{"text": "a3"})
			b["user_id"], b["persistent_memory"] = "alice@example.com", true
			run := acceptedRun(t, s.do(t, "POST", "/api/v1/agents/"+id+"/runs", s.Admin, b))
			w := s.do(t, "GET", "/api/v1/runs/"+run+"/wait", s.Admin, nil)
			if rec := runOf(t, w); rec.Status != "completed" || !strings.Contains(string(w.Body), `a1a2a3`) || !strings.Contains(string(w.Body), `"user_id":"alice@example.com"`) {
				t.Fatalf("alice's background run: %s", w.Body)
			}

			// Killed and started again: the folders are where they were.
			syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.exited
			s = startPlatform(t, data, port, args...)
			if a4 := remember(s, "alice@example.com", "a4"); a4.Notes != "a1a2a3a4" {
				t.Fatalf("alice after a restart: %+v", a4)
			}

			// Bad requests name the field.
			bad := runBody("remember", nil)
			bad["persistent_memory"] = true
			if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, bad); r.Status != 400 || r.Env.Error == nil || r.Env.Error.Field == nil || *r.Env.Error.Field != "user_id" {
				t.Fatalf("persistent_memory without user_id: %d %s", r.Status, r.Body)
			}

			// The quota (1 MiB): a user over it is stopped, with what to do;
			// under microvm the user's disk holds no more (8 MiB at least).
			fill := runBody("fill", map[string]any{"mb": 2})
			if sb == "microvm" {
				fill = runBody("fill", map[string]any{"mb": 16})
			}
			fill["user_id"], fill["persistent_memory"] = "carol", true
			r = s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, fill)
			if sb == "microvm" {
				if r.Env.Success || !strings.Contains(string(r.Body), "No space left on device") {
					t.Fatalf("a write past the user's disk: %d %s", r.Status, r.Body)
				}
			} else {
				if r.Status != 200 || !r.Env.Success {
					t.Fatalf("fill: %d %s", r.Status, r.Body)
				}
				r = s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, fill)
				if r.code() != "RESOURCE_LIMIT" || !strings.Contains(string(r.Body), "persistent_quota_mb") {
					t.Fatalf("a run over the quota: %d %s", r.Status, r.Body)
				}
			}

			// One call deletes a user's data; the next run starts from the bundle's.
			if r := s.do(t, "DELETE", "/api/v1/agents/"+id+"/users/alice@example.com", s.Admin, nil); r.Status != 200 {
				t.Fatalf("delete alice's data: %d %s", r.Status, r.Body)
			}
			if a := remember(s, "alice@example.com", "x"); a.Notes != "x" || a.Seed != "seed" {
				t.Fatalf("alice after her data was deleted: %+v", a)
			}
			if b := remember(s, "bob", "b3"); b.Notes != "b1b2b3" {
				t.Fatalf("bob after alice's data was deleted: %+v", b)
			}
			if r := s.do(t, "DELETE", "/api/v1/agents/"+id+"/users/carol", s.Admin, nil); r.Status != 200 {
				t.Fatalf("delete carol's data: %d %s", r.Status, r.Body)
			}
			small := runBody("fill", map[string]any{"mb": 0})
			small["user_id"], small["persistent_memory"] = "carol", true
			if r := s.do(t, "POST", "/api/v1/agents/"+id+"/run", s.Admin, small); r.Status != 200 || !r.Env.Success {
				t.Fatalf("carol after her data was deleted: %d %s", r.Status, r.Body)
			}
		})
	}
}

// decodeOutput is a /run envelope's data (the structured string the
// official SDKs decode) as the JSON of the value it holds.
func decodeOutput(t testing.TB, data json.RawMessage) []byte {
	t.Helper()
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("data is not a string: %s", data)
	}
	_, v := decodeStructured(t, s)
	b, _ := json.Marshal(v)
	return b
}

// runagent serve keeps users' persistent folders too, in its cache.
func TestServePersistentFolders(t *testing.T) {
	dir, id := newAgent(t, "default")
	for _, ep := range []string{"remember", "peek"} {
		addPyEntrypoint(t, dir, "memory_agent.py", memoryPy, ep, ep)
	}
	os.MkdirAll(filepath.Join(dir, "memory"), 0o755)
	os.WriteFile(filepath.Join(dir, "memory", "seed.txt"), []byte("seed"), 0o644)
	editConfig(t, dir, func(cfg map[string]any) { cfg["persistent_folders"] = []any{"memory"} })
	s := serve(t, dir, id, serveOpts{})
	remember := func(user, text string) string {
		t.Helper()
		b := runBody("remember", map[string]any{"text": text})
		b["user_id"], b["persistent_memory"] = user, true
		st, env, raw := s.post(t, "/api/v1/agents/"+id+"/run", b)
		if st != 200 || !env.Success {
			t.Fatalf("remember(%s): %d %s\n%s", user, st, raw, s.Logs())
		}
		var m struct{ Notes string }
		json.Unmarshal(decodeOutput(t, env.Data), &m)
		return m.Notes
	}
	if got := remember("ana", "a1"); got != "a1" {
		t.Fatalf("ana: %q", got)
	}
	if got := remember("ben", "b1"); got != "b1" {
		t.Fatalf("ben: %q", got)
	}
	if got := remember("ana", "a2"); got != "a1a2" {
		t.Fatalf("ana again: %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "memory", "notes.txt")); !os.IsNotExist(err) {
		t.Fatalf("a user's notes reached the agent's own folder: %v", err)
	}
}
