package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Users' persistent folders on a cluster (two gateways, two nodes): a
// user's calls all run on the node holding the user, whichever gateway
// they come through; users never mix; the node holding a user killed
// with kill -9, the other takes the user over with every write a call
// returned from; a background run sees the same folders; one DELETE
// through a gateway removes the user's data from the cluster. Under the
// process and namespace sandboxes (a cluster refuses microvm's, whose
// folders live on a node's disk image).
func TestClusterPersistentFolders(t *testing.T) {
	for _, sb := range []string{"process", "namespace"} {
		t.Run(sb, func(t *testing.T) {
			attackPrecheck(t, sb)
			testClusterPersistentFolders(t, sb)
		})
	}
}

func testClusterPersistentFolders(t *testing.T, sb string) {
	c := startCluster(t, 2, 2, "--sandbox", sb)
	dir, _ := newAgent(t, "showcase")
	for _, ep := range []string{"remember", "peek"} {
		addPyEntrypoint(t, dir, "memory_agent.py", memoryPy, ep, ep)
	}
	os.MkdirAll(filepath.Join(dir, "memory"), 0o755)
	os.WriteFile(filepath.Join(dir, "memory", "seed.txt"), []byte("seed"), 0o644)
	editConfig(t, dir, func(cfg map[string]any) { cfg["persistent_folders"] = []any{"memory"} })
	id := c.gateways[0].deploy(t, dir, c.admin)

	type memory struct{ Notes, Seed, Instance, Home string }
	remember := func(g *platformServer, user, text string) (memory, string) {
		t.Helper()
		b := runBody("remember", map[string]any{"text": text})
		b["user_id"], b["persistent_memory"] = user, true
		r := g.do(t, "POST", "/api/v1/agents/"+id+"/run", c.admin, b)
		if r.Status != 200 || !r.Env.Success {
			t.Fatalf("remember(%s, %s): %d %s\n%s", user, text, r.Status, r.Body, c.logs())
		}
		var m memory
		json.Unmarshal(decodeOutput(t, r.Env.Data), &m)
		return m, m.Instance
	}
	// holderOf is the node that has a user's folders on its disk.
	holderOf := func(user string) int {
		t.Helper()
		sum := sha256.Sum256([]byte(user))
		found := -1
		for i, n := range c.nodes {
			if _, err := os.Stat(filepath.Join(n.DataDir, "users", id, hex.EncodeToString(sum[:16]))); err == nil {
				if found >= 0 {
					t.Fatalf("%s's folders are on nodes %d and %d", user, found, i)
				}
				found = i
			}
		}
		if found < 0 {
			t.Fatalf("%s's folders are on no node", user)
		}
		return found
	}

	// Alice's calls through both gateways run on one node, her notes growing.
	var aliceOn, bobOn string
	want := ""
	for i := range 6 {
		text := string(rune('a' + i))
		want += text
		m, on := remember(c.gateways[i%2], "alice", text)
		if m.Notes != want || m.Seed != "seed" {
			t.Fatalf("alice's call %d: %+v; want notes %q and the bundle's seed", i, m, want)
		}
		if aliceOn != "" && on != aliceOn {
			t.Fatalf("alice's call %d ran on instance %s, the ones before on %s", i, on, aliceOn)
		}
		aliceOn = on
	}
	for i := range 4 {
		m, on := remember(c.gateways[i%2], "bob", "b")
		if m.Notes != strings.Repeat("b", i+1) {
			t.Fatalf("bob's call %d: %+v; want his notes alone", i, m)
		}
		if bobOn != "" && on != bobOn || on == aliceOn {
			t.Fatalf("bob's call %d ran on instance %s, the ones before on %s (alice's: %s)", i, on, bobOn, aliceOn)
		}
		bobOn = on
	}

	// A background run of alice's sees her folders.
	b := runBody("remember", map[string]any{"text": "R"})
	b["user_id"], b["persistent_memory"] = "alice", true
	run := acceptedRun(t, c.gateways[1].do(t, "POST", "/api/v1/agents/"+id+"/runs", c.admin, b))
	w := c.gateways[0].do(t, "GET", "/api/v1/runs/"+run+"/wait", c.admin, nil)
	want += "R"
	if rec := runOf(t, w); rec.Status != "completed" || !strings.Contains(string(w.Body), want) {
		t.Fatalf("alice's background run: %s\n%s", w.Body, c.logs())
	}

	// The node holding alice dies: the other takes her over, her notes
	// as the last call left them.
	dead := holderOf("alice")
	holder := c.nodes[dead]
	syscall.Kill(holder.cmd.Process.Pid, syscall.SIGKILL)
	<-holder.exited
	var after string
	for i, g := range c.gateways {
		text := string(rune('x' + i))
		want += text
		m, on := remember(g, "alice", text)
		if m.Notes != want || on == aliceOn || after != "" && on != after {
			t.Fatalf("alice after node %d died, through gateway %d: %+v; want notes %q on one new instance\n%s", dead, i, m, want, c.logs())
		}
		after = on
	}
	if m, _ := remember(c.gateways[0], "bob", "b"); m.Notes != "bbbbb" {
		t.Fatalf("bob after node %d died: %+v", dead, m)
	}

	// One DELETE through a gateway: alice starts from the bundle again.
	if r := c.gateways[1].do(t, "DELETE", "/api/v1/agents/"+id+"/users/alice", c.admin, nil); r.Status != 200 {
		t.Fatalf("delete alice's data: %d %s", r.Status, r.Body)
	}
	if m, _ := remember(c.gateways[0], "alice", "new"); m.Notes != "new" || m.Seed != "seed" {
		t.Fatalf("alice after the delete: %+v", m)
	}
	if m, _ := remember(c.gateways[1], "bob", "b"); m.Notes != "bbbbbb" {
		t.Fatalf("bob after alice's delete: %+v", m)
	}
}
