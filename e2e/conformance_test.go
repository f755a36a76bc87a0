package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	runagent "github.com/runagent-go/runagent/sdk/go"
)

// conformanceFile is shared by every SDK's test runner (docs/sdk-contract.md).
const conformanceFile = "../testdata/conformance/cases.json"

type conformanceCase struct {
	Name     string            `json:"name"`
	Tag      string            `json:"tag"`
	Call     string            `json:"call"`
	Args     []any             `json:"args"`
	Kwargs   map[string]any    `json:"kwargs"`
	Generate map[string][]any  `json:"generate"`
	Expect   conformanceExpect `json:"expect"`
}

type conformanceExpect struct {
	Value      json.RawMessage   `json:"value"`
	Chunks     []json.RawMessage `json:"chunks"`
	ChunkCount *int              `json:"chunk_count"`
	EchoArgs   bool              `json:"echo_args"`
	Error      *struct {
		Code            string `json:"code"`
		MessageContains string `json:"message_contains"`
	} `json:"error"`
}

// generated builds an argument described by a "generate" entry.
func generated(t testing.TB, spec any) any {
	m, _ := spec.(map[string]any)
	switch {
	case m["repeat"] != nil:
		return strings.Repeat(m["repeat"].(string), int(m["count"].(float64)))
	case m["nest"] != nil:
		var v any = "core"
		for i := 0; i < int(m["nest"].(float64)); i++ {
			v = []any{v}
		}
		return v
	}
	t.Fatalf("unknown generate spec %v", spec)
	return nil
}

