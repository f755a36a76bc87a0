package sandbox_test

import (
	"testing"

	"github.com/runagent-go/runagent/internal/sandbox"
	"github.com/runagent-go/runagent/internal/sandbox/sandboxtest"
)

func TestProcessDriverConformance(t *testing.T) {
	sandboxtest.Run(t, sandbox.ProcessDriver{}, sandboxtest.Features{})
}
