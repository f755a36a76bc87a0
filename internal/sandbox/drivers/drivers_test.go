package drivers

import (
	"errors"
	"strings"
	"testing"

	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/microvm"
)

func TestSetOpensOnceFromItsRegistry(t *testing.T) {
	opened := 0
	var gotDir string
	reg := Registry{
		"process": func(o sandbox.Options) (sandbox.Driver, error) {
			opened++
			gotDir = o.StateDir
			return sandbox.ProcessDriver{}, nil
		},
		"gvisor": func(sandbox.Options) (sandbox.Driver, error) {
			return nil, errors.New("runsc is not installed: apt-get install runsc")
		},
	}
	s := New(reg, sandbox.Options{StateDir: "/state"})
	for range 2 {
		if d, err := s.Get("process"); err != nil || d.Name() != "process" {
			t.Fatalf("process: %v %v", d, err)
		}
	}
	if opened != 1 || gotDir != "/state/process" {
		t.Fatalf("opened %d times, state dir %q", opened, gotDir)
	}
	if _, err := s.Get("gvisor"); err == nil || !strings.Contains(err.Error(), "apt-get install runsc") {
		t.Fatalf("gvisor: %v, want its constructor's error", err)
	}
	if _, err := s.Get("namespace"); err == nil || !strings.Contains(err.Error(), "not in this build") {
		t.Fatalf("a driver not in the registry: %v", err)
	}
	if _, err := s.Get("docker"); err == nil {
		t.Fatal("an unknown driver name was accepted")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestBuiltinHasEveryName(t *testing.T) {
	reg := Builtin(microvm.Options{})
	for _, name := range sandbox.Names() {
		if reg[name] == nil {
			t.Errorf("Builtin lacks %s", name)
		}
	}
}
