package cli

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cliResult is what one command run printed.
type cliResult struct {
	stdout, stderr string
	err            error
}

// runCLI runs the command line with args (no signal handling) and stdin.
func runCLI(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	a := &app{version: "test", stdout: &out, stderr: &errOut}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&errOut)
	root.SetErr(&errOut)
	err := root.ExecuteContext(context.Background())
	return cliResult{out.String(), errOut.String(), err}
}

// isolate points the remote defaults at nothing: no env, an empty cache.
func isolate(t *testing.T) string {
	t.Helper()
	cache := t.TempDir()
	t.Setenv(EnvCacheDir, cache)
	t.Setenv(EnvServer, "")
	t.Setenv(EnvAPIKey, "")
	return cache
}

func TestRemoteDefaults(t *testing.T) {
	cache := isolate(t)
	r := &remoteFlags{}
	if u, err := r.serverURL(); err != nil || u != DefaultServerURL {
		t.Errorf("default server = %q, %v", u, err)
	}
	t.Setenv(EnvServer, "agents.example.com:8400/")
	if u, err := r.serverURL(); err != nil || u != "http://agents.example.com:8400" {
		t.Errorf("server from env = %q, %v", u, err)
	}
	r.server = "https://x.example.com/base/"
	if u, err := r.serverURL(); err != nil || u != "https://x.example.com/base" {
		t.Errorf("server from flag = %q, %v", u, err)
	}
	r.server = "ftp://x"
	if _, err := r.serverURL(); err == nil || !strings.Contains(err.Error(), `--server: "ftp://x" is not a server URL`) {
		t.Errorf("bad server error = %v", err)
	}

	if _, _, err := r.key(); err == nil || !strings.Contains(err.Error(), "no API key: pass --api-key KEY or set $RUNAGENT_API_KEY") ||
		!strings.Contains(err.Error(), filepath.Join(cache, "server", "admin-key")) {
		t.Errorf("no key error = %v", err)
	}
	os.MkdirAll(filepath.Join(cache, "server"), 0o700)
	os.WriteFile(filepath.Join(cache, "server", "admin-key"), []byte("ra_file_key\n"), 0o600)
	if k, src, err := r.key(); err != nil || k != "ra_file_key" || src != filepath.Join(cache, "server", "admin-key") {
		t.Errorf("key from file = %q %q %v", k, src, err)
	}
	t.Setenv(EnvAPIKey, "ra_env_key")
	if k, src, _ := r.key(); k != "ra_env_key" || src != "$RUNAGENT_API_KEY" {
		t.Errorf("key from env = %q %q", k, src)
	}
	r.apiKey = "ra_flag_key"
	if k, src, _ := r.key(); k != "ra_flag_key" || src != "--api-key" {
		t.Errorf("key from flag = %q %q", k, src)
	}
}

func TestHelpDoesNotPrintTheKey(t *testing.T) {
	isolate(t)
	t.Setenv(EnvAPIKey, "ra_secret_in_env")
	res := runCLI(t, "", "agents", "list", "--help")
	if res.err != nil || strings.Contains(res.stderr+res.stdout, "ra_secret_in_env") || !strings.Contains(res.stderr+res.stdout, "--api-key") {
		t.Errorf("help: %v\n%s%s", res.err, res.stdout, res.stderr)
	}
}

func TestAuthAndReachability(t *testing.T) {
	isolate(t)
	p := newPlatform(t)
	res := runCLI(t, "", "agents", "list", "--server", p.url, "--api-key", "ra_wrong")
	if res.err == nil || !strings.Contains(res.err.Error(), "AUTHENTICATION_ERROR: invalid or revoked API key (HTTP 401)") ||
		!strings.Contains(res.err.Error(), "refused the API key from --api-key") {
		t.Errorf("bad key: %v", res.err)
	}

	// The admin key file is used when nothing else is given.
	cache := isolate(t)
	os.MkdirAll(filepath.Join(cache, "server"), 0o700)
	os.WriteFile(filepath.Join(cache, "server", "admin-key"), []byte(p.admin+"\n"), 0o600)
	t.Setenv(EnvServer, p.url)
	p.reset()
	if res := runCLI(t, "", "agents", "list"); res.err != nil || res.stdout != "No agents deployed yet. Deploy one with: runagent deploy PATH\n" {
		t.Errorf("with the admin key file: %v %q", res.err, res.stdout)
	}
	if r := p.requests(); len(r) != 1 || r[0].Auth != "Bearer "+p.admin {
		t.Errorf("requests with the admin key file: %+v", r)
	}

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	res = runCLI(t, "", "agents", "list", "--server", "http://"+addr)
	if res.err == nil || !strings.Contains(res.err.Error(), "http://"+addr+" is not reachable (connection refused): start it with `runagent server`") {
		t.Errorf("unreachable: %v", res.err)
	}
}
