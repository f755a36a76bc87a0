package dispatch_test

import (
	"testing"

	"github.com/runagent-go/runagent/internal/dispatch/dispatchtest"
	"github.com/runagent-go/runagent/internal/domain"
)

// The in-process dispatcher, over a pool of real instances (the process
// sandbox), passes the conformance suite.
func TestLocalConformance(t *testing.T) {
	dispatchtest.Run(t, func(t *testing.T, dir string) (domain.Dispatcher, domain.Target) {
		return dispatchtest.ServeLocal(t, dir)
	})
}
