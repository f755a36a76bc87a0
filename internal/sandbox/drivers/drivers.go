// Package drivers opens sandbox drivers by name, once each, for a server,
// from a registry: a typed map of name to constructor, so that each
// driver's own options stay with it.
package drivers

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"

	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/gvisor"
	"github.com/runagent-go/runagent/internal/sandbox/microvm"
	"github.com/runagent-go/runagent/internal/sandbox/namespace"
)

// Constructor opens a driver; o.StateDir is the driver's own folder.
type Constructor func(o sandbox.Options) (sandbox.Driver, error)

// Registry names the drivers a server can open.
type Registry map[string]Constructor

// Builtin is every driver of this binary, the microvm driver with mv.
func Builtin(mv microvm.Options) Registry {
	return Registry{
		"process":   func(sandbox.Options) (sandbox.Driver, error) { return sandbox.ProcessDriver{}, nil },
		"namespace": func(o sandbox.Options) (sandbox.Driver, error) { return namespace.New(o) },
		"gvisor":    func(o sandbox.Options) (sandbox.Driver, error) { return gvisor.New(o) },
		"microvm":   func(o sandbox.Options) (sandbox.Driver, error) { return microvm.New(o, mv) },
	}
}

// Set opens drivers on first use and keeps them.
type Set struct {
	reg    Registry
	o      sandbox.Options
	mu     sync.Mutex
	opened map[string]sandbox.Driver
}

// New returns a Set of reg's drivers, keeping their state under o.StateDir.
func New(reg Registry, o sandbox.Options) *Set {
	return &Set{reg: reg, o: o, opened: map[string]sandbox.Driver{}}
}

// Get opens the named driver; a driver whose tool is missing is an error
// that says what to install.
func (s *Set) Get(name string) (sandbox.Driver, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.opened[name]; ok {
		return d, nil
	}
	if err := sandbox.CheckName(name); err != nil {
		return nil, err
	}
	open, ok := s.reg[name]
	if !ok {
		return nil, fmt.Errorf("the %s sandbox is not in this build", name)
	}
	o := s.o
	o.StateDir = filepath.Join(s.o.StateDir, name)
	d, err := open(o)
	if err != nil {
		return nil, err
	}
	s.opened[name] = d
	return d, nil
}

// Close closes the drivers that hold resources of their own (the microvm
// driver's warm VMs); instances already started are their owners' to close.
func (s *Set) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for name, d := range s.opened {
		if c, ok := d.(io.Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close the %s sandbox: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}