// canonical re-encodes v so that values compare by value, numbers by text.
func canonical(t testing.TB, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %T: %v", v, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out any
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

type conformanceSuite struct {
	Template  string            `json:"template"`
	ServeArgs []string          `json:"serve_args"`
	Cases     []conformanceCase `json:"cases"`
}

func readConformance(t *testing.T) conformanceSuite {
	t.Helper()
	raw, err := os.ReadFile(conformanceFile)
	if err != nil {
		t.Fatal(err)
	}
	var suite conformanceSuite
	if err := json.Unmarshal(raw, &suite); err != nil {
		t.Fatalf("%s: %v", conformanceFile, err)
	}
	return suite
}

func TestSDKConformanceGo(t *testing.T) {
	suite := readConformance(t)
	dir, id := newAgent(t, suite.Template)
	s := serve(t, dir, id, serveOpts{args: suite.ServeArgs})
	host, port, _ := strings.Cut(s.Addr, ":")
	p, _ := strconv.Atoi(port)
	runGoConformance(t, suite, func(tag string) runagent.Config {
		return runagent.Config{AgentID: id, EntrypointTag: tag, Local: true, Host: host, Port: p}
	})
}

// The same suite through a cluster's gateway (its calls crossing NATS to
// a node, with the NATS server's default max_payload of 1 MiB: the 3 MiB
// case goes through the payload store), with an API key.
func TestSDKConformanceGoGateway(t *testing.T) {
	suite := readConformance(t)
	c := startClusterWith(t, 1, 1, suite.ServeArgs)
	dir, _ := newAgent(t, suite.Template)
	id := c.gateways[0].deploy(t, dir, c.admin)
	key := c.gateways[0].createKey(t, map[string]any{"name": "sdk", "scopes": []string{"run"}, "rate_per_second": 10000, "burst": 10000, "max_concurrency": 1000})
	base := "http://" + c.gateways[0].Addr
	runGoConformance(t, suite, func(tag string) runagent.Config {
		return runagent.Config{AgentID: id, EntrypointTag: tag, BaseURL: base, APIKey: key}
	})
}

func runGoConformance(t *testing.T, suite conformanceSuite, config func(tag string) runagent.Config) {
	for _, c := range suite.Cases {
		t.Run(c.Name, func(t *testing.T) {
			args := c.Args
			if g := c.Generate["args"]; g != nil {
				args = nil
				for _, spec := range g {
					args = append(args, generated(t, spec))
				}
			}
			kwargs := c.Kwargs
			if kwargs == nil {
				kwargs = map[string]any{}
			}
			client, err := runagent.New(config(c.Tag))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			in := runagent.Input{Args: args, Kwargs: kwargs}
			call := c.Call
			if call == "" {
				call = "run"
				if strings.HasSuffix(c.Tag, "_stream") {
					call = "run_stream"
				}
			}

			var value any
			var chunks []any
			if call == "run" {
				value, err = client.Run(ctx, in)
			} else {
				var st *runagent.Stream
				st, err = client.RunStream(ctx, in)
				if err == nil {
					for st.Next() {
						chunks = append(chunks, st.Value())
					}
					err = st.Err()
					st.Close()
				}
			}

			e := c.Expect
			if e.Error != nil {
				if !runagent.IsCode(err, e.Error.Code) || !strings.Contains(errMessage(err), e.Error.MessageContains) {
					t.Fatalf("error = %v, want code %s containing %q", err, e.Error.Code, e.Error.MessageContains)
				}
			} else if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			switch {
			case e.Value != nil:
				var want any
				json.Unmarshal(e.Value, &want)
				if !reflect.DeepEqual(canonical(t, value), canonical(t, want)) {
					t.Fatalf("value = %#v, want %s", value, e.Value)
				}
			case e.EchoArgs:
				if args == nil {
					args = []any{}
				}
				want := map[string]any{"args": args, "kwargs": kwargs}
				if !reflect.DeepEqual(canonical(t, value), canonical(t, want)) {
					t.Fatalf("echo came back different (%d bytes sent)", len(mustJSON(want)))
				}
			}
			if e.Chunks != nil {
				want := []any{}
				for _, raw := range e.Chunks {
					var v any
					json.Unmarshal(raw, &v)
					want = append(want, v)
				}
				if chunks == nil {
					chunks = []any{}
				}
				if !reflect.DeepEqual(canonical(t, chunks), canonical(t, want)) {
					t.Fatalf("chunks = %v, want %v", chunks, want)
				}
			}
			if e.ChunkCount != nil && len(chunks) != *e.ChunkCount {
				t.Fatalf("%d chunks, want %d", len(chunks), *e.ChunkCount)
			}
		})
	}
}

func errMessage(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

// A call made while the server is down is retried until it comes back.
func TestSDKRetriesAcrossServerRestart(t *testing.T) {
	dir, id := newAgent(t, "default")
	cache := t.TempDir()
	port := freePort(t)
	first := serve(t, dir, id, serveOpts{cache: cache, port: port})
	first.Stop()

	client, err := runagent.New(runagent.Config{AgentID: id, EntrypointTag: "minimal", Local: true, Host: "127.0.0.1", Port: port,
		Retry: runagent.RetryPolicy{MaxAttempts: 30, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, MaxElapsed: 45 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		v   any
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := client.Run(context.Background(), runagent.Kwargs(map[string]any{"message": "are you back?"}))
		done <- result{v, err}
	}()
	time.Sleep(time.Second) // the client is retrying against a closed port now
	select {
	case r := <-done:
		t.Fatalf("the call ended while the server was down: %v %v", r.v, r.err)
	default:
	}
	serve(t, dir, id, serveOpts{cache: cache, port: port})
	select {
	case r := <-done:
		if r.err != nil || r.v == "" {
			t.Fatalf("after the restart: %v, %v", r.v, r.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the call did not succeed after the server came back")
	}
}

// The official Python SDK's conformance cases (sdk/python/tests), sync
// and async clients, through a cluster's gateway with an API key: the SDK
// installed the standard way into a virtualenv of its own.
func TestSDKConformancePythonGateway(t *testing.T) {
	suite := readConformance(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	venv := filepath.Join(t.TempDir(), "venv")
	for _, cmd := range [][]string{
		{"python3", "-m", "venv", venv},
		{filepath.Join(venv, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check", filepath.Join(root, "sdk", "python"), "pytest"},
	} {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("install the Python SDK (%s): %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}
	c, env := sdkGateway(t, suite)
	cmd := exec.Command(filepath.Join(venv, "bin", "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_conformance.py")
	cmd.Dir = filepath.Join(root, "sdk", "python")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("%d passed", 2*len(suite.Cases))) {
		t.Fatalf("the Python SDK's conformance cases through a gateway (%v):\n%s\n%s", err, out, c.logs())
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
}

// sdkGateway deploys the conformance suite's agent on a cluster of one
// gateway and one node and makes a run key for it: the environment that
// points an SDK's conformance runner (RUNAGENT_CONFORMANCE_*) at it.
func sdkGateway(t *testing.T, suite conformanceSuite) (*testCluster, []string) {
	t.Helper()
	c := startClusterWith(t, 1, 1, suite.ServeArgs)
	dir, _ := newAgent(t, suite.Template)
	id := c.gateways[0].deploy(t, dir, c.admin)
	key := c.gateways[0].createKey(t, map[string]any{"name": "sdk", "scopes": []string{"run"}, "rate_per_second": 10000, "burst": 10000, "max_concurrency": 1000})
	return c, append(os.Environ(), "RUNAGENT_CONFORMANCE_BASE_URL=http://"+c.gateways[0].Addr,
		"RUNAGENT_CONFORMANCE_AGENT_ID="+id, "RUNAGENT_CONFORMANCE_API_KEY="+key)
}

// needTool fails (never skips) when a toolchain the SDK suites need is
// missing: make deps installs them.
func needTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s is not installed: run make deps (scripts/test-deps.sh installs it)", n)
		}
	}
}

// The TypeScript SDK's conformance cases (sdk/js/test/conformance.test.ts)
// through a cluster's gateway with an API key, the SDK built as make
// test-js builds it.
func TestSDKConformanceTypeScriptGateway(t *testing.T) {
	needTool(t, "node", "npm")
	suite := readConformance(t)
	js, err := filepath.Abs(filepath.Join("..", "sdk", "js"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"npm", "ci", "--no-audit", "--no-fund"}, {"npm", "run", "build"}} {
		c := exec.Command(cmd[0], cmd[1:]...)
		c.Dir = js
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("build the TypeScript SDK (%s): %v\n%s", strings.Join(cmd, " "), err, out)
		}
	}
	c, env := sdkGateway(t, suite)
	cmd := exec.Command("node", "--test", "--test-name-pattern=^conformance: ", "dist/test/conformance.test.js")
	cmd.Dir, cmd.Env = js, env
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("# pass %d\n", len(suite.Cases))) || !strings.Contains(string(out), "# fail 0\n") {
		t.Fatalf("the TypeScript SDK's conformance cases through a gateway (%v):\n%s\n%s", err, out, c.logs())
	}
}

// The Rust SDK's conformance test (sdk/rust/tests/conformance.rs: every
// case, a dropped stream stopping its generator, the blocking client)
// through a cluster's gateway with an API key.
func TestSDKConformanceRustGateway(t *testing.T) {
	needTool(t, "cargo")
	suite := readConformance(t)
	rs, err := filepath.Abs(filepath.Join("..", "sdk", "rust"))
	if err != nil {
		t.Fatal(err)
	}
	// Built before the cluster starts, so the build's time counts against
	// no timeout of the cluster's.
	build := exec.Command("cargo", "test", "--locked", "--test", "conformance", "--no-run")
	build.Dir = rs
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the Rust SDK's conformance test: %v\n%s", err, out)
	}
	c, env := sdkGateway(t, suite)
	cmd := exec.Command("cargo", "test", "--locked", "--test", "conformance", "--", "--exact", "conformance")
	cmd.Dir, cmd.Env = rs, env
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "test result: ok. 1 passed") {
		t.Fatalf("the Rust SDK's conformance test through a gateway (%v):\n%s\n%s", err, out, c.logs())
	}
}
