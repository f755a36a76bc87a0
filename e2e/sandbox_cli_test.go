package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A server whose sandbox tool is missing does not start, and says what to
// install; an unknown driver is named.
func TestServerSandboxStartupErrors(t *testing.T) {
	python, err := exec.Command("python3", "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Fatal(err)
	}
	// A PATH with Python and nothing else: no bwrap, no runsc.
	bin := t.TempDir()
	if err := os.Symlink(strings.TrimSpace(string(python)), filepath.Join(bin, "python3")); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ sandbox, want string }{
		{"namespace", "the namespace sandbox needs bubblewrap: install it with apt-get install bubblewrap"},
		{"gvisor", "the gvisor sandbox needs runsc: install it with apt-get install runsc"},
		{"docker", `unknown sandbox "docker": want one of process, namespace, gvisor, microvm`},
	}
	for _, c := range cases {
		t.Run(c.sandbox, func(t *testing.T) {
			cache := t.TempDir()
			// A server that wrongly starts is stopped, and the test fails.
			cmd := exec.CommandContext(ctxTimeout(t, 30*time.Second), binary, "server", "--port", "0", "--sandbox", c.sandbox)
			cmd.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+cache, "PATH="+bin)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if err == nil || !strings.Contains(stderr.String(), c.want) {
				t.Fatalf("runagent server --sandbox %s: %v\n%s\nwant an error saying %q", c.sandbox, err, stderr.String(), c.want)
			}
		})
	}
}
