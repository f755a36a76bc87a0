// Package drivers opens sandbox drivers by name, once each, for a server.
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

// Set opens drivers on first use and keeps them.
type Set struct {
	o      sandbox.Options
	mu     sync.Mutex
	opened map[string]sandbox.Driver
}

// New returns a Set whose drivers keep their state under o.StateDir.
func New(o sandbox.Options) *Set {
	return &Set{o: o, opened: map[string]sandbox.Driver{"process": sandbox.ProcessDriver{}}}
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
	o := s.o
	o.StateDir = filepath.Join(s.o.StateDir, name)
	var d sandbox.Driver
	var err error
	switch name {
	case "namespace":
		d, err = namespace.New(o)
	case "gvisor":
		d, err = gvisor.New(o)
	case "microvm":
		d, err = microvm.New(o)
	default:
		return nil, fmt.Errorf("the %s sandbox is not built yet", name)
	}
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
