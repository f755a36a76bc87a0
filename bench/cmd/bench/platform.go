package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/runagent-go/runagent/bench/internal/loadgen"
	"github.com/runagent-go/runagent/bench/internal/procs"
)

// The platform server (`runagent server`) serves the same agent as `runagent
// serve`, deployed to it by `runagent deploy`, behind its gateway: every call
// carries an API key (checked, hashed compare) and goes through the key's
// rate and concurrency limiter and the pool's dispatch. Its numbers minus
// those of `runagent serve` are the gateway's overhead.

// platformResult is what only the platform server measures.
type platformResult struct {
	coldTTFB   []time.Duration // call at zero instances -> first byte of the answer
	coldTotal  []time.Duration // ... -> whole answer read
	coldErrors int
	coldFirst  string
}

// zeroAgentID is the second copy of the bench agent, deployed to scale to zero.
const zeroAgentID = "b3e4c5a6-0000-4000-8000-0000000c01d0"

func startPlatform(b *bench, agentDir, dir string, port int) (*procs.Proc, error) {
	cache := filepath.Join(dir, "cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	// Fast scaling windows only shorten the wait for scale to zero; they do
	// not touch the call path.
	cmd := exec.Command(b.opts.bin, "server", "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--python", b.python,
		"--scale-tick", "100ms", "--scale-window", "2s", "--panic-window", "1s")
	cmd.Dir = dir
	cmd.Env = platformEnv(dir, fmt.Sprintf("http://127.0.0.1:%d", port))
	return procs.Start("platform", cmd, filepath.Join(dir, "server.log"))
}

// platformEnv is the environment of the server and of the CLI talking to it:
// the CLI finds the admin key in $RUNAGENT_CACHE_DIR/server/admin-key.
func platformEnv(dir, url string) []string {
	return cleanEnv("RUNAGENT_CACHE_DIR="+filepath.Join(dir, "cache"), "HOME="+dir, "RUNAGENT_SERVER="+url, "NO_COLOR=1")
}

// preparePlatform deploys the bench agent pinned to one instance that takes
// as many calls at once as `runagent serve`'s 32 threads (so that both run
// one Python process the same way) and creates a run key whose limits are
// checked on every call but never reached.
func preparePlatform(b *bench, r *result, p *procs.Proc, dir, agentDir, addr string) error {
	if err := b.waitHealth(p, addr); err != nil {
		return err
	}
	dep := map[string]any{"min_instances": 1, "max_instances": 1, "max_concurrency": 32, "max_queue": max(100, b.opts.conns)}
	if err := setConfig(agentDir, b.agentID, dep); err != nil {
		return err
	}
	b.logf("platform: runagent deploy (one instance, 32 calls at once, like runagent serve)")
	if _, err := b.cli(dir, addr, "deploy", agentDir); err != nil {
		return err
	}
	key, err := b.cli(dir, addr, "keys", "create", "--name", "bench", "--scope", "run",
		"--rate", "1000000", "--burst", "1000000", "--max-concurrency", "1024")
	if err != nil {
		return err
	}
	r.token = strings.TrimSpace(key)
	r.agentID = b.agentID
	return nil
}

// scaleFromZero deploys a second copy of the agent with min 0 and a 1 s idle
// timeout, then repeatedly waits until it has no instance at all and times a
// call from the request to the answer's first byte.
func scaleFromZero(b *bench, r *result, p *procs.Proc, dir, addr string) {
	o := b.opts
	zeroDir := filepath.Join(dir, "agent-zero")
	if err := copyDir(filepath.Join(o.root, "bench", "agent"), zeroDir); err != nil {
		r.problemf("scale from zero: %v", err)
		return
	}
	if err := setConfig(zeroDir, zeroAgentID, map[string]any{"min_instances": 0, "max_instances": 1, "idle_timeout_seconds": 1}); err != nil {
		r.problemf("scale from zero: %v", err)
		return
	}
	b.logf("platform: deploying a copy with min 0 for scale from zero")
	if _, err := b.cli(dir, addr, "deploy", zeroDir); err != nil {
		r.problemf("scale from zero: %v", err)
		return
	}
	admin, err := os.ReadFile(filepath.Join(dir, "cache", "server", "admin-key"))
	if err != nil {
		r.problemf("scale from zero: admin key: %v", err)
		return
	}
	client := &http.Client{Timeout: o.callTimeout, Transport: &http.Transport{DialContext: loopbackDial, DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	body, _ := json.Marshal(map[string]any{"entrypoint_tag": "minimal", "input_args": []any{}, "input_kwargs": map[string]any{"message": o.message}})
	zr := &result{agentID: zeroAgentID, token: r.token}
	for i := range o.coldStarts {
		if b.ctx.Err() != nil || b.dead(r, p) {
			return
		}
		if err := b.waitZero(client, addr, strings.TrimSpace(string(admin))); err != nil {
			r.problemf("scale from zero: %v", err)
			return
		}
		var first time.Time
		trace := &httptrace.ClientTrace{GotFirstResponseByte: func() { first = time.Now() }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(b.ctx, trace), "POST",
			fmt.Sprintf("http://%s/api/v1/agents/%s/run", addr, zr.agentID), bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+zr.token)
		t0 := time.Now()
		resp, err := client.Do(req)
		var answer []byte
		if err == nil {
			answer, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && (resp.StatusCode != 200 || !bytes.Contains(answer, loadgen.SuccessMarker)) {
				err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, clip(answer, 200))
			}
		}
		if err != nil {
			r.platform.coldErrors++
			if r.platform.coldFirst == "" {
				r.platform.coldFirst = err.Error()
			}
			continue
		}
		r.platform.coldTTFB = append(r.platform.coldTTFB, first.Sub(t0))
		r.platform.coldTotal = append(r.platform.coldTotal, time.Since(t0))
		b.logf("platform: scale from zero %d/%d: first byte after %s", i+1, o.coldStarts, first.Sub(t0).Round(time.Millisecond))
	}
	if r.platform.coldErrors > 0 {
		r.problemf("scale from zero: %d failed calls; first: %s", r.platform.coldErrors, r.platform.coldFirst)
	}
}

// waitZero waits until the zero agent's pool has no instance in any state.
func (b *bench) waitZero(client *http.Client, addr, admin string) error {
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) && b.ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(b.ctx, "GET", fmt.Sprintf("http://%s/api/v1/agents/%s", addr, zeroAgentID), nil)
		req.Header.Set("Authorization", "Bearer "+admin)
		resp, err := client.Do(req)
		if err == nil {
			var env struct {
				Data struct {
					Pool struct {
						Instances []struct{ State string } `json:"instances"`
					} `json:"pool"`
				} `json:"data"`
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && json.Unmarshal(raw, &env) == nil {
				if len(env.Data.Pool.Instances) == 0 {
					return nil
				}
				last = fmt.Sprintf("%d instances", len(env.Data.Pool.Instances))
			} else {
				last = fmt.Sprintf("GET agent: HTTP %d: %s", resp.StatusCode, clip(raw, 200))
			}
		} else {
			last = err.Error()
		}
		sleepCtx(b.ctx, 100*time.Millisecond)
	}
	return fmt.Errorf("the agent did not scale to zero within 60s (last: %s)", last)
}

// waitHealth polls /api/v1/health until the server answers.
func (b *bench) waitHealth(p *procs.Proc, addr string) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: loopbackDial}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(b.opts.startTimeout)
	for time.Now().Before(deadline) && b.ctx.Err() == nil {
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("the server exited (%v)", err)
		}
		if resp, err := client.Get("http://" + addr + "/api/v1/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		sleepCtx(b.ctx, 50*time.Millisecond)
	}
	return fmt.Errorf("no /api/v1/health answer within %s", b.opts.startTimeout)
}

// cli runs `runagent ARGS...` against the platform server and returns its
// standard output; the error carries its standard error.
func (b *bench) cli(dir, addr string, args ...string) (string, error) {
	cmd := exec.CommandContext(b.ctx, b.opts.bin, args...)
	cmd.Dir = dir
	cmd.Env = platformEnv(dir, "http://"+addr)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("runagent %s: %v\n%s", strings.Join(args, " "), err, tailString(stderr.String(), 15))
	}
	return stdout.String(), nil
}

// setConfig gives the agent folder's config this agent_id and deployment section.
func setConfig(agentDir, agentID string, deployment map[string]any) error {
	path := filepath.Join(agentDir, "runagent.config.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	cfg["agent_id"] = agentID
	cfg["deployment"] = deployment
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}
