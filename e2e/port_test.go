package e2e

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Without --port, serve takes the first free port from 8450: with 8450 held
// by someone else it moves on, and says where it listens.
func TestServePicksFreePortFrom8450(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:8450")
	if err == nil {
		defer held.Close() // 8450 is now taken, as it would be by another agent
	}
	dir, id := newAgent(t, "default")
	cmd := exec.Command(binary, "serve", dir, "--json")
	cmd.Env = append(os.Environ(), "RUNAGENT_CACHE_DIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case line := <-lines:
		var ev struct {
			Event   string `json:"event"`
			Port    int    `json:"port"`
			AgentID string `json:"agent_id"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Event != "serving" || ev.AgentID != id {
			t.Fatalf("serve --json printed %q", line)
		}
		if ev.Port <= 8450 || ev.Port >= 8550 {
			t.Fatalf("serve picked port %d; want the first free one after the taken 8450", ev.Port)
		}
		s := &agentServer{t: t, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ev.Port)), AgentID: id}
		if v := s.result(t, "minimal", nil, map[string]any{"message": "on an automatic port"}); v == "" {
			t.Fatal("no answer on the automatic port")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve printed nothing within 60s")
	}
}
